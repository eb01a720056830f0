//! GPT-NeoX decoder (HF transformers `GPTNeoXForCausalLM`, `models/gpt_neox/modeling_gpt_neox.py`;
//! Pythia, RedPajama-INCITE): LayerNorm pre-norm blocks, a fused per-head `[q|k|v]`
//! projection, partial rotate-half RoPE, parallel or sequential residual, untied `embed_out`.

use std::path::Path;

use candle_core::Tensor;

use crate::io::Weights;
use crate::lm::config::{parse, rope_settings};
use crate::lm::llama::{grouped_attention, lookup_tokens, resize_vocab};
use crate::lm::rope::{RopeScaling, Rotary};
use crate::lm::{AttentionContext, CausalLm, LayerKv, LmFamily, LmInfo, LmLoadOptions};
use crate::nn::{Activation, LayerNorm, Linear};
use crate::{Error, Result};

/// The fields of HF `GPTNeoXConfig` (config.json) this port reads. The rotary base and width
/// (`rotary_emb_base`/`rope_theta`, `rotary_pct`/`partial_rotary_factor`, top level in
/// transformers 4, inside `rope_parameters` in transformers 5) are read from the raw JSON by
/// `lm::config::rope_settings`. Buffers a checkpoint may carry (`attention.bias`,
/// `attention.masked_bias`, `rotary_emb.inv_freq`) are never read.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// `x + attn(ln1 x) + mlp(ln2 x)` when true (Pythia), sequential when false
    /// (RedPajama-INCITE-3B).
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    /// Biases on `query_key_value` and `dense` (added in transformers 4.4x; always true before).
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
}

fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_max_positions() -> usize {
    2048
}

struct Attention {
    /// `(3·D, D)`; its output, viewed `(B, T, H, 3·hd)`, is `[q | k | v]` per head.
    query_key_value: Linear,
    dense: Linear,
}

struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

struct DecoderLayer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    attention: Attention,
    mlp: Mlp,
}

pub struct GptNeox {
    info: LmInfo,
    heads: usize,
    head_dim: usize,
    parallel_residual: bool,
    act: Activation,
    embed_in: Tensor,
    layers: Vec<DecoderLayer>,
    final_layer_norm: LayerNorm,
    /// `None` when tied: the head is `embed_in`.
    embed_out: Option<Tensor>,
    rotary: Rotary,
}

impl GptNeox {
    pub fn load(
        cfg_path: &Path,
        raw: &serde_json::Value,
        weights: &Weights,
        opts: &LmLoadOptions,
    ) -> Result<Self> {
        let cfg: GptNeoxConfig = parse(cfg_path, raw)?;
        let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        if heads == 0 || d == 0 || cfg.num_hidden_layers == 0 {
            return Err(Error::config(
                cfg_path,
                "hidden_size, num_attention_heads and num_hidden_layers must be positive",
            ));
        }
        if !d.is_multiple_of(heads) {
            return Err(Error::config(
                cfg_path,
                format!("hidden_size {d} is not divisible by num_attention_heads {heads}"),
            ));
        }
        let head_dim = d / heads;
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
            head_dim,
            fraction,
            theta,
            &scaling,
            weights.device(),
        )?;

