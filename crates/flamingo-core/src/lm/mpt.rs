//! MPT decoder in its two spellings, one implementation: HF transformers' `MptForCausalLM`
//! (`models/mpt/modeling_mpt.py`, model_type "mpt", MPT-7B as OpenFlamingo-9B uses it) and
//! MosaicML's original `MosaicGPT` (model_type "mosaic_gpt", the remote code of
//! `mosaicml/mpt-1b-redpajama-200b` behind OpenFlamingo-3B: `mosaic_gpt.py`, `gpt_blocks.py`,
//! `attention.py`). Both are pre-LN blocks with a fused `Wqkv`, exact GELU, ALiBi (or, for
//! MosaicGPT without ALiBi, learned positions) and an output head tied to `transformer.wte`.
//!
//! | concept | "mpt" keys / config | "mosaic_gpt" keys / config |
//! |---|---|---|
//! | block norms | `norm_1`, `norm_2` | `ln_1`, `ln_2` |
//! | MLP | `ffn.up_proj`, `ffn.down_proj` | `mlp.mlp_up`, `mlp.mlp_down` |
//! | final norm | `norm_f` | `ln_f` |
//! | attention options | `attn_config {alibi, alibi_bias_max, clip_qkv, qk_ln, softmax_scale}` | flat `alibi`, `alibi_bias_max`, `attn_clip_qkv`, `attn_qk_ln`, `softmax_scale` |
//! | MLP width | `4·d_model` (transformers ignores `expansion_ratio`) or `expansion_ratio·d_model` | `mlp_ratio·d_model` |

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::io::Weights;
use crate::lm::attention::scaled_dot_product;
use crate::lm::config::parse;
use crate::lm::{
    check_token_ids, AttentionContext, CausalLm, LayerKv, LmFamily, LmInfo, LmLoadOptions,
};
use crate::nn::{embedding, gelu_erf, LayerNorm, Linear};
use crate::{Error, Result};

/// PyTorch's `nn.LayerNorm` default; MosaicGPT has no epsilon field.
const DEFAULT_EPS: f64 = 1e-5;

fn yes() -> bool {
    true
}
fn four() -> f64 {
    4.0
}
fn eight() -> f64 {
    8.0
}
fn one() -> f64 {
    1.0
}
fn default_eps() -> f64 {
    DEFAULT_EPS
}
fn default_max_seq_len() -> usize {
    2048
}
fn multihead() -> String {
    "multihead_attention".to_string()
}

/// `config.json` of HF `MptForCausalLM` / MPT-7B (model_type "mpt"). The aliases accept the
/// generic names transformers maps onto MPT's own (`attribute_map` in `MptConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct MptConfig {
    #[serde(alias = "hidden_size")]
    pub d_model: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_heads: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layers: usize,
    /// Read by MPT-7B's own code; transformers' port hard-codes 4 (see `ffn_width`).
    #[serde(default = "four")]
    pub expansion_ratio: f64,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Ignored by transformers' MPT: the released weights have no position table.
    #[serde(default = "yes")]
    pub learned_pos_emb: bool,
    #[serde(default)]
    pub attn_config: MptAttnConfig,
    /// A number, or "inv_sqrt_d_model".
    #[serde(default)]
    pub logit_scale: Option<serde_json::Value>,
    /// Every released MPT sets it (and transformers' port never has biases); `false`, as
    /// MPT-7B's own code reads it, loads a bias on every Linear and LayerNorm.
    #[serde(default = "yes")]
    pub no_bias: bool,
    #[serde(default = "one")]
    pub embedding_fraction: f64,
    #[serde(default)]
    pub norm_type: Option<String>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

/// MPT's nested `attn_config`, with transformers' `MptAttentionConfig` defaults.
#[derive(Clone, Debug, Deserialize)]
pub struct MptAttnConfig {
    #[serde(default = "multihead")]
    pub attn_type: String,
    #[serde(default = "yes")]
    pub alibi: bool,
    #[serde(default = "eight")]
    pub alibi_bias_max: f64,
    #[serde(default)]
    pub clip_qkv: Option<f64>,
    #[serde(default)]
    pub qk_ln: bool,
    #[serde(default)]
    pub softmax_scale: Option<f64>,
    #[serde(default)]
    pub prefix_lm: bool,
    /// Later llm-foundry releases: RoPE instead of ALiBi (not supported here).
    #[serde(default)]
    pub rope: bool,
}

