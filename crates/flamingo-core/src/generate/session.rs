//! One generation call's state: the KV cache, the media keys/values, each row's tokens and
//! the decoding strategy. `step` advances it; `finish` returns the sequences.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::beam::BeamHypotheses;
use super::config::GenerationConfig;
use super::logits;
use crate::flamingo::model::{Flamingo, MediaConditioning, TextTimes};
use crate::lm::KvCache;
use crate::{Error, Result};

/// Tokens produced by one `step` call.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// For greedy and sampling: the new tokens of each returned sequence in this call (a
    /// finished row gets none). Empty for beam search, whose tokens are only final at the end.
    pub tokens: Vec<Vec<u32>>,
    /// Every sequence has finished (stop token or `max_new_tokens`).
    pub done: bool,
}

/// The final sequences: `num_return_sequences` per prompt, prompt-major.
#[derive(Clone, Debug)]
pub struct GenerationResult {
    /// Prompt + generated tokens (the HF convention), right-padded to one length.
    pub sequences: Vec<Vec<u32>>,
    /// Generated tokens only, without padding (the stop token included when reached).
    pub new_tokens: Vec<Vec<u32>>,
    /// Sum of log-probabilities of the generated tokens (greedy/sampling) or the
    /// length-normalised beam score.
    pub scores: Vec<f32>,
    /// Whether each sequence ended on a stop token (rather than `max_new_tokens`).
    pub stopped: Vec<bool>,
}

struct BeamState {
    /// Running sum of log-probabilities of each beam (rows × beams).
    scores: Vec<f32>,
    hyps: Vec<BeamHypotheses>,
    done: Vec<bool>,
}

pub struct GenerationSession {
    model: Arc<Flamingo>,
    cfg: GenerationConfig,
    stop_tokens: Vec<u32>,
    pad: u32,
    /// Prompts in the call, before expansion to beams / returned sequences.
    prompts: usize,
    /// Rows per prompt (beams, or returned sequences when sampling).
    per_prompt: usize,
    prompt_len: usize,
    cache: KvCache,
    media: MediaConditioning,
    images_per_row: Vec<u32>,
    masks: Vec<Vec<u32>>,
    /// Per expanded row: prompt + generated tokens.
    histories: Vec<Vec<u32>>,
    generated: usize,
    finished: Vec<bool>,
    stopped: Vec<bool>,
    logprob_sums: Vec<f32>,
    /// Last-position logits of every expanded row, `(rows, V)`, for the next choice.
    next_logits: Tensor,
    rng: StdRng,
    beams: Option<BeamState>,
    done: bool,
}

fn expand<T: Clone>(rows: &[T], n: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|r| std::iter::repeat_n(r.clone(), n))
        .collect()
}

