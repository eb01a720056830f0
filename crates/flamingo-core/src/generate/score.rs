//! Log-likelihoods of continuations after one shared context, with the context run once and
//! its KV cache reused for every continuation: the reference's cached rank classification
//! (`cache_media` + a `use_cache=True` forward over the context, spec §4.5 and §6).
//!
//! As in the reference, continuation tokens attend to the last image of the context (they
//! contain no `<image>`; `TextTimes::AfterPrompt`). Unlike the reference, which feeds the
//! continuation with `attention_mask=None` so that a left-padded context's pad positions
//! become visible (spec §6, "a quirk"), the context's padding stays masked here: a padded
//! context scores exactly what the unpadded one does.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor, D};

use crate::flamingo::model::{Flamingo, TextTimes};
use crate::lm::KvCache;
use crate::{Error, Result};

/// The log-likelihood of one continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuationScore {
    /// `log p(token_i | context, token_<i)` for each token of the continuation.
    pub token_logprobs: Vec<f32>,
    /// Sum of `token_logprobs`: the continuation's log-likelihood.
    pub sum: f32,
    /// Mean of `token_logprobs` (the reference's length-normalised class score).
    pub mean: f32,
}

/// Logit values held at once while scoring: continuations are batched in groups whose
/// `(rows, tokens, vocab)` logits stay under this many floats (64 MiB), so a thousand
/// class names do not need a thousand-row forward.
const LOGITS_BUDGET: usize = 16 << 20;