impl Default for MptAttnConfig {
    fn default() -> Self {
        Self {
            attn_type: multihead(),
            alibi: true,
            alibi_bias_max: eight(),
            clip_qkv: None,
            qk_ln: false,
            softmax_scale: None,
            prefix_lm: false,
            rope: false,
        }
    }
}

/// `config.json` of MosaicML's `MosaicGPT` (model_type "mosaic_gpt"), defaults from its
/// `configuration_mosaic_gpt.py`.
#[derive(Clone, Debug, Deserialize)]
pub struct MosaicGptConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub attn_qk_ln: bool,
    #[serde(default)]
    pub attn_clip_qkv: Option<f64>,
    #[serde(default)]
    pub softmax_scale: Option<f64>,
    #[serde(default)]
    pub prefix_lm: bool,
    #[serde(default)]
    pub alibi: bool,
    #[serde(default = "eight")]
    pub alibi_bias_max: f64,
    #[serde(default)]
    pub logit_scale: Option<serde_json::Value>,
    /// Removes the bias of every Linear *and* LayerNorm (MosaicGPT's `__init__` drops every
    /// `bias` parameter of every module); MPT-1B sets it.
    #[serde(default)]
    pub no_bias: bool,
    #[serde(default = "one")]
    pub embedding_fraction: f64,
}

/// The two key layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    Hf,
    MosaicGpt,
}

impl Spelling {
    fn norm_1(self) -> &'static str {
        match self {
            Spelling::Hf => "norm_1",
            Spelling::MosaicGpt => "ln_1",
        }
    }
    fn norm_2(self) -> &'static str {
        match self {
            Spelling::Hf => "norm_2",
            Spelling::MosaicGpt => "ln_2",
        }
    }
    fn up(self) -> &'static str {
        match self {
            Spelling::Hf => "ffn.up_proj",
            Spelling::MosaicGpt => "mlp.mlp_up",
        }
    }
    fn down(self) -> &'static str {
        match self {
            Spelling::Hf => "ffn.down_proj",
            Spelling::MosaicGpt => "mlp.mlp_down",
        }
    }
    fn norm_f(self) -> &'static str {
        match self {
            Spelling::Hf => "norm_f",
            Spelling::MosaicGpt => "ln_f",
        }
    }
}

/// The one internal configuration both spellings convert into.
#[derive(Clone, Debug)]
struct Settings {
    d_model: usize,
    n_heads: usize,
    n_layers: usize,
    /// MLP width as the config states it (the HF spelling may still find `4·d_model`).
    ffn_width: usize,
    max_seq_len: usize,
    vocab_size: usize,
    eps: f64,
    bias: bool,
    qk_ln: bool,
    clip_qkv: Option<f64>,
    softmax_scale: Option<f64>,
    /// `Some(alibi_bias_max)` for ALiBi, `None` for learned positions (`transformer.wpe`).
    alibi: Option<f64>,
    logit_scale: Option<serde_json::Value>,
    embedding_fraction: f64,
    tied: bool,
}

