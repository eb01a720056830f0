//! GPT-J decoder (HF transformers `GPTJForCausalLM`, `models/gptj/modeling_gptj.py`;
//! EleutherAI GPT-J-6B, OpenFlamingo's `gptj` decoder-layers entry `transformer.h`): one
//! LayerNorm feeding attention and MLP in parallel, interleaved ("rotate every two") rotary
//! on the first `rotary_dim` channels of each head, untied `lm_head` with a bias.

use std::path::Path;

use candle_core::{DType, Tensor, D};

use crate::io::Weights;
use crate::lm::config::parse;
use crate::lm::{
    check_token_ids, AttentionContext, CausalLm, LayerKv, LmFamily, LmInfo, LmLoadOptions,
};
use crate::nn::{embedding, softmax_last_dim, Activation, LayerNorm, Linear};
use crate::{Error, Result};

/// The fields of HF `GPTJConfig` (config.json) this port reads, under their GPT-2 style
/// names with the `attribute_map` spellings (`hidden_size`, …) as aliases. Defaults are
/// `GPTJConfig`'s. Buffers a checkpoint may carry (`attn.bias`, `attn.masked_bias`) are never
/// read.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct GptJConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(alias = "max_position_embeddings", default = "default_n_positions")]
    pub n_positions: usize,
    /// Channels of each head that rotate; `null` means the whole head (HF then builds its
    /// sin/cos table over `n_embd`, which only broadcasts when there is one head).
    #[serde(default = "default_rotary_dim")]
    pub rotary_dim: Option<usize>,
    /// MLP width; `null` means `4 · n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_vocab_size() -> usize {
    50400
}
fn default_n_positions() -> usize {
    2048
}
fn default_rotary_dim() -> Option<usize> {
    Some(64)
}
fn default_activation() -> String {
    "gelu_new".to_string()
}
fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

/// GPT-J's rotary base. The reference hard-codes it (`create_sinusoidal_positions`); no
/// GPT-J config field changes it.
const ROPE_BASE: f32 = 10_000.0;

struct Block {
    ln_1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    fc_in: Linear,
    fc_out: Linear,
}

pub struct GptJ {
    info: LmInfo,
    heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    /// `(rotary_dim / 2,)` f32: the frequency of each rotated channel pair.
    inv_freq: Tensor,
    act: Activation,
    wte: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `lm_head.weight`, `None` when tied to `wte`.
    lm_head: Option<Tensor>,
    lm_head_bias: Tensor,
}

impl GptJ {
    pub fn load(
        cfg_path: &Path,
        raw: &serde_json::Value,
        weights: &Weights,
        opts: &LmLoadOptions,
    ) -> Result<Self> {
        let cfg: GptJConfig = parse(cfg_path, raw)?;
        let (d, heads) = (cfg.n_embd, cfg.n_head);
        if d == 0 || heads == 0 || cfg.n_layer == 0 || cfg.vocab_size == 0 {
            return Err(Error::config(
                cfg_path,
                "n_embd, n_head, n_layer and vocab_size must be positive",
            ));
        }
        if !d.is_multiple_of(heads) {
            return Err(Error::config(
                cfg_path,
                format!("n_embd {d} is not divisible by n_head {heads}"),
            ));
        }
        let head_dim = d / heads;
        let rotary_dim = cfg.rotary_dim.unwrap_or(head_dim);
        if rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
            return Err(Error::config(
                cfg_path,
                format!(
                    "rotary_dim {rotary_dim} must be even and at most the head size {head_dim} (n_embd / n_head)"
                ),
            ));
        }
        let act = Activation::from_hf_name(&cfg.activation_function).ok_or_else(|| {
            Error::config(
                cfg_path,
                format!(
                    "unsupported activation_function \"{}\"",
                    cfg.activation_function
                ),
            )
        })?;
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let eps = cfg.layer_norm_epsilon;

