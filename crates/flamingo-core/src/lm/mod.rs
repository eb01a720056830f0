//! Causal language models, written in this crate so that cross-attention can be injected
//! between their decoder layers (candle-transformers' layer types are private; notes §A5).
//!
//! Every family exposes the same three stages — embed, one decoder layer, head — so the
//! Flamingo composition (`flamingo::model`) can run an optional gated cross-attention block
//! before any layer, as OpenFlamingo's `FlamingoLayer` does.

pub mod attention;
pub mod cache;
pub mod config;
pub mod gpt_neox;
pub mod gptj;
pub mod llama;
pub mod mpt;
pub mod opt;
pub mod rope;

use std::path::Path;

use candle_core::Tensor;

pub use attention::AttentionContext;
pub use cache::{KvCache, LayerKv};

use crate::io::Weights;
use crate::{Error, Result};

/// The LM families the engine implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmFamily {
    Llama,
    Opt,
    GptNeox,
    /// HF `MptForCausalLM` (MPT-7B) and MosaicML's `MosaicGPT` (MPT-1B, QK-LayerNorm).
    Mpt,
    /// HF `GPTJForCausalLM` (GPT-J-6B).
    GptJ,
}

impl LmFamily {
    /// The reference's decoder-layers attribute path for this family (spec §2.4).
    pub fn decoder_layers_path(&self) -> &'static str {
        match self {
            LmFamily::Llama => "model.layers",
            LmFamily::Opt => "model.decoder.layers",
            LmFamily::GptNeox => "gpt_neox.layers",
            LmFamily::Mpt => "transformer.blocks",
            LmFamily::GptJ => "transformer.h",
        }
    }
}

/// What the composition needs to know about a loaded LM.
#[derive(Clone, Debug)]
pub struct LmInfo {
    pub family: LmFamily,
    /// `model_type` as written in config.json.
    pub model_type: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Rows of the input embedding (after any resize).
    pub vocab_size: usize,
    /// Largest supported position (learned position tables), `None` when unbounded (ALiBi).
    pub max_positions: Option<usize>,
    /// HF key of the input embedding matrix, e.g. `model.embed_tokens.weight`.
    pub input_embedding_key: String,
    /// HF key of the output head, `None` when tied to the input embedding.
    pub output_embedding_key: Option<String>,
}

/// Options applied while loading an LM.
#[derive(Clone, Debug, Default)]
pub struct LmLoadOptions {
    /// Resize the vocabulary (input embedding and untied head) to this many rows, as the
    /// reference's `resize_token_embeddings(len(tokenizer))` does: shrinking keeps the first
    /// rows; growing appends rows equal to the mean of the existing ones.
    pub vocab_size: Option<usize>,
}

impl LmLoadOptions {
    /// Applies `vocab_size` to a `(V, D)` matrix (an input embedding or an untied head):
    /// shrinking keeps the first rows, growing appends copies of the mean row (computed in
    /// f32), as HF `resize_token_embeddings` with mean initialisation does.
    pub fn resize_vocab(&self, table: Tensor) -> Result<Tensor> {
        let Some(target) = self.vocab_size else {
            return Ok(table);
        };
        let (rows, dim) = table.dims2()?;
        if target == 0 {
            return Err(Error::InvalidInput(
                "vocab_size must be at least 1".to_string(),
            ));
        }
        if target <= rows {
            return Ok(table.narrow(0, 0, target)?);
        }
        let mean = table
            .to_dtype(candle_core::DType::F32)?
            .mean_keepdim(0)?
            .to_dtype(table.dtype())?;
        let extra = mean.broadcast_as((target - rows, dim))?;
        Ok(Tensor::cat(&[&table, &extra], 0)?)
    }
}