fn settings_from_hf(path: &Path, cfg: MptConfig) -> Result<Settings> {
    let a = &cfg.attn_config;
    if a.attn_type != "multihead_attention" {
        return Err(Error::config(
            path,
            format!(
                "attn_config.attn_type \"{}\" is not supported (only multihead_attention)",
                a.attn_type
            ),
        ));
    }
    if a.rope {
        return Err(Error::config(
            path,
            "attn_config.rope is not supported (ALiBi MPT only)",
        ));
    }
    if a.prefix_lm {
        return Err(Error::config(
            path,
            "attn_config.prefix_lm is not supported",
        ));
    }
    if let Some(n) = cfg.norm_type.as_deref() {
        if !n.contains("layernorm") {
            return Err(Error::config(
                path,
                format!("norm_type \"{n}\" is not supported (layernorm only)"),
            ));
        }
    }
    // transformers' MPT always uses ALiBi; MPT-7B's own code falls back to a learned
    // position table (`transformer.wpe`) when `alibi` is off, which no released MPT does.
    let alibi = if a.alibi {
        Some(a.alibi_bias_max)
    } else if cfg.learned_pos_emb {
        None
    } else {
        return Err(Error::config(
            path,
            "attn_config.alibi and learned_pos_emb are both off: models without position \
             information are not supported",
        ));
    };
    Ok(Settings {
        d_model: cfg.d_model,
        n_heads: cfg.n_heads,
        n_layers: cfg.n_layers,
        ffn_width: (cfg.d_model as f64 * cfg.expansion_ratio) as usize,
        max_seq_len: cfg.max_seq_len,
        vocab_size: cfg.vocab_size,
        eps: cfg.layer_norm_epsilon,
        bias: !cfg.no_bias,
        qk_ln: a.qk_ln,
        clip_qkv: a.clip_qkv,
        softmax_scale: a.softmax_scale,
        alibi,
        logit_scale: cfg.logit_scale,
        embedding_fraction: cfg.embedding_fraction,
        tied: cfg.tie_word_embeddings,
    })
}

fn settings_from_mosaic(path: &Path, cfg: MosaicGptConfig) -> Result<Settings> {
    if cfg.prefix_lm {
        return Err(Error::config(path, "prefix_lm is not supported"));
    }
    Ok(Settings {
        d_model: cfg.d_model,
        n_heads: cfg.n_heads,
        n_layers: cfg.n_layers,
        ffn_width: (cfg.d_model as f64 * cfg.mlp_ratio) as usize,
        max_seq_len: cfg.max_seq_len,
        vocab_size: cfg.vocab_size,
        eps: DEFAULT_EPS,
        bias: !cfg.no_bias,
        qk_ln: cfg.attn_qk_ln,
        clip_qkv: cfg.attn_clip_qkv,
        softmax_scale: cfg.softmax_scale,
        alibi: cfg.alibi.then_some(cfg.alibi_bias_max),
        logit_scale: cfg.logit_scale,
        embedding_fraction: cfg.embedding_fraction,
        // MosaicGPT has no separate head: logits are `F.linear(x, wte.weight)`.
        tied: true,
    })
}

/// ALiBi slopes `2^(-m_i)`.
///
/// "mpt" (transformers' `build_mpt_alibi_tensor`, MPT-7B's `gen_slopes`): computed for the
/// next power of two `n ≥ heads` with `m_i = i·max/n`, then, when `n ≠ heads`, the odd
/// entries followed by the even ones, truncated to `heads`.
/// "mosaic_gpt" (its `attention.alibi_bias`): `m_i = i·max/heads`, no power-of-two step;
/// the two agree whenever `heads` is a power of two (MPT-1B has 16).
fn alibi_slopes(heads: usize, bias_max: f64, spelling: Spelling) -> Vec<f32> {
    let n = match spelling {
        Spelling::Hf => heads.next_power_of_two(),
        Spelling::MosaicGpt => heads,
    };
    let all: Vec<f32> = (1..=n)
        .map(|i| (1.0 / 2f64.powf(i as f64 * bias_max / n as f64)) as f32)
        .collect();
    if n == heads {
        return all;
    }
    let odd = all.iter().skip(1).step_by(2);
    let even = all.iter().step_by(2);
    odd.chain(even).take(heads).copied().collect()
}

struct Block {
    norm_1: LayerNorm,
    wqkv: Linear,
    /// QK-LayerNorm over the full `d_model` before the head split (MPT-1B).
    qk_ln: Option<(LayerNorm, LayerNorm)>,
    out_proj: Linear,
    norm_2: LayerNorm,
    up: Linear,
    down: Linear,
}

