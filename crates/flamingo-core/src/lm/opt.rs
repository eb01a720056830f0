//! OPT decoder, matching HF transformers' `OPTForCausalLM` (`models/opt/modeling_opt.py`):
//! learned positions offset by 2, pre- or post-LayerNorm blocks, optional
//! `project_in`/`project_out` when `word_embed_proj_dim != hidden_size` (OPT-350M), and an
//! output head tied to the token embedding unless `tie_word_embeddings` is false.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::io::Weights;
use crate::lm::attention::scaled_dot_product;
use crate::lm::config::parse;
use crate::lm::{
    check_token_ids, AttentionContext, CausalLm, LayerKv, LmFamily, LmInfo, LmLoadOptions,
};
use crate::nn::{embedding, Activation, LayerNorm, Linear};
use crate::{Error, Result};

/// OPT's learned position table has two extra leading rows: HF's
/// `OPTLearnedPositionalEmbedding` adds this offset to every position (a fairseq legacy).
const POSITION_OFFSET: u32 = 2;

/// PyTorch's `nn.LayerNorm` default; OPT's config has no epsilon field.
const LAYER_NORM_EPS: f64 = 1e-5;

fn yes() -> bool {
    true
}

fn relu() -> String {
    "relu".to_string()
}

/// `config.json` of an OPT model, field names as HF writes them (transformers 4 and 5 agree
/// on every field read here).
#[derive(Clone, Debug, Deserialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub ffn_dim: usize,
    pub max_position_embeddings: usize,
    /// Pre-LN blocks (every OPT size but 350M).
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    /// Checkpoints converted from early metaseq releases have no final layer norm.
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Width of the token embedding when it differs from `hidden_size` (OPT-350M: 512).
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "relu")]
    pub activation_function: String,
    /// Biases on the attention projections and the MLP.
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

struct Block {
    /// `q_proj | k_proj | v_proj` stacked into one `(3D, D)` projection: one matmul per layer.
    qkv: Linear,
    out_proj: Linear,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
}

pub struct Opt {
    info: LmInfo,
    /// `(V, word_embed_proj_dim)`, also the output head when tied.
    embeddings: Tensor,
    /// `(max_position_embeddings + 2, D)`.
    positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    blocks: Vec<Block>,
    final_layer_norm: Option<LayerNorm>,
    /// Untied output head `(V, word_embed_proj_dim)`; `None` when tied to `embeddings`.
    lm_head: Option<Tensor>,
    num_heads: usize,
    head_dim: usize,
    pre_norm: bool,
    activation: Activation,
    max_positions: usize,
}

fn layer_norm(w: &Weights, name: &str, dim: usize, affine: bool) -> Result<LayerNorm> {
    if affine {
        LayerNorm::load(w, name, dim, LAYER_NORM_EPS, true)
    } else {
        // `elementwise_affine=False`: no parameters exist; a unit scale is the same thing.
        Ok(LayerNorm {
            weight: Tensor::ones(dim, w.dtype(), w.device())?,
            bias: None,
            eps: LAYER_NORM_EPS,
        })
    }
}