/// A causal LM split into the stages the Flamingo composition interleaves with.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &LmInfo;

    /// Token ids `(B, T)` (u32) → input hidden states `(B, T, D)`.
    /// `ctx` carries positions for families with learned position embeddings (OPT).
    fn embed(&self, ids: &Tensor, ctx: &AttentionContext) -> Result<Tensor>;

    /// Decoder layer `i` on hidden states `(B, T, D)`. With `cache`, the layer appends its
    /// keys/values for these `T` tokens and attends over everything cached so far.
    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor>;

    /// Final norm and output head: `(B, T, D)` → logits `(B, T, V)`.
    fn head(&self, hidden: &Tensor) -> Result<Tensor>;

    /// The input embedding matrix `(V, D)` (trainable rows live here).
    fn input_embeddings(&self) -> &Tensor;

    /// Maps a change of token-embedding rows into the hidden space `embed` returns (identity,
    /// except for OPT's `project_in`, which is linear and bias-free, so deltas map exactly).
    fn project_embedding_delta(&self, delta: &Tensor) -> Result<Tensor> {
        Ok(delta.clone())
    }

    /// The hidden states the output head multiplies by its matrix (after the final norm and
    /// any output projection), `(B, T, D_head)`. Needed to give tied-embedding rows their
    /// output-head gradient when those rows train.
    fn final_hidden(&self, _hidden: &Tensor) -> Result<Tensor> {
        Err(Error::InvalidInput(format!(
            "{:?} does not expose its final hidden states",
            self.info().family
        )))
    }
}

/// Errors unless every id in `ids` is below `vocab_size`: an out-of-range id would make the
/// embedding lookup fail with an opaque tensor error on the CPU, and read out of bounds on
/// CUDA. Costs one scalar read-back.
pub fn check_token_ids(ids: &Tensor, vocab_size: usize) -> Result<()> {
    if ids.elem_count() == 0 {
        return Ok(());
    }
    let top = ids
        .to_dtype(candle_core::DType::U32)?
        .max_all()?
        .to_scalar::<u32>()? as usize;
    if top >= vocab_size {
        return Err(Error::InvalidInput(format!(
            "token id {top} is out of range for a vocabulary of {vocab_size} (resize the \
             vocabulary to len(tokenizer) when loading)"
        )));
    }
    Ok(())
}

/// Loads the LM described by `dir/config.json` from `weights` (rooted at the HF key names).
pub fn load_lm(dir: &Path, weights: &Weights, opts: &LmLoadOptions) -> Result<Box<dyn CausalLm>> {
    let cfg_path = dir.join("config.json");
    let raw = config::read_json(&cfg_path)?;
    load_lm_from_config(&cfg_path, &raw, weights, opts)
}

pub const SUPPORTED_MODEL_TYPES: &str = "llama, opt, gpt_neox, mpt, mosaic_gpt, gptj";

/// Dispatches on `model_type` (config.json). `cfg_path` is used in error messages.
pub fn load_lm_from_config(
    cfg_path: &Path,
    raw: &serde_json::Value,
    weights: &Weights,
    opts: &LmLoadOptions,
) -> Result<Box<dyn CausalLm>> {
    let model_type = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config(cfg_path, "missing \"model_type\""))?;
    Ok(match model_type {
        "llama" => Box::new(llama::Llama::load(cfg_path, raw, weights, opts)?),
        "opt" => Box::new(opt::Opt::load(cfg_path, raw, weights, opts)?),
        "gpt_neox" => Box::new(gpt_neox::GptNeox::load(cfg_path, raw, weights, opts)?),
        "mpt" | "mosaic_gpt" => Box::new(mpt::Mpt::load(cfg_path, raw, weights, opts)?),
        "gptj" => Box::new(gptj::GptJ::load(cfg_path, raw, weights, opts)?),
        other => {
            return Err(Error::UnsupportedModel {
                model_type: other.to_string(),
                path: cfg_path.to_path_buf(),
                supported: SUPPORTED_MODEL_TYPES.to_string(),
            })
        }
    })
}
