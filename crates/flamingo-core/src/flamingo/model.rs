//! The composed Flamingo model (OpenFlamingo flamingo.py + flamingo_lm.py): CLIP patch
//! tokens → Perceiver resampler → gated cross-attention before the planned LM layers.
//!
//! Media conditioning is explicit state passed into every forward (`MediaConditioning`),
//! not fields toggled on the layers from outside as the reference's `condition_*` calls do.

use std::path::PathBuf;

use crate::flamingo::config::{CrossAttnConfig, PerceiverConfig};

/// Everything needed to build a model from files. The layer plan is decided by the caller
/// (the TypeScript composition API), not here.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// HF CLIP folder (`config.json` + weights); `CLIPVisionModel` or `CLIPModel`.
    pub vision_dir: PathBuf,
    /// HF causal-LM folder (`config.json` + weights).
    pub lm_dir: PathBuf,
    /// OpenFlamingo weights (`checkpoint.pt` or `.safetensors`); `None`: fresh initialisation.
    pub checkpoint: Option<PathBuf>,
    /// Id of `<image>`.
    pub media_token_id: u32,
    /// Id of `<|endofchunk|>`.
    pub end_of_chunk_token_id: u32,
    /// LM layer indices that get a gated cross-attention block before them.
    pub cross_attn_layers: Vec<usize>,
    /// Expected decoder-layers path (e.g. `transformer.blocks`); checked against the LM.
    pub decoder_layers_path: Option<String>,
    pub perceiver: PerceiverConfig,
    pub cross_attn: CrossAttnConfig,
    /// Apply the vision tower's post-layernorm to every token (open_clip ≥ 2.23 behaviour).
    /// Off by default: the released checkpoints were trained on pre-LN tokens (spec §5.1).
    pub vision_post_layernorm: bool,
    /// Resize the LM vocabulary to this many rows (`len(tokenizer)`).
    pub vocab_size: Option<usize>,
    /// Error on unexpected checkpoint keys too (missing Flamingo keys always error).
    pub strict: bool,
    /// Seed for fresh initialisation when there is no checkpoint.
    pub init_seed: u64,
}