pub struct Mpt {
    info: LmInfo,
    /// `transformer.wte` `(V, D)`, also the output head when tied.
    embeddings: Tensor,
    /// `transformer.wpe` `(max_seq_len, D)` when positions are learned instead of ALiBi.
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    norm_f: LayerNorm,
    lm_head: Option<Tensor>,
    /// `(1, H, 1, 1)` f32, with ALiBi.
    alibi_slopes: Option<Tensor>,
    n_heads: usize,
    head_dim: usize,
    softmax_scale: f64,
    clip_qkv: Option<f64>,
    logit_scale: Option<f64>,
    embedding_fraction: f64,
    max_seq_len: usize,
}

impl Mpt {
    pub fn load(
        cfg_path: &Path,
        raw: &serde_json::Value,
        weights: &Weights,
        opts: &LmLoadOptions,
    ) -> Result<Self> {
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("mpt");
        let (spelling, s) = match model_type {
            "mosaic_gpt" => (
                Spelling::MosaicGpt,
                settings_from_mosaic(cfg_path, parse(cfg_path, raw)?)?,
            ),
            _ => (
                Spelling::Hf,
                settings_from_hf(cfg_path, parse(cfg_path, raw)?)?,
            ),
        };
        let (d, h) = (s.d_model, s.n_heads);
        if h == 0 || !d.is_multiple_of(h) {
            return Err(Error::config(
                cfg_path,
                format!("d_model ({d}) must be divisible by n_heads ({h})"),
            ));
        }
        if s.n_layers == 0 {
            return Err(Error::config(cfg_path, "n_layers must be at least 1"));
        }
        if !(s.embedding_fraction > 0.0 && s.embedding_fraction <= 1.0) {
            return Err(Error::config(
                cfg_path,
                format!(
                    "embedding_fraction ({}) must be in (0, 1]",
                    s.embedding_fraction
                ),
            ));
        }
        let logit_scale = match &s.logit_scale {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(x)) if x == "inv_sqrt_d_model" => {
                Some(1.0 / (d as f64).sqrt())
            }
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                Error::config(
                    cfg_path,
                    format!("logit_scale must be a number or \"inv_sqrt_d_model\", got {v}"),
                )
            })?),
        };

        let tr = weights.pp("transformer");
        let embeddings = opts.resize_vocab(tr.pp("wte").get((s.vocab_size, d), "weight")?)?;
        let vocab_size = embeddings.dim(0)?;
        let wpe = match s.alibi {
            Some(_) => None,
            None => Some(tr.pp("wpe").get((s.max_seq_len, d), "weight")?),
        };
        let ffn_width = ffn_width(&tr, spelling, &s);
        let norm = |w: &Weights, name: &str| LayerNorm::load(w, name, d, s.eps, s.bias);
        let mut blocks = Vec::with_capacity(s.n_layers);
        for i in 0..s.n_layers {
            let w = tr.pp(format!("blocks.{i}"));
            let attn = w.pp("attn");
            let qk_ln = if s.qk_ln {
                Some((norm(&attn, "q_ln")?, norm(&attn, "k_ln")?))
            } else {
                None
            };
            blocks.push(Block {
                norm_1: norm(&w, spelling.norm_1())?,
                wqkv: Linear::load(&attn, "Wqkv", d, 3 * d, s.bias)?,
                qk_ln,
                out_proj: Linear::load(&attn, "out_proj", d, d, s.bias)?,
                norm_2: norm(&w, spelling.norm_2())?,
                up: Linear::load(&w, spelling.up(), d, ffn_width, s.bias)?,
                down: Linear::load(&w, spelling.down(), ffn_width, d, s.bias)?,
            });
        }
        let norm_f = norm(&tr, spelling.norm_f())?;
        let lm_head = if s.tied {
            // A stored `lm_head.weight` is only an alias of `transformer.wte` here.
            None
        } else {
            Some(opts.resize_vocab(weights.pp("lm_head").get((s.vocab_size, d), "weight")?)?)
        };
        let alibi_slopes = match s.alibi {
            Some(max) => Some(Tensor::from_vec(
                alibi_slopes(h, max, spelling),
                (1, h, 1, 1),
                weights.device(),
            )?),
            None => None,
        };

        let head_dim = d / h;
        let info = LmInfo {
            family: LmFamily::Mpt,
            model_type: model_type.to_string(),
            hidden_size: d,
            num_layers: s.n_layers,
            vocab_size,
            max_positions: wpe.as_ref().map(|_| s.max_seq_len),
            input_embedding_key: tr.pp("wte").key("weight"),
            output_embedding_key: lm_head
                .as_ref()
                .map(|_| weights.pp("lm_head").key("weight")),
        };
        Ok(Self {
            info,
            embeddings,
            wpe,
            blocks,
            norm_f,
            lm_head,
            alibi_slopes,
            n_heads: h,
            head_dim,
            softmax_scale: s.softmax_scale.unwrap_or(1.0 / (head_dim as f64).sqrt()),
            clip_qkv: s.clip_qkv,
            logit_scale,
            embedding_fraction: s.embedding_fraction,
            max_seq_len: s.max_seq_len,
        })
    }

    /// ALiBi bias `(1, H, T, S)` for queries at absolute indices `past..past+T` over keys
    /// `0..S`: `slope·(j − i)`. The reference adds `slope·(j − (S−1))`; the two differ by a
    /// per-row constant, which softmax ignores, and this form stays near zero for recent
    /// keys, so it keeps its precision in half-precision dtypes.
    fn alibi_bias(&self, slopes: &Tensor, ctx: &AttentionContext, dtype: DType) -> Result<Tensor> {
        let dev = slopes.device();
        let (past, t) = (ctx.past_len, ctx.seq_len);
        let keys = Tensor::arange(0u32, (past + t) as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((1, 1, 1, past + t))?;
        let queries = Tensor::arange(past as u32, (past + t) as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((1, 1, t, 1))?;
        let rel = keys.broadcast_sub(&queries)?;
        Ok(rel.broadcast_mul(slopes)?.to_dtype(dtype)?)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, hd) = (self.n_heads, self.head_dim);
        let mut qkv = block.wqkv.forward(x)?;
        if let Some(c) = self.clip_qkv {
            qkv = qkv.clamp(-c, c)?;
        }
        // q | k | v are contiguous blocks of d_model channels (`chunk(3, dim=2)`), each split
        // into heads h-major.
        let (mut q, mut k) = (qkv.narrow(2, 0, d)?, qkv.narrow(2, d, d)?);
        let v = qkv.narrow(2, 2 * d, d)?;
        if let Some((q_ln, k_ln)) = &block.qk_ln {
            q = q_ln.forward(&q)?;
            k = k_ln.forward(&k)?;
        }
        let heads = |y: &Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (heads(&q)?, heads(&k)?, heads(&v)?);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        // ALiBi and the mask are the same for every layer: one `(B, H, T, S)` sum per
        // forward. Adding it at once equals adding the two in turn: where the mask is 0 the
        // sum is the bias exactly, and where it is −1e30 both round to −1e30.
        let dtype = q.dtype();
        let mask = match &self.alibi_slopes {
            Some(slopes) => ctx.memoized("mpt-alibi+mask", dtype, || {
                Ok(self
                    .alibi_bias(slopes, ctx, dtype)?
                    .broadcast_add(&ctx.mask_in(dtype)?)?)
            })?,
            None => ctx.mask_in(dtype)?,
        };
        let out = scaled_dot_product(&q, &k, &v, self.softmax_scale, &mask, None)?;
        let out = out.transpose(1, 2)?.reshape((b, t, d))?;
        block.out_proj.forward(&out)
    }
}