impl Opt {
    pub fn load(
        cfg_path: &Path,
        raw: &serde_json::Value,
        weights: &Weights,
        opts: &LmLoadOptions,
    ) -> Result<Self> {
        let cfg: OptConfig = parse(cfg_path, raw)?;
        let d = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::config(
                cfg_path,
                format!("hidden_size ({d}) must be divisible by num_attention_heads ({heads})"),
            ));
        }
        if cfg.num_hidden_layers == 0 {
            return Err(Error::config(
                cfg_path,
                "num_hidden_layers must be at least 1",
            ));
        }
        let activation = Activation::from_hf_name(&cfg.activation_function).ok_or_else(|| {
            Error::config(
                cfg_path,
                format!(
                    "unsupported activation_function \"{}\" (supported: relu, gelu, gelu_new, \
                     quick_gelu, silu)",
                    cfg.activation_function
                ),
            )
        })?;
        let proj_dim = cfg.word_embed_proj_dim.unwrap_or(d);

        let dec = weights.pp("model.decoder");
        let embeddings = opts.resize_vocab(
            dec.pp("embed_tokens")
                .get((cfg.vocab_size, proj_dim), "weight")?,
        )?;
        let vocab_size = embeddings.dim(0)?;
        let positions = dec.pp("embed_positions").get(
            (cfg.max_position_embeddings + POSITION_OFFSET as usize, d),
            "weight",
        )?;
        let (project_in, project_out) = if proj_dim != d {
            (
                Some(Linear::load(&dec, "project_in", proj_dim, d, false)?),
                Some(Linear::load(&dec, "project_out", d, proj_dim, false)?),
            )
        } else {
            (None, None)
        };

        let affine = cfg.layer_norm_elementwise_affine;
        let bias = cfg.enable_bias;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let w = dec.pp(format!("layers.{i}"));
            let attn = w.pp("self_attn");
            let q = Linear::load(&attn, "q_proj", d, d, bias)?;
            let k = Linear::load(&attn, "k_proj", d, d, bias)?;
            let v = Linear::load(&attn, "v_proj", d, d, bias)?;
            let qkv = Linear::new(
                Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
                match (&q.bias, &k.bias, &v.bias) {
                    (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[qb, kb, vb], 0)?),
                    _ => None,
                },
            );
            blocks.push(Block {
                qkv,
                out_proj: Linear::load(&attn, "out_proj", d, d, bias)?,
                self_attn_layer_norm: layer_norm(&w, "self_attn_layer_norm", d, affine)?,
                fc1: Linear::load(&w, "fc1", d, cfg.ffn_dim, bias)?,
                fc2: Linear::load(&w, "fc2", cfg.ffn_dim, d, bias)?,
                final_layer_norm: layer_norm(&w, "final_layer_norm", d, affine)?,
            });
        }
        // HF builds the decoder's final norm only for pre-LN models (modeling_opt.py,
        // `OPTDecoder.__init__`): post-LN blocks already end in a norm.
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(layer_norm(&dec, "final_layer_norm", d, affine)?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings {
            // A stored `lm_head.weight` is only an alias of the embedding here.
            None
        } else {
            Some(
                opts.resize_vocab(
                    weights
                        .pp("lm_head")
                        .get((cfg.vocab_size, proj_dim), "weight")?,
                )?,
            )
        };

        let info = LmInfo {
            family: LmFamily::Opt,
            model_type: "opt".to_string(),
            hidden_size: d,
            num_layers: cfg.num_hidden_layers,
            vocab_size,
            max_positions: Some(cfg.max_position_embeddings),
            input_embedding_key: dec.pp("embed_tokens").key("weight"),
            output_embedding_key: lm_head
                .as_ref()
                .map(|_| weights.pp("lm_head").key("weight")),
        };
        Ok(Self {
            info,
            embeddings,
            positions,
            project_in,
            project_out,
            blocks,
            final_layer_norm,
            lm_head,
            num_heads: heads,
            head_dim: d / heads,
            pre_norm: cfg.do_layer_norm_before,
            activation,
            max_positions: cfg.max_position_embeddings,
        })
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let qkv = block.qkv.forward(x)?.reshape((b, t, 3, h, hd))?;
        // Contiguous copies: the cache must not keep the whole fused qkv buffer alive.
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        // HF scales q after its projection (bias included); scaling the scores is the same.
        let mask = ctx.mask_in(q.dtype())?;
        let out = scaled_dot_product(&q, &k, &v, (hd as f64).powf(-0.5), &mask, None)?;
        let out = out.transpose(1, 2)?.reshape((b, t, d))?;
        block.out_proj.forward(&out)
    }
}

impl CausalLm for Opt {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor, ctx: &AttentionContext) -> Result<Tensor> {
        // Positions come from the padding mask (`cumsum(mask) - 1`, as HF computes them), so
        // a left-padded row starts at 0; checking the bound needs a read-back, done only
        // when the sequence is long enough to possibly exceed it.
        if ctx.past_len + ctx.seq_len > self.max_positions {
            let top = ctx.positions.max_all()?.to_scalar::<u32>()? as usize;
            if top >= self.max_positions {
                return Err(Error::InvalidInput(format!(
                    "position {top} is beyond OPT's max_position_embeddings ({}); shorten the \
                     input or the generation length",
                    self.max_positions
                )));
            }
        }
        check_token_ids(ids, self.info.vocab_size)?;
        let mut x = embedding(&self.embeddings, ids)?;
        if let Some(p) = &self.project_in {
            x = p.forward(&x)?;
        }
        let pos = (ctx.positions.to_dtype(DType::U32)? + POSITION_OFFSET as f64)?;
        let pos = embedding(&self.positions, &pos)?;
        Ok(x.broadcast_add(&pos)?)
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
                "OPT has {} layers, no layer {i}",
                self.blocks.len()
            ))
        })?;
        let x = if self.pre_norm {
            let a = block.self_attn_layer_norm.forward(hidden)?;
            (hidden + self.attention(block, &a, ctx, cache)?)?
        } else {
            let a = (hidden + self.attention(block, hidden, ctx, cache)?)?;
            block.self_attn_layer_norm.forward(&a)?
        };
        let mlp = |y: &Tensor| -> Result<Tensor> {
            block
                .fc2
                .forward(&self.activation.forward(&block.fc1.forward(y)?)?)
        };
        if self.pre_norm {
            let m = block.final_layer_norm.forward(&x)?;
            Ok((&x + mlp(&m)?)?)
        } else {
            block.final_layer_norm.forward(&(&x + mlp(&x)?)?)
        }
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.final_hidden(hidden)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        Linear::new(head.clone(), None).forward(&x)
    }

    fn input_embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// Final layer norm (if any), then `project_out` (if any): `(B, T, word_embed_proj_dim)`.
    fn project_embedding_delta(&self, delta: &Tensor) -> Result<Tensor> {
        match &self.project_in {
            Some(p) => p.forward(delta),
            None => Ok(delta.clone()),
        }
    }

    fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut x = hidden.clone();
        if let Some(n) = &self.final_layer_norm {
            x = n.forward(&x)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x)?;
        }
        Ok(x)
    }
}