/// Scores `continuations` after `context`. `vision_x` is `(1, T_img, 1, 3, H, W)`; `context`
/// is one row of ids (with its `<image>` tokens) and `context_mask` its 0/1 padding mask
/// (all ones when `None`). `abort` is checked between batches of continuations.
pub fn score_continuations(
    model: &Flamingo,
    vision_x: &Tensor,
    context: &[u32],
    context_mask: Option<&[u32]>,
    continuations: &[Vec<u32>],
    abort: &AtomicBool,
) -> Result<Vec<ContinuationScore>> {
    if context.is_empty() {
        return Err(Error::InvalidInput("the context is empty".into()));
    }
    if continuations.is_empty() {
        return Err(Error::InvalidInput(
            "there are no continuations to score".into(),
        ));
    }
    if let Some(i) = continuations.iter().position(|c| c.is_empty()) {
        return Err(Error::InvalidInput(format!("continuation {i} is empty")));
    }
    let mask: Vec<u32> = match context_mask {
        Some(m) if m.len() != context.len() => {
            return Err(Error::InvalidInput(format!(
                "the context mask has {} entries but the context has {} tokens",
                m.len(),
                context.len()
            )))
        }
        Some(m) => m.iter().map(|&x| (x != 0) as u32).collect(),
        None => vec![1; context.len()],
    };
    if mask.iter().all(|&m| m == 0) {
        return Err(Error::InvalidInput(
            "the context mask hides every context token".into(),
        ));
    }
    let dims = vision_x.dims();
    if dims.first() != Some(&1) {
        return Err(Error::InvalidInput(format!(
            "visionX must hold the images of one context (batch 1), got shape {dims:?}"
        )));
    }
    let num_media = dims.get(1).copied().unwrap_or(0);
    let images = model.prompt_text_times(&[context.to_vec()])[0]
        .last()
        .copied()
        .unwrap_or(0);
    if images as usize > num_media {
        return Err(Error::InvalidInput(format!(
            "the context has {images} <image> tokens but only {num_media} images were supplied"
        )));
    }
    let media = model.media_token_id();
    if let Some(i) = continuations.iter().position(|c| c.contains(&media)) {
        return Err(Error::InvalidInput(format!(
            "continuation {i} contains <image>; continuations attend to the context's last image and cannot add images"
        )));
    }
    let vocab = model.lm().info().vocab_size;
    if let Some(bad) = continuations
        .iter()
        .flatten()
        .find(|&&id| id as usize >= vocab)
    {
        return Err(Error::InvalidInput(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(max) = model.lm().info().max_positions {
        let real = mask.iter().filter(|&&m| m != 0).count();
        if real + longest > max {
            return Err(Error::InvalidInput(format!(
                "the context has {real} tokens and the longest continuation {longest}, but the model supports at most {max} positions"
            )));
        }
    }
    if abort.load(Ordering::Relaxed) {
        return Err(Error::Aborted);
    }

    let cond = model.condition(&model.encode_vision(vision_x)?)?;
    let mut cache = KvCache::new(model.lm().info().num_layers);
    let ctx_logits = model.forward_tokens(
        &[context.to_vec()],
        std::slice::from_ref(&mask),
        &cond,
        &TextTimes::Prompt,
        Some(&mut cache),
    )?;
    // The first continuation token is predicted by the context's last position.
    let first = log_softmax_rows(&ctx_logits.narrow(1, context.len() - 1, 1)?.squeeze(1)?)?
        .pop()
        .unwrap_or_default();

    let fed = longest - 1; // the last token of a continuation predicts nothing we score
    let group = (LOGITS_BUDGET / (fed.max(1) * vocab.max(1))).clamp(1, continuations.len());
    let mut scores = Vec::with_capacity(continuations.len());
    for chunk in continuations.chunks(group) {
        if abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        let mut rest: Vec<Vec<f32>> = vec![Vec::new(); chunk.len()];
        let fed = chunk.iter().map(Vec::len).max().unwrap_or(1) - 1;
        if fed > 0 {
            rest = score_rest(model, &cond, &cache, &mask, images, chunk, fed)?;
        }
        for (c, later) in chunk.iter().zip(rest) {
            let mut token_logprobs = Vec::with_capacity(c.len());
            token_logprobs.push(first[c[0] as usize]);
            token_logprobs.extend(later);
            let sum: f32 = token_logprobs.iter().sum();
            scores.push(ContinuationScore {
                mean: sum / token_logprobs.len() as f32,
                sum,
                token_logprobs,
            });
        }
    }
    Ok(scores)
}

/// Log-probabilities of tokens `1..` of each continuation in `chunk`, from one batched
/// forward of their first `fed` tokens over copies of the context's cache. Shorter
/// continuations are right-padded; the pads come after every token scored, so causal
/// attention keeps them out of the scored positions, and their mask hides them as keys.
fn score_rest(
    model: &Flamingo,
    cond: &crate::flamingo::model::MediaConditioning,
    cache: &KvCache,
    context_mask: &[u32],
    images: u32,
    chunk: &[Vec<u32>],
    fed: usize,
) -> Result<Vec<Vec<f32>>> {
    let n = chunk.len();
    let rows = vec![0u32; n];
    let idx = Tensor::from_slice(&rows, n, model.device())?;
    let mut cache = cache.clone();
    cache.reorder(&idx)?;
    let cond = cond.select_rows(&rows)?;
    let mut ids = Vec::with_capacity(n);
    let mut masks = Vec::with_capacity(n);
    for c in chunk {
        let real = c.len() - 1;
        let mut row: Vec<u32> = c[..real.min(fed)].to_vec();
        row.resize(fed, c[0]); // any in-vocabulary id: masked, and never scored
        ids.push(row);
        let mut m = context_mask.to_vec();
        m.extend((0..fed).map(|j| (j < real) as u32));
        masks.push(m);
    }
    let logits = model.forward_tokens(
        &ids,
        &masks,
        &cond,
        &TextTimes::AfterPrompt(vec![images; n]),
        Some(&mut cache),
    )?;
    let logprobs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    // Gather each scored token's log-probability on the device, then read back n × fed values.
    let targets: Vec<u32> = chunk
        .iter()
        .flat_map(|c| (0..fed).map(move |j| c.get(j + 1).copied().unwrap_or(0)))
        .collect();
    let targets = Tensor::from_vec(targets, (n, fed, 1), model.device())?;
    let picked = logprobs.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
    let picked: Vec<Vec<f32>> = picked.to_vec2()?;
    Ok(chunk
        .iter()
        .zip(picked)
        .map(|(c, row)| row[..c.len() - 1].to_vec())
        .collect())
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(lp.to_vec2()?)
}