        let tr = weights.pp("transformer");
        let wte = tr.get((cfg.vocab_size, d), "wte.weight")?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let w = tr.pp(format!("h.{i}"));
            let a = w.pp("attn");
            let m = w.pp("mlp");
            blocks.push(Block {
                ln_1: LayerNorm::load(&w, "ln_1", d, eps, true)?,
                q_proj: Linear::load(&a, "q_proj", d, d, false)?,
                k_proj: Linear::load(&a, "k_proj", d, d, false)?,
                v_proj: Linear::load(&a, "v_proj", d, d, false)?,
                out_proj: Linear::load(&a, "out_proj", d, d, false)?,
                fc_in: Linear::load(&m, "fc_in", d, inner, true)?,
                fc_out: Linear::load(&m, "fc_out", inner, d, true)?,
            });
        }
        let ln_f = LayerNorm::load(&tr, "ln_f", d, eps, true)?;
        // Tying shares only the matrix: `lm_head.bias` is its own parameter either way.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(weights.get((cfg.vocab_size, d), "lm_head.weight")?)
        };
        let lm_head_bias = weights.get(cfg.vocab_size, "lm_head.bias")?;

        // `resize_token_embeddings` resizes the head's bias with its matrix (new entries: the
        // mean bias), so the bias goes through the same row resize as a one-column table.
        let wte = opts.resize_vocab(wte)?;
        let lm_head = lm_head.map(|h| opts.resize_vocab(h)).transpose()?;
        let lm_head_bias = opts.resize_vocab(lm_head_bias.unsqueeze(1)?)?.squeeze(1)?;

        // `1 / base^(2i / rotary_dim)` in f32, as the reference computes its sin/cos table.
        let inv_freq: Vec<f32> = (0..rotary_dim / 2)
            .map(|i| 1.0 / ROPE_BASE.powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, rotary_dim / 2, weights.device())?;

        let info = LmInfo {
            family: LmFamily::GptJ,
            model_type: "gptj".to_string(),
            hidden_size: d,
            num_layers: cfg.n_layer,
            vocab_size: wte.dim(0)?,
            // The reference gathers sin/cos from a table of `n_positions` rows: a later
            // position is an index error there, so it is the model's limit here too.
            max_positions: Some(cfg.n_positions),
            input_embedding_key: "transformer.wte.weight".to_string(),
            output_embedding_key: lm_head.as_ref().map(|_| "lm_head.weight".to_string()),
        };
        Ok(Self {
            info,
            heads,
            head_dim,
            rotary_dim,
            inv_freq,
            act,
            wte,
            blocks,
            ln_f,
            lm_head,
            lm_head_bias,
        })
    }

    /// `(cos, sin)`, each `(B, T, 1, rotary_dim / 2)`, for the positions of `ctx`.
    fn cos_sin(&self, ctx: &AttentionContext, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = ctx.positions.dims2()?;
        let pos = ctx.positions.to_dtype(DType::F32)?.reshape((b, t, 1, 1))?;
        let angles = pos.broadcast_mul(&self.inv_freq.reshape((1, 1, 1, ()))?)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotates the first `rotary_dim` channels of `x` `(B, T, H, hd)` pairwise: channels
    /// `(2i, 2i+1)` form one pair (GPT-J's `rotate_every_two`), unlike the rotate-half layout
    /// of LLaMA and GPT-NeoX where channel `i` pairs with `i + rotary_dim/2`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, t, h, hd) = x.dims4()?;
        let rd = self.rotary_dim;
        let pairs = x.narrow(3, 0, rd)?.reshape((b, t, h, rd / 2, 2))?;
        let even = pairs.narrow(4, 0, 1)?.squeeze(4)?;
        let odd = pairs.narrow(4, 1, 1)?.squeeze(4)?;
        let new_even = (even.broadcast_mul(cos)? - odd.broadcast_mul(sin)?)?;
        let new_odd = (odd.broadcast_mul(cos)? + even.broadcast_mul(sin)?)?;
        let rotated = Tensor::stack(&[new_even, new_odd], D::Minus1)?.reshape((b, t, h, rd))?;
        if rd == hd {
            Ok(rotated)
        } else {
            Ok(Tensor::cat(&[rotated, x.narrow(3, rd, hd - rd)?], 3)?)
        }
    }

    fn attention(
        &self,
        blk: &Block,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let q = blk.q_proj.forward(x)?.reshape((b, t, h, hd))?;
        let k = blk.k_proj.forward(x)?.reshape((b, t, h, hd))?;
        let v = blk.v_proj.forward(x)?.reshape((b, t, h, hd))?;
        let (cos, sin) = self.cos_sin(ctx, x.dtype())?;
        let q = self.rotate(&q, &cos, &sin)?.transpose(1, 2)?;
        let k = self.rotate(&k, &cos, &sin)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k.contiguous()?, &v.contiguous()?)?,
            None => (k, v),
        };
        // The reference computes scores and softmax in f32 whatever the weights' dtype
        // ("to avoid overflow"), and casts the probabilities back to the values' dtype.
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?;
        let scores = (q.matmul(&kt)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(&ctx.mask.to_dtype(DType::F32)?)?;
        let probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v.contiguous()?)?;
        let out = out.transpose(1, 2)?.reshape((b, t, h * hd))?;
        blk.out_proj.forward(&out)
    }
}

impl CausalLm for GptJ {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor, _ctx: &AttentionContext) -> Result<Tensor> {
        check_token_ids(ids, self.wte.dim(0)?)?;
        embedding(&self.wte, ids)
    }

    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let blk = self.blocks.get(i).ok_or_else(|| {
            Error::InvalidInput(format!(
                "decoder layer {i} requested, the LM has {} layers",
                self.blocks.len()
            ))
        })?;
        // One LayerNorm feeds both branches, which run in parallel off the same input.
        let x = blk.ln_1.forward(hidden)?;
        let attn = self.attention(blk, &x, ctx, cache)?;
        let mlp = blk
            .fc_out
            .forward(&self.act.forward(&blk.fc_in.forward(&x)?)?)?;
        Ok(((attn + mlp)? + hidden)?)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.final_hidden(hidden)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.wte);
        Linear::new(w.clone(), Some(self.lm_head_bias.clone())).forward(&h)
    }

    fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.ln_f.forward(hidden)
    }

    fn input_embeddings(&self) -> &Tensor {
        &self.wte
    }
}