impl GenerationSession {
    /// Validates the options, encodes the images once, and runs the prompt (prefill).
    /// `vision_x` is `(B, T_img, 1, 3, H, W)`; `prompts` and `masks` are `B` rows of one
    /// length (left-pad a batch; the mask marks real tokens with 1).
    pub fn start(
        model: Arc<Flamingo>,
        vision_x: &Tensor,
        prompts: Vec<Vec<u32>>,
        masks: Option<Vec<Vec<u32>>>,
        mut cfg: GenerationConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.eos_token_ids.is_empty() {
            cfg.eos_token_ids = vec![model.end_of_chunk_token_id()];
        }
        let b = prompts.len();
        let prompt_len = prompts.first().map(|r| r.len()).unwrap_or(0);
        if b == 0 || prompt_len == 0 || prompts.iter().any(|r| r.len() != prompt_len) {
            return Err(Error::InvalidInput(
                "prompts must be a non-empty batch of rows of one (padded) length".into(),
            ));
        }
        let masks = masks.unwrap_or_else(|| vec![vec![1; prompt_len]; b]);
        if masks.len() != b || masks.iter().any(|m| m.len() != prompt_len) {
            return Err(Error::InvalidInput(
                "attentionMask must have the shape of the prompts".into(),
            ));
        }
        if let Some(max) = model.lm().info().max_positions {
            let longest = masks
                .iter()
                .map(|m| m.iter().filter(|&&x| x != 0).count())
                .max()
                .unwrap_or(0);
            if longest + cfg.max_new_tokens > max {
                return Err(Error::InvalidInput(format!(
                    "the prompt has {longest} tokens and maxNewTokens is {}, but the model supports at most {max} positions",
                    cfg.max_new_tokens
                )));
            }
        }
        let pad = cfg.pad_token_id.unwrap_or(cfg.eos_token_ids[0]);

        let vision_dims = vision_x.dims();
        if vision_dims.first() != Some(&b) {
            return Err(Error::InvalidInput(format!(
                "visionX has {} samples but there are {b} prompts",
                vision_dims.first().copied().unwrap_or(0)
            )));
        }
        let num_media = vision_dims.get(1).copied().unwrap_or(0);
        let text_times = model.prompt_text_times(&prompts);
        for (row, t) in text_times.iter().enumerate() {
            let n = *t.last().unwrap_or(&0) as usize;
            if n > num_media {
                return Err(Error::InvalidInput(format!(
                    "prompt {row} has {n} <image> tokens but only {num_media} images were supplied per sample"
                )));
            }
        }
        let images_per_prompt: Vec<u32> =
            text_times.iter().map(|t| *t.last().unwrap_or(&0)).collect();

        let media = model.encode_vision(vision_x)?;
        let media = model.condition(&media)?;
        let mut cache = KvCache::new(model.lm().info().num_layers);
        let logits = model.forward_tokens(
            &prompts,
            &masks,
            &media,
            &TextTimes::Prompt,
            Some(&mut cache),
        )?;
        let last = logits
            .narrow(1, prompt_len - 1, 1)?
            .squeeze(1)?
            .contiguous()?;

        // Expand each prompt to its beams / returned sequences after the shared prefill.
        let per_prompt = if cfg.num_beams > 1 {
            cfg.num_beams
        } else {
            cfg.num_return_sequences
        };
        let (media, next_logits) = if per_prompt > 1 {
            let rows: Vec<u32> = (0..b as u32)
                .flat_map(|r| std::iter::repeat_n(r, per_prompt))
                .collect();
            let idx = Tensor::from_slice(&rows, rows.len(), last.device())?;
            cache.reorder(&idx)?;
            (media.select_rows(&rows)?, last.index_select(&idx, 0)?)
        } else {
            (media, last)
        };
        let rows = b * per_prompt;
        let beams = (cfg.num_beams > 1).then(|| BeamState {
            // Only the first beam of each prompt is live at the start, so the first step
            // picks distinct continuations instead of num_beams copies of one.
            scores: (0..rows)
                .map(|r| if r % per_prompt == 0 { 0.0 } else { -1e9 })
                .collect(),
            hyps: (0..b)
                .map(|_| BeamHypotheses::new(cfg.num_beams, cfg.length_penalty, cfg.early_stopping))
                .collect(),
            done: vec![false; b],
        });
        Ok(Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            stop_tokens: cfg.eos_token_ids.clone(),
            cfg,
            model,
            pad,
            prompts: b,
            per_prompt,
            prompt_len,
            cache,
            media,
            images_per_row: expand(&images_per_prompt, per_prompt),
            masks: expand(&masks, per_prompt),
            histories: expand(&prompts, per_prompt),
            generated: 0,
            finished: vec![false; rows],
            stopped: vec![false; rows],
            logprob_sums: vec![0.0; rows],
            next_logits,
            beams,
            done: false,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Advances up to `max_steps` tokens; checks `abort` before each step.
    pub fn step(&mut self, max_steps: usize, abort: &AtomicBool) -> Result<StepOutput> {
        let rows = self.histories.len();
        let mut out = StepOutput {
            tokens: vec![Vec::new(); if self.beams.is_some() { 0 } else { rows }],
            done: self.done,
        };
        for _ in 0..max_steps.max(1) {
            if self.done {
                break;
            }
            if abort.load(Ordering::Relaxed) {
                return Err(Error::Aborted);
            }
            let next = if self.beams.is_some() {
                self.choose_beams()?
            } else {
                let chosen = self.choose_tokens()?;
                for (r, t) in chosen.iter().enumerate() {
                    if let Some(t) = t {
                        out.tokens[r].push(*t);
                    }
                }
                chosen.into_iter().map(|t| t.unwrap_or(self.pad)).collect()
            };
            self.generated += 1;
            for (r, &t) in next.iter().enumerate() {
                self.histories[r].push(t);
                self.masks[r].push(1);
            }
            let beams_done = self
                .beams
                .as_ref()
                .map(|b| b.done.iter().all(|&d| d))
                .unwrap_or(false);
            if self.generated >= self.cfg.max_new_tokens
                || (self.beams.is_none() && self.finished.iter().all(|&f| f))
                || beams_done
            {
                self.done = true;
                break;
            }
            let ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            let logits = self.model.forward_tokens(
                &ids,
                &self.masks,
                &self.media,
                &TextTimes::AfterPrompt(self.images_per_row.clone()),
                Some(&mut self.cache),
            )?;
            self.next_logits = logits.squeeze(1)?;
        }
        out.done = self.done;
        Ok(out)
    }

    fn logits_rows(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.next_logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Greedy or sampled next token of every unfinished row.
    fn choose_tokens(&mut self) -> Result<Vec<Option<u32>>> {
        let rows = self.logits_rows()?;
        let mut chosen = Vec::with_capacity(rows.len());
        for (r, mut scores) in rows.into_iter().enumerate() {
            if self.finished[r] {
                chosen.push(None);
                continue;
            }
            let raw_logprobs = logits::log_softmax(&scores);
            logits::process(
                &mut scores,
                &self.histories[r],
                self.generated,
                &self.cfg,
                &self.stop_tokens,
                self.model.media_token_id(),
            );
            let t = if self.cfg.do_sample {
                logits::sample(&mut scores, &self.cfg, &mut self.rng)
            } else {
                logits::argmax(&scores)
            };
            self.logprob_sums[r] += raw_logprobs[t as usize];
            if self.stop_tokens.contains(&t) {
                self.finished[r] = true;
                self.stopped[r] = true;
            }
            chosen.push(Some(t));
        }
        Ok(chosen)
    }

    /// One beam-search step (HF's classic `BeamSearchScorer.process`): the top 2·beams
    /// continuations of each prompt; stop-token continuations within the top `beams` become
    /// finished hypotheses, the best others the next beams. Reorders the cache.
    fn choose_beams(&mut self) -> Result<Vec<u32>> {
        let rows = self.logits_rows()?;
        let nb = self.per_prompt;
        let vocab = rows.first().map(|r| r.len()).unwrap_or(0);
        let state = self.beams.as_mut().expect("beam state");
        let mut next_tokens = vec![self.pad; rows.len()];
        let mut next_sources: Vec<u32> = (0..rows.len() as u32).collect();
        let mut next_scores = vec![0.0f32; rows.len()];
        let mut processed = Vec::with_capacity(rows.len());
        for (r, scores) in rows.iter().enumerate() {
            let mut lp = logits::log_softmax(scores);
            logits::process(
                &mut lp,
                &self.histories[r],
                self.generated,
                &self.cfg,
                &self.stop_tokens,
                self.model.media_token_id(),
            );
            let beam_score = state.scores[r];
            for v in lp.iter_mut() {
                *v += beam_score;
            }
            processed.push(lp);
        }
        let take = 2 * nb.max(1);
        for p in 0..self.prompts {
            let base = p * nb;
            if state.done[p] {
                // Finished prompts keep feeding padding (their beams no longer matter).
                for k in 0..nb {
                    next_tokens[base + k] = self.pad;
                    next_sources[base + k] = base as u32;
                    next_scores[base + k] = 0.0;
                }
                continue;
            }
            // Top `take` over this prompt's beams × vocabulary.
            let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(nb * vocab);
            for k in 0..nb {
                for (tok, &s) in processed[base + k].iter().enumerate() {
                    if s > f32::NEG_INFINITY {
                        candidates.push((s, k, tok as u32));
                    }
                }
            }
            let keep = take.min(candidates.len());
            if keep == 0 {
                return Err(Error::InvalidInput(
                    "every token was banned for a beam (check noRepeatNgramSize and the stop tokens)".into(),
                ));
            }
            candidates.select_nth_unstable_by(keep - 1, |a, b| {
                b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
            });
            candidates.truncate(keep);
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

            let mut filled = 0;
            for (rank, &(score, k, tok)) in candidates.iter().enumerate() {
                let src = base + k;
                if self.stop_tokens.contains(&tok) {
                    if rank >= nb {
                        continue;
                    }
                    let mut tokens = self.histories[src][self.prompt_len..].to_vec();
                    tokens.push(tok);
                    state.hyps[p].add(tokens, score, self.generated);
                } else {
                    next_tokens[base + filled] = tok;
                    next_sources[base + filled] = src as u32;
                    next_scores[base + filled] = score;
                    filled += 1;
                }
                if filled == nb {
                    break;
                }
            }
            let best_running = (0..nb)
                .map(|k| next_scores[base + k])
                .fold(f32::NEG_INFINITY, f32::max);
            state.done[p] = state.done[p] || state.hyps[p].is_done(best_running, self.generated);
        }
        state.scores = next_scores;
        let idx = Tensor::from_slice(&next_sources, next_sources.len(), self.next_logits.device())?;
        self.cache.reorder(&idx)?;
        self.histories = next_sources
            .iter()
            .map(|&s| self.histories[s as usize].clone())
            .collect();
        self.masks = next_sources
            .iter()
            .map(|&s| self.masks[s as usize].clone())
            .collect();
        Ok(next_tokens)
    }

    /// Runs to the end (checking `abort` between steps) and returns the sequences.
    pub fn run_to_end(mut self, abort: &AtomicBool) -> Result<GenerationResult> {
        while !self.done {
            self.step(16, abort)?;
        }
        self.finish()
    }

    /// The final sequences; call after `step` reported `done` (or earlier to cut short).
    pub fn finish(mut self) -> Result<GenerationResult> {
        let mut new_tokens = Vec::new();
        let mut scores = Vec::new();
        let mut stopped = Vec::new();
        if let Some(state) = self.beams.take() {
            let nb = self.per_prompt;
            for p in 0..self.prompts {
                let mut hyps = state.hyps[p].clone();
                if !state.done[p] {
                    for k in 0..nb {
                        let r = p * nb + k;
                        let tokens = self.histories[r][self.prompt_len..].to_vec();
                        hyps.add(tokens, state.scores[r], self.generated);
                    }
                }
                for h in hyps
                    .sorted()
                    .into_iter()
                    .take(self.cfg.num_return_sequences)
                {
                    stopped.push(
                        h.tokens
                            .last()
                            .is_some_and(|t| self.stop_tokens.contains(t)),
                    );
                    scores.push(h.score);
                    new_tokens.push(h.tokens);
                }
            }
        } else {
            for r in 0..self.histories.len() {
                let mut tokens = self.histories[r][self.prompt_len..].to_vec();
                if let Some(end) = tokens.iter().position(|t| self.stop_tokens.contains(t)) {
                    tokens.truncate(end + 1);
                }
                new_tokens.push(tokens);
                scores.push(self.logprob_sums[r]);
                stopped.push(self.stopped[r]);
            }
        }
        let longest = new_tokens.iter().map(|t| t.len()).max().unwrap_or(0);
        let sequences = new_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let prompt_row = (i / self.cfg.num_return_sequences.max(1)) * self.per_prompt;
                let mut s = self.histories_prompt(prompt_row);
                s.extend_from_slice(t);
                s.resize(self.prompt_len + longest, self.pad);
                s
            })
            .collect();
        Ok(GenerationResult {
            sequences,
            new_tokens,
            scores,
            stopped,
        })
    }

    fn histories_prompt(&self, row: usize) -> Vec<u32> {
        self.histories[row.min(self.histories.len() - 1)][..self.prompt_len].to_vec()
    }
}
