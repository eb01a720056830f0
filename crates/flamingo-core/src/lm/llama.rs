//! LLaMA decoder (HF transformers `LlamaForCausalLM`, `models/llama/modeling_llama.py`):
//! RMSNorm pre-norm blocks, grouped-query attention with rotate-half RoPE, SiLU-gated MLP.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::io::Weights;
use crate::lm::attention::scaled_dot_product;
use crate::lm::config::{parse, rope_settings};
use crate::lm::rope::{RopeScaling, Rotary};
use crate::lm::{AttentionContext, CausalLm, LayerKv, LmFamily, LmInfo, LmLoadOptions};
use crate::nn::{embedding, Activation, Linear, RmsNorm};
use crate::{Error, Result};

/// The fields of HF `LlamaConfig` (config.json) this port reads. Other fields
/// (`bos_token_id`, `pretraining_tp`, `torch_dtype`/`dtype`, …) do not change the forward
/// pass and are ignored. RoPE base and scaling are read from the raw JSON because
/// transformers 4 keeps them at the top level and transformers 5 in `rope_parameters`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// GQA key/value heads; absent means multi-head attention.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent (or null) means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
}

fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// The config after validation, in the units the forward pass uses.
#[derive(Clone, Debug)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
}

impl LlamaConfig {
    fn dims(&self, cfg_path: &Path) -> Result<Dims> {
        let heads = self.num_attention_heads;
        if heads == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return Err(Error::config(
                cfg_path,
                "hidden_size, num_attention_heads and num_hidden_layers must be positive",
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) if d > 0 => d,
            Some(_) => return Err(Error::config(cfg_path, "head_dim must be positive")),
            None => {
                if !self.hidden_size.is_multiple_of(heads) {
                    return Err(Error::config(
                        cfg_path,
                        format!(
                            "hidden_size {} is not divisible by num_attention_heads {heads} (set head_dim explicitly)",
                            self.hidden_size
                        ),
                    ));
                }
                self.hidden_size / heads
            }
        };
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Error::config(
                cfg_path,
                format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"),
            ));
        }
        Ok(Dims {
            hidden: self.hidden_size,
            heads,
            kv_heads,
            head_dim,
            intermediate: self.intermediate_size,
        })
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

pub struct Llama {
    info: LmInfo,
    dims: Dims,
    act: Activation,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied: the head is `embed_tokens`.
    lm_head: Option<Tensor>,
    rotary: Rotary,
}

impl Llama {
    pub fn load(
        cfg_path: &Path,
        raw: &serde_json::Value,
        weights: &Weights,
        opts: &LmLoadOptions,
    ) -> Result<Self> {
        let cfg: LlamaConfig = parse(cfg_path, raw)?;
        let dims = cfg.dims(cfg_path)?;
        let act = Activation::from_hf_name(&cfg.hidden_act).ok_or_else(|| {
            Error::config(
                cfg_path,
                format!("unsupported hidden_act \"{}\"", cfg.hidden_act),
            )
        })?;
        let (theta, fraction) = rope_settings(raw);
        let scaling = RopeScaling::from_config(cfg_path, raw)?;
        let rotary = Rotary::new(
            cfg_path,
            dims.head_dim,
            fraction,
            theta,
            &scaling,
            weights.device(),
        )?;

        let (d, hd) = (dims.hidden, dims.head_dim);
        let model = weights.pp("model");
        let embed_tokens = model.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let w = model.pp(format!("layers.{i}"));
            let a = w.pp("self_attn");
            let ab = cfg.attention_bias;
            let m = w.pp("mlp");
            let mb = cfg.mlp_bias;
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(&w, "input_layernorm", d, cfg.rms_norm_eps)?,
                self_attn: Attention {
                    q_proj: Linear::load(&a, "q_proj", d, dims.heads * hd, ab)?,
                    k_proj: Linear::load(&a, "k_proj", d, dims.kv_heads * hd, ab)?,
                    v_proj: Linear::load(&a, "v_proj", d, dims.kv_heads * hd, ab)?,
                    o_proj: Linear::load(&a, "o_proj", dims.heads * hd, d, ab)?,
                },
                post_attention_layernorm: RmsNorm::load(
                    &w,
                    "post_attention_layernorm",
                    d,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate_proj: Linear::load(&m, "gate_proj", d, dims.intermediate, mb)?,
                    up_proj: Linear::load(&m, "up_proj", d, dims.intermediate, mb)?,
                    down_proj: Linear::load(&m, "down_proj", dims.intermediate, d, mb)?,
                },
            });
        }
        let norm = RmsNorm::load(&model, "norm", d, cfg.rms_norm_eps)?;
        // Tied checkpoints may still carry an `lm_head.weight` alias; it is ignored.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(weights.get((cfg.vocab_size, d), "lm_head.weight")?)
        };

        let (embed_tokens, lm_head) = match opts.vocab_size {
            Some(n) => (
                resize_vocab(&embed_tokens, n)?,
                lm_head.map(|h| resize_vocab(&h, n)).transpose()?,
            ),
            None => (embed_tokens, lm_head),
        };
        let info = LmInfo {
            family: LmFamily::Llama,
            model_type: "llama".to_string(),
            hidden_size: d,
            num_layers: cfg.num_hidden_layers,
            vocab_size: embed_tokens.dim(0)?,
            // RoPE has no position table; `max_position_embeddings` is only the trained length.
            max_positions: None,
            input_embedding_key: "model.embed_tokens.weight".to_string(),
            output_embedding_key: lm_head.as_ref().map(|_| "lm_head.weight".to_string()),
        };
        Ok(Self {
            info,
            dims,
            act,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
        })
    }

    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let Dims {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.dims;
        let (b, t, _) = x.dims3()?;
        // Projections come out (B, T, heads·hd); rotate in that layout, then move heads forward.
        let q = attn.q_proj.forward(x)?.reshape((b, t, heads, head_dim))?;
        let k = attn
            .k_proj
            .forward(x)?
            .reshape((b, t, kv_heads, head_dim))?;
        let v = attn
            .v_proj
            .forward(x)?
            .reshape((b, t, kv_heads, head_dim))?;
        let (cos, sin) = self.rotary.cos_sin(&ctx.positions, x.dtype())?;
        let q = self.rotary.apply(&q, &cos, &sin)?.transpose(1, 2)?;
        let k = self.rotary.apply(&k, &cos, &sin)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        // The cache holds the kv_heads un-repeated (GQA saves that memory).
        // Cached K/V are stored contiguous: the cache concatenates and reorders (beam search,
        // `index_select`) them. A single decode step is already contiguous, so no copy then.
        let (k, v) = match cache {
            Some(c) => c.append(&k.contiguous()?, &v.contiguous()?)?,
            None => (k, v),
        };
        let out = grouped_attention(&q, &k, &v, &ctx.mask, head_dim)?;
        let out = out.transpose(1, 2)?.reshape((b, t, heads * head_dim))?;
        attn.o_proj.forward(&out)
    }
}

