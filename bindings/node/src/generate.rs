//! Generation and scoring across the boundary.
//!
//! A generation is a `GenerationSession` kept on the model's engine thread between calls:
//! `generateStart` runs the vision encoder and the prompt, each `generateStep` decodes a
//! few tokens and resolves with them, `generateFinish` returns the sequences. JavaScript
//! drives the loop, so the JS thread is free between steps and a stream sees tokens as they
//! are made.
//!
//! Cancellation cannot be a message: the engine runs one job at a time, and an abort queued
//! behind the running step would only be read after it. Each operation therefore owns an
//! `AtomicBool` created on the JS thread (`createOperation`); `abortOperation` stores `true`
//! into it at once, and the engine checks it before every token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use flamingo_core::flamingo::model::Flamingo;
use flamingo_core::generate::{score_continuations, GenerationConfig, GenerationSession};
use flamingo_core::Error as CoreError;
use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use crate::engine::{settle, Job};
use crate::error::{BindingError, BindingResult};
use crate::tensor::{FloatTensor, HostTensor, IntTensor};
use crate::{promise, FlamingoModel};

/// Decoding options (the core's `GenerationConfig`); absent fields take its defaults.
#[napi(object)]
#[derive(Default)]
pub struct GenerationOptions {
    pub max_new_tokens: Option<u32>,
    pub min_new_tokens: Option<u32>,
    pub num_beams: Option<u32>,
    pub length_penalty: Option<f64>,
    pub early_stopping: Option<bool>,
    pub num_return_sequences: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
    /// A non-negative integer below 2^53.
    pub seed: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub no_repeat_ngram_size: Option<u32>,
    pub eos_token_ids: Option<Vec<u32>>,
    pub pad_token_id: Option<u32>,
    pub allow_media_token: Option<bool>,
}