/// MLP width. MosaicGPT and MPT-7B's own code use `ratio·d_model`; transformers' `MptMLP`
/// hard-codes `4·d_model` whatever `expansion_ratio` says (the golden tiny MPT has
/// `expansion_ratio: 2` and 4·64-wide weights). For the HF spelling, accept whichever of the
/// two the stored weights have; a mismatch then reports the transformers expectation.
fn ffn_width(tr: &Weights, spelling: Spelling, s: &Settings) -> usize {
    if spelling == Spelling::MosaicGpt {
        return s.ffn_width;
    }
    let stored = tr
        .pp("blocks.0")
        .pp(spelling.up())
        .shape_of("weight")
        .and_then(|shape| shape.first().copied());
    match stored {
        Some(w) if w == s.ffn_width => w,
        _ => 4 * s.d_model,
    }
}

impl CausalLm for Mpt {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor, ctx: &AttentionContext) -> Result<Tensor> {
        check_token_ids(ids, self.info.vocab_size)?;
        let mut x = embedding(&self.embeddings, ids)?;
        if let Some(wpe) = &self.wpe {
            if ctx.past_len + ctx.seq_len > self.max_seq_len {
                let top = ctx.positions.max_all()?.to_scalar::<u32>()? as usize;
                if top >= self.max_seq_len {
                    return Err(Error::InvalidInput(format!(
                        "position {top} is beyond this model's max_seq_len ({})",
                        self.max_seq_len
                    )));
                }
            }
            x = x.broadcast_add(&embedding(wpe, &ctx.positions)?)?;
        }
        if self.embedding_fraction < 1.0 {
            // GLM-130B's gradient shrink (MosaicGPT `embedding_fraction`): same values,
            // only a fraction of the gradient reaches the embedding.
            let f = self.embedding_fraction;
            x = ((&x * f)? + (x.detach() * (1.0 - f))?)?;
        }
        Ok(x)
    }

    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let block = self.blocks.get(i).ok_or_else(|| {
            Error::InvalidInput(format!(
                "MPT has {} layers, no layer {i}",
                self.blocks.len()
            ))
        })?;
        let a = block.norm_1.forward(hidden)?;
        let x = (hidden + self.attention(block, &a, ctx, cache)?)?;
        let m = block.norm_2.forward(&x)?;
        let m = block.down.forward(&gelu_erf(&block.up.forward(&m)?)?)?;
        Ok((x + m)?)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.final_hidden(hidden)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        Linear::new(head.clone(), None).forward(&x)
    }

    fn input_embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// `norm_f`, times `logit_scale` when set: scaling the hidden states instead of the
    /// logits is the same product, and keeps `logits = final_hidden · headᵀ` exact for the
    /// tied rows' output-head gradient.
    fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.norm_f.forward(hidden)?;
        match self.logit_scale {
            Some(s) => Ok((x * s)?),
            None => Ok(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-7)
    }

    #[test]
    fn alibi_slopes_for_power_of_two_heads_are_the_geometric_sequence() {
        // 8 heads, max 8: 1/2, 1/4, …, 1/256 in both spellings (ALiBi paper, §3).
        let want: Vec<f64> = (1..=8).map(|i| 0.5f64.powi(i)).collect();
        assert!(close(&alibi_slopes(8, 8.0, Spelling::Hf), &want));
        assert!(close(&alibi_slopes(8, 8.0, Spelling::MosaicGpt), &want));
    }

    #[test]
    fn alibi_slopes_for_twelve_heads_interleave_as_transformers_mpt_does() {
        // 12 heads → computed for 16 (exponents i/2, i = 1..16), then the odd entries
        // (exponents 1..8) followed by the even ones (exponents 0.5, 1.5, 2.5, 3.5).
        let mut want: Vec<f64> = (1..=8).map(|e| 2f64.powf(-(e as f64))).collect();
        want.extend([0.5, 1.5, 2.5, 3.5].map(|e: f64| 2f64.powf(-e)));
        assert!(close(&alibi_slopes(12, 8.0, Spelling::Hf), &want));
        // MosaicGPT's original formula has no power-of-two step: exponents 8i/12.
        let plain: Vec<f64> = (1..=12)
            .map(|i| 2f64.powf(-(8.0 * i as f64 / 12.0)))
            .collect();
        assert!(close(&alibi_slopes(12, 8.0, Spelling::MosaicGpt), &plain));
    }
}