/// Attention for `q` `(B, H, T, hd)` over `k`, `v` `(B, H_kv, S, hd)`, `H = H_kv · n_rep`,
/// with the `(B, 1, T, S)` additive mask. Query head `h` reads key/value head `h / n_rep`,
/// as HF's `repeat_kv` arranges; rather than copying K and V `n_rep` times, the `n_rep`
/// query heads of a group are stacked along the query axis, `(B, H_kv, n_rep·T, hd)`, and the
/// (smaller) mask is repeated instead. Returns `(B, H, T, hd)`.
pub(crate) fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    head_dim: usize,
) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let n_rep = h / kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mask = if mask.dtype() != q.dtype() {
        mask.to_dtype(q.dtype())?
    } else {
        mask.clone()
    };
    if n_rep == 1 {
        return scaled_dot_product(q, k, v, scale, &mask, None);
    }
    let s = mask.dim(3)?;
    let q = q.contiguous()?.reshape((b, kv_heads, n_rep * t, hd))?;
    let mask = mask
        .unsqueeze(2)?
        .broadcast_as((b, 1, n_rep, t, s))?
        .reshape((b, 1, n_rep * t, s))?;
    let out = scaled_dot_product(&q, k, v, scale, &mask, None)?;
    Ok(out.reshape((b, h, t, hd))?)
}

/// Resizes a `(V, D)` vocabulary matrix to `rows` rows, as transformers'
/// `resize_token_embeddings` does: shrinking keeps the first rows, growing appends rows equal
/// to the mean of the existing ones (HF samples around that mean with a 1e-9-scaled
/// covariance; the mean itself is the deterministic centre of that distribution).
pub(crate) fn resize_vocab(table: &Tensor, rows: usize) -> Result<Tensor> {
    let (old, d) = table.dims2()?;
    if rows == 0 {
        return Err(Error::InvalidInput(
            "vocab_size must be at least 1".to_string(),
        ));
    }
    if rows <= old {
        return Ok(table.narrow(0, 0, rows)?);
    }
    let mean = table
        .to_dtype(DType::F32)?
        .mean_keepdim(0)?
        .to_dtype(table.dtype())?;
    let extra = mean.broadcast_as((rows - old, d))?.contiguous()?;
    Ok(Tensor::cat(&[table, &extra], 0)?)
}

/// `table[ids]`, with an out-of-range id reported as bad input rather than an engine error.
pub(crate) fn lookup_tokens(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let vocab = table.dim(0)?;
    if ids.elem_count() > 0 {
        let max = ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<u32>()?;
        if max as usize >= vocab {
            return Err(Error::InvalidInput(format!(
                "token id {max} is out of range for a vocabulary of {vocab} rows"
            )));
        }
    }
    embedding(table, ids)
}

fn layer_out_of_range(i: usize, n: usize) -> Error {
    Error::InvalidInput(format!(
        "decoder layer {i} requested, the LM has {n} layers"
    ))
}

impl CausalLm for Llama {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor, _ctx: &AttentionContext) -> Result<Tensor> {
        lookup_tokens(&self.embed_tokens, ids)
    }

    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let l = self
            .layers
            .get(i)
            .ok_or_else(|| layer_out_of_range(i, self.layers.len()))?;
        let h = l.input_layernorm.forward(hidden)?;
        let a = self.attention(&l.self_attn, &h, ctx, cache)?;
        let hidden = (hidden + a)?;
        let h = l.post_attention_layernorm.forward(&hidden)?;
        let gate = self.act.forward(&l.mlp.gate_proj.forward(&h)?)?;
        let m = l
            .mlp
            .down_proj
            .forward(&(gate * l.mlp.up_proj.forward(&h)?)?)?;
        Ok((hidden + m)?)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.final_hidden(hidden)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        Linear::new(w.clone(), None).forward(&h)
    }

    fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.norm.forward(hidden)
    }

    fn input_embeddings(&self) -> &Tensor {
        &self.embed_tokens
    }
}