        let model = weights.pp("gpt_neox");
        let embed_in = model.get((cfg.vocab_size, d), "embed_in.weight")?;
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let w = model.pp(format!("layers.{i}"));
            let a = w.pp("attention");
            let m = w.pp("mlp");
            let ab = cfg.attention_bias;
            let inter = cfg.intermediate_size;
            layers.push(DecoderLayer {
                input_layernorm: LayerNorm::load(&w, "input_layernorm", d, eps, true)?,
                post_attention_layernorm: LayerNorm::load(
                    &w,
                    "post_attention_layernorm",
                    d,
                    eps,
                    true,
                )?,
                attention: Attention {
                    query_key_value: Linear::load(&a, "query_key_value", d, 3 * d, ab)?,
                    dense: Linear::load(&a, "dense", d, d, ab)?,
                },
                mlp: Mlp {
                    dense_h_to_4h: Linear::load(&m, "dense_h_to_4h", d, inter, true)?,
                    dense_4h_to_h: Linear::load(&m, "dense_4h_to_h", inter, d, true)?,
                },
            });
        }
        let final_layer_norm = LayerNorm::load(&model, "final_layer_norm", d, eps, true)?;
        // The head is `embed_out` in every released file; transformers 5 calls the module
        // `lm_head`, so accept that spelling too.
        let (embed_out, head_key) = if cfg.tie_word_embeddings {
            (None, None)
        } else {
            let key = if !weights.contains("embed_out.weight") && weights.contains("lm_head.weight")
            {
                "lm_head.weight"
            } else {
                "embed_out.weight"
            };
            (
                Some(weights.get((cfg.vocab_size, d), key)?),
                Some(key.to_string()),
            )
        };

        let (embed_in, embed_out) = match opts.vocab_size {
            Some(n) => (
                resize_vocab(&embed_in, n)?,
                embed_out.map(|h| resize_vocab(&h, n)).transpose()?,
            ),
            None => (embed_in, embed_out),
        };
        let info = LmInfo {
            family: LmFamily::GptNeox,
            model_type: "gpt_neox".to_string(),
            hidden_size: d,
            num_layers: cfg.num_hidden_layers,
            vocab_size: embed_in.dim(0)?,
            // RoPE has no position table; `max_position_embeddings` is only the trained length.
            max_positions: None,
            input_embedding_key: "gpt_neox.embed_in.weight".to_string(),
            output_embedding_key: head_key,
        };
        Ok(Self {
            info,
            heads,
            head_dim,
            parallel_residual: cfg.use_parallel_residual,
            act,
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
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
        let (b, t, _) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        // The fused projection is laid out per head — [q_h | k_h | v_h] for each head h — not
        // as [all q | all k | all v]: view (B, T, H, 3·hd) before splitting.
        let qkv = attn
            .query_key_value
            .forward(x)?
            .reshape((b, t, h, 3 * hd))?;
        let q = qkv.narrow(3, 0, hd)?;
        let k = qkv.narrow(3, hd, hd)?;
        let v = qkv.narrow(3, 2 * hd, hd)?;
        let (cos, sin) = self.rotary.cos_sin(&ctx.positions, x.dtype())?;
        let q = self.rotary.apply(&q, &cos, &sin)?.transpose(1, 2)?;
        let k = self.rotary.apply(&k, &cos, &sin)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        // Cached K/V are stored contiguous: the cache concatenates and reorders (beam search,
        // `index_select`) them. A single decode step is already contiguous, so no copy then.
        let (k, v) = match cache {
            Some(c) => c.append(&k.contiguous()?, &v.contiguous()?)?,
            None => (k, v),
        };
        let out = grouped_attention(&q, &k, &v, &ctx.mask, hd)?;
        let out = out.transpose(1, 2)?.reshape((b, t, h * hd))?;
        attn.dense.forward(&out)
    }

    fn mlp(&self, mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&mlp.dense_h_to_4h.forward(x)?)?;
        mlp.dense_4h_to_h.forward(&h)
    }
}

impl CausalLm for GptNeox {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor, _ctx: &AttentionContext) -> Result<Tensor> {
        lookup_tokens(&self.embed_in, ids)
    }

    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let l = self.layers.get(i).ok_or_else(|| {
            Error::InvalidInput(format!(
                "decoder layer {i} requested, the LM has {} layers",
                self.layers.len()
            ))
        })?;
        let attn = self.attention(
            &l.attention,
            &l.input_layernorm.forward(hidden)?,
            ctx,
            cache,
        )?;
        if self.parallel_residual {
            let mlp = self.mlp(&l.mlp, &l.post_attention_layernorm.forward(hidden)?)?;
            Ok(((hidden + attn)? + mlp)?)
        } else {
            let hidden = (hidden + attn)?;
            let mlp = self.mlp(&l.mlp, &l.post_attention_layernorm.forward(&hidden)?)?;
            Ok((hidden + mlp)?)
        }
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.final_hidden(hidden)?;
        let w = self.embed_out.as_ref().unwrap_or(&self.embed_in);
        Linear::new(w.clone(), None).forward(&h)
    }

    fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(hidden)
    }

    fn input_embeddings(&self) -> &Tensor {
        &self.embed_in
    }
}