impl GenerationOptions {
    fn into_config(self) -> BindingResult<GenerationConfig> {
        let d = GenerationConfig::default();
        let seed = match self.seed {
            None => d.seed,
            Some(s) if s >= 0.0 && s.fract() == 0.0 && s < 9_007_199_254_740_992.0 => s as u64,
            Some(s) => {
                return Err(BindingError::invalid_input(format!(
                    "seed must be a non-negative integer, got {s}"
                )))
            }
        };
        let n = |v: Option<u32>, default: usize| v.map(|v| v as usize).unwrap_or(default);
        Ok(GenerationConfig {
            max_new_tokens: n(self.max_new_tokens, d.max_new_tokens),
            min_new_tokens: n(self.min_new_tokens, d.min_new_tokens),
            num_beams: n(self.num_beams, d.num_beams),
            length_penalty: self.length_penalty.unwrap_or(d.length_penalty),
            early_stopping: self.early_stopping.unwrap_or(d.early_stopping),
            num_return_sequences: n(self.num_return_sequences, d.num_return_sequences),
            do_sample: self.do_sample.unwrap_or(d.do_sample),
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: n(self.top_k, d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            seed,
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            no_repeat_ngram_size: n(self.no_repeat_ngram_size, d.no_repeat_ngram_size),
            eos_token_ids: self.eos_token_ids.unwrap_or(d.eos_token_ids),
            pad_token_id: self.pad_token_id.or(d.pad_token_id),
            allow_media_token: self.allow_media_token.unwrap_or(d.allow_media_token),
        })
    }
}

/// `generateStart` inputs: left-padded prompts and their images.
#[napi(object)]
pub struct GenerateInput {
    /// `(B, T_img, 1, 3, H, W)`.
    pub vision_x: FloatTensor,
    /// `(B, T)` prompt ids, left-padded.
    pub lang_x: IntTensor,
    /// `(B, T)`: 1 for prompt tokens, 0 for padding. Default: all ones.
    pub attention_mask: Option<IntTensor>,
    pub options: Option<GenerationOptions>,
}

#[napi(object)]
pub struct GenerateStarted {
    /// Sequences that will be returned (prompts × returned sequences per prompt).
    pub rows: u32,
    /// Engine time of the start (vision encoding and prompt), milliseconds.
    pub native_ms: f64,
}

#[napi(object)]
pub struct GenerateStep {
    /// New tokens of each returned sequence in this call (greedy and sampling); empty for
    /// beam search, whose tokens are only final at the end.
    pub tokens: Vec<Vec<u32>>,
    /// Every sequence has finished.
    pub done: bool,
    /// Engine time of this call's decoding, milliseconds (the rest of what JavaScript
    /// observes is the boundary: queueing, conversion and Promise settlement).
    pub native_ms: f64,
}

#[napi(object)]
pub struct GenerateResult {
    /// Prompt + generated tokens, right-padded to one length.
    pub sequences: Vec<Vec<u32>>,
    /// Generated tokens only (the stop token included when reached).
    pub new_tokens: Vec<Vec<u32>>,
    pub scores: Vec<f64>,
    pub stopped: Vec<bool>,
}

/// `score` inputs: one context and the continuations to score after it.
#[napi(object)]
pub struct ScoreInput {
    /// `(1, T_img, 1, 3, H, W)`.
    pub vision_x: FloatTensor,
    pub context: Vec<u32>,
    pub context_mask: Option<Vec<u32>>,
    pub continuations: Vec<Vec<u32>>,
}

#[napi(object)]
pub struct ScoreOutput {
    /// Per continuation: the sum of its tokens' log-probabilities.
    pub sum: Vec<f64>,
    /// Per continuation: the mean of its tokens' log-probabilities.
    pub mean: Vec<f64>,
    /// Per continuation: each token's log-probability.
    pub token_logprobs: Vec<Vec<f64>>,
}

/// A `generateStart` request, copied out of JavaScript.
pub struct StartJob {
    pub id: u32,
    pub vision_x: HostTensor<f32>,
    pub prompts: Vec<Vec<u32>>,
    pub masks: Option<Vec<Vec<u32>>>,
    pub config: GenerationConfig,
    pub abort: Arc<AtomicBool>,
}

/// A `score` request, copied out of JavaScript.
pub struct ScoreJob {
    pub vision_x: HostTensor<f32>,
    pub context: Vec<u32>,
    pub context_mask: Option<Vec<u32>>,
    pub continuations: Vec<Vec<u32>>,
    pub abort: Arc<AtomicBool>,
}

/// `(B, T)` ids or mask → rows of `u32`.
fn rows_u32(t: &HostTensor<i32>) -> BindingResult<Vec<Vec<u32>>> {
    let [_, width] = t.shape[..] else {
        return Err(BindingError::invalid_input(format!(
            "{} must have shape [batch, tokens], got {:?}",
            t.name, t.shape
        )));
    };
    if width == 0 {
        return Err(BindingError::invalid_input(format!("{} is empty", t.name)));
    }
    t.data
        .chunks(width)
        .map(|row| {
            row.iter()
                .map(|&v| {
                    u32::try_from(v).map_err(|_| {
                        BindingError::invalid_input(format!(
                            "{} must not be negative (found {v})",
                            t.name
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

fn aborted() -> BindingError {
    CoreError::Aborted.into()
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The engine thread's generation sessions, by operation id.
#[derive(Default)]
pub struct Sessions {
    live: HashMap<u32, (GenerationSession, Arc<AtomicBool>)>,
}

impl Sessions {
    pub fn start(
        &mut self,
        model: &Arc<Flamingo>,
        device: &Device,
        job: StartJob,
    ) -> BindingResult<GenerateStarted> {
        if job.abort.load(Ordering::Relaxed) {
            return Err(aborted());
        }
        let t = Instant::now();
        let rows = (job.prompts.len() * job.config.num_return_sequences.max(1)) as u32;
        let session = GenerationSession::start(
            model.clone(),
            &job.vision_x.to_tensor(device)?,
            job.prompts,
            job.masks,
            job.config,
        )?;
        self.live.insert(job.id, (session, job.abort));
        Ok(GenerateStarted {
            rows,
            native_ms: ms_since(t),
        })
    }

    /// Decodes up to `max_steps` tokens. A failed or aborted session is dropped: its state
    /// may be half-updated, so it cannot go on.
    pub fn step(&mut self, id: u32, max_steps: u32) -> BindingResult<GenerateStep> {
        let (session, abort) = self.live.get_mut(&id).ok_or_else(|| unknown(id))?;
        let t = Instant::now();
        match session.step(max_steps.max(1) as usize, abort) {
            Ok(out) => Ok(GenerateStep {
                tokens: out.tokens,
                done: out.done,
                native_ms: ms_since(t),
            }),
            Err(e) => {
                self.live.remove(&id);
                Err(e.into())
            }
        }
    }

    pub fn finish(&mut self, id: u32) -> BindingResult<GenerateResult> {
        let (session, _) = self.live.remove(&id).ok_or_else(|| unknown(id))?;
        let r = session.finish()?;
        Ok(GenerateResult {
            sequences: r.sequences,
            new_tokens: r.new_tokens,
            scores: r.scores.into_iter().map(f64::from).collect(),
            stopped: r.stopped,
        })
    }

    pub fn remove(&mut self, id: u32) {
        self.live.remove(&id);
    }

    pub fn clear(&mut self) {
        self.live.clear();
    }
}

fn unknown(id: u32) -> BindingError {
    BindingError::invalid_input(format!(
        "generation {id} does not exist (it finished, failed or was released)"
    ))
}

pub fn score(model: &Flamingo, device: &Device, job: ScoreJob) -> BindingResult<ScoreOutput> {
    let scores = score_continuations(
        model,
        &job.vision_x.to_tensor(device)?,
        &job.context,
        job.context_mask.as_deref(),
        &job.continuations,
        &job.abort,
    )?;
    Ok(ScoreOutput {
        sum: scores.iter().map(|s| f64::from(s.sum)).collect(),
        mean: scores.iter().map(|s| f64::from(s.mean)).collect(),
        token_logprobs: scores
            .into_iter()
            .map(|s| s.token_logprobs.into_iter().map(f64::from).collect())
            .collect(),
    })
}

/// The JS side's abort flags, by operation id.
#[derive(Default)]
pub struct AbortFlags {
    next: u32,
    flags: HashMap<u32, Arc<AtomicBool>>,
}

impl AbortFlags {
    fn create(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1);
        self.flags
            .insert(self.next, Arc::new(AtomicBool::new(false)));
        self.next
    }

    fn get(&self, id: u32) -> BindingResult<Arc<AtomicBool>> {
        self.flags.get(&id).cloned().ok_or_else(|| {
            BindingError::invalid_input(format!("operation {id} does not exist (it was released)"))
        })
    }
}

#[napi]
impl FlamingoModel {
    /// Registers a new cancellable operation (a generation or a scoring call) and returns its
    /// id. Release it with `releaseOperation` when done.
    #[napi]
    pub fn create_operation(&self) -> u32 {
        self.operations.lock().map(|mut a| a.create()).unwrap_or(0)
    }

    /// Asks the operation to stop: stores its flag at once, even while the engine is busy.
    /// The engine reads it before each token (or batch of continuations); the running call
    /// then rejects with `ABORT_ERR`.
    #[napi]
    pub fn abort_operation(&self, id: u32) {
        if let Ok(a) = self.operations.lock() {
            if let Some(flag) = a.flags.get(&id) {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Forgets the operation and frees its generation session (after the calls queued
    /// before this one). Releasing an unknown id does nothing.
    #[napi]
    pub fn release_operation(&self, id: u32) {
        let known = self
            .operations
            .lock()
            .map(|mut a| a.flags.remove(&id).is_some())
            .unwrap_or(false);
        if known && !self.disposed() {
            self.submit(Job::GenerateDrop(id));
        }
    }

    /// Encodes the images and runs the prompts of generation `id` (from `createOperation`).
    #[napi]
    pub fn generate_start<'env>(
        &self,
        env: &'env Env,
        id: u32,
        input: GenerateInput,
    ) -> napi::Result<PromiseRaw<'env, GenerateStarted>> {
        let (deferred, promise) = promise::<GenerateStarted>(env)?;
        let job = (|| -> BindingResult<StartJob> {
            let abort = self.operations.lock().map_err(|_| poisoned())?.get(id)?;
            let lang_x = HostTensor::<i32>::from_js("langX", &input.lang_x)?;
            let masks = input
                .attention_mask
                .as_ref()
                .map(|m| HostTensor::<i32>::from_js("attentionMask", m).and_then(|m| rows_u32(&m)))
                .transpose()?;
            Ok(StartJob {
                id,
                vision_x: HostTensor::<f32>::from_js("visionX", &input.vision_x)?,
                prompts: rows_u32(&lang_x)?,
                masks,
                config: input.options.unwrap_or_default().into_config()?,
                abort,
            })
        })();
        match job {
            Err(e) => settle(deferred, Err(e)),
            Ok(job) => self.submit(Job::GenerateStart(job, deferred)),
        }
        Ok(promise)
    }

    /// Decodes up to `maxSteps` tokens of generation `id` (at least one).
    #[napi]
    pub fn generate_step<'env>(
        &self,
        env: &'env Env,
        id: u32,
        max_steps: u32,
    ) -> napi::Result<PromiseRaw<'env, GenerateStep>> {
        let (deferred, promise) = promise::<GenerateStep>(env)?;
        self.submit(Job::GenerateStep(id, max_steps, deferred));
        Ok(promise)
    }

    /// The final sequences of generation `id`; frees its session.
    #[napi]
    pub fn generate_finish<'env>(
        &self,
        env: &'env Env,
        id: u32,
    ) -> napi::Result<PromiseRaw<'env, GenerateResult>> {
        let (deferred, promise) = promise::<GenerateResult>(env)?;
        self.submit(Job::GenerateFinish(id, deferred));
        Ok(promise)
    }

    /// Log-likelihoods of continuations after one context, the context computed once
    /// (operation `id` from `createOperation`, for cancellation).
    #[napi]
    pub fn score<'env>(
        &self,
        env: &'env Env,
        id: u32,
        input: ScoreInput,
    ) -> napi::Result<PromiseRaw<'env, ScoreOutput>> {
        let (deferred, promise) = promise::<ScoreOutput>(env)?;
        let job = (|| -> BindingResult<ScoreJob> {
            Ok(ScoreJob {
                abort: self.operations.lock().map_err(|_| poisoned())?.get(id)?,
                vision_x: HostTensor::<f32>::from_js("visionX", &input.vision_x)?,
                context: input.context,
                context_mask: input.context_mask,
                continuations: input.continuations,
            })
        })();
        match job {
            Err(e) => settle(deferred, Err(e)),
            Ok(job) => self.submit(Job::Score(job, deferred)),
        }
        Ok(promise)
    }
}

fn poisoned() -> BindingError {
    BindingError::new(
        crate::error::ERR_ENGINE_PANIC,
        "the model's operation table is unusable after an earlier panic",
    )
}
