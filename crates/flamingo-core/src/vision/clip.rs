//! CLIP ViT vision tower (HF `CLIPVisionModel` / open_clip `VisionTransformer`), returning the
//! patch tokens OpenFlamingo feeds its Perceiver resampler (spec §5.1, §5.2).
//!
//! Both weight layouts load into the same structure: HF's separate `q_proj`/`k_proj`/`v_proj`
//! are fused into one `[3D, D]` projection at load time, which is exactly open_clip's
//! `in_proj_weight`, so one matmul produces q, k and v.

use std::path::Path;

use candle_core::Tensor;

use crate::io::Weights;
use crate::nn::{softmax_last_dim, Activation, LayerNorm, Linear};
use crate::{Error, Result};

// HF's `CLIPVisionConfig` defaults: newer transformers only write fields that differ from
// them (and a `CLIPModel`'s nested `vision_config` may be abridged), so a missing field means
// the HF default, exactly as `CLIPVisionConfig.from_dict` reads it.
fn default_hidden_size() -> usize {
    768
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}
fn default_num_channels() -> usize {
    3
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

/// The vision half of an HF CLIP `config.json` (field names as HF writes them).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// From an HF config.json value: a `CLIPVisionModel` config (fields at top level) or a
    /// `CLIPModel` config (fields under "vision_config"). `path` only for errors.
    pub fn from_hf_json(path: &Path, raw: &serde_json::Value) -> Result<Self> {
        // Old transformers saved a `CLIPModel` config with both `vision_config` and a
        // `vision_config_dict` copy; prefer the former as HF does.
        let nested = ["vision_config", "vision_config_dict"]
            .iter()
            .find_map(|k| raw.get(*k).filter(|v| v.is_object()));
        let section = match nested {
            Some(v) => v,
            None => {
                if raw.get("model_type").and_then(|v| v.as_str()) == Some("clip") {
                    return Err(Error::config(
                        path,
                        "a CLIPModel config (model_type \"clip\") needs a \"vision_config\" object",
                    ));
                }
                raw
            }
        };
        let cfg: Self = crate::lm::config::parse(path, section)?;
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    /// The OpenAI ViT-L/14 at 224 (1024 wide, 24 layers, 16 heads, MLP 4096, patch 14,
    /// QuickGELU): OpenFlamingo's `ViT-L-14` / `openai` tower.
    pub fn vit_l_14() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            num_channels: 3,
            hidden_act: "quick_gelu".to_string(),
            layer_norm_eps: 1e-5,
        }
    }

    fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.patch_size == 0 {
            return Err("hidden_size, num_attention_heads and patch_size must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if Activation::from_hf_name(&self.hidden_act).is_none() {
            return Err(format!(
                "hidden_act \"{}\" is not supported (expected quick_gelu, gelu, gelu_new, silu or relu)",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

/// Options of the vision tower that change what it computes.
#[derive(Clone, Debug, Default)]
pub struct VisionOptions {
    /// Apply the post-layernorm to every token before dropping CLS (open_clip ≥ 2.23).
    /// Off by default: the released OpenFlamingo checkpoints were trained on pre-LN tokens.
    pub apply_post_layernorm: bool,
}

/// Which key naming a weights file uses, and under which prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// HF `CLIPVisionModel` / `CLIPModel` names (`embeddings.patch_embedding`, `encoder.layers`, …).
    Hf,
    /// open_clip `VisionTransformer` names (`conv1`, `transformer.resblocks`, …).
    OpenClip,
}

/// Finds the layout and prefix of the vision weights under `w`.
fn detect_layout(w: &Weights) -> Result<(Layout, Weights)> {
    // Flamingo state dicts keep the tower under `vision_encoder.` (and v1 under
    // `vision_encoder.visual.`), so those prefixes are accepted too.
    const HF: [&str; 3] = ["vision_model", "", "vision_encoder.vision_model"];
    const OPEN_CLIP: [&str; 4] = ["visual", "", "vision_encoder", "vision_encoder.visual"];
    for p in HF {
        let v = w.pp(p);
        if v.contains("embeddings.patch_embedding.weight") {
            return Ok((Layout::Hf, v));
        }
    }
    for p in OPEN_CLIP {
        let v = w.pp(p);
        if v.contains("conv1.weight") {
            return Ok((Layout::OpenClip, v));
        }
    }
    let mut keys = w.source().keys();
    keys.sort();
    keys.truncate(5);
    Err(Error::Weights(format!(
        "{} holds no CLIP vision tower under {:?}: expected `vision_model.embeddings.patch_embedding.weight` \
         (HF, with or without the `vision_model.` prefix) or `conv1.weight` (open_clip, with or without `visual.`); \
         first keys found: {keys:?}",
        w.source().describe(),
        if w.prefix().is_empty() { "<top level>" } else { w.prefix() },
    )))
}

/// One pre-LN transformer block: `x += attn(ln1(x)); x += mlp(ln2(x))`.
struct EncoderLayer {
    ln1: LayerNorm,
    /// Fused `[Wq; Wk; Wv]`, `[3D, D]`, with bias.
    qkv: Linear,
    out_proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load_hf(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let a = w.pp("self_attn");
        let q = Linear::load(&a, "q_proj", d, d, true)?;
        let k = Linear::load(&a, "k_proj", d, d, true)?;
        let v = Linear::load(&a, "v_proj", d, d, true)?;
        let bias = |l: &Linear| -> Result<Tensor> {
            l.bias
                .clone()
                .ok_or_else(|| Error::Weights("CLIP attention projection without bias".into()))
        };
        let qkv = Linear::new(
            Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
            Some(Tensor::cat(&[bias(&q)?, bias(&k)?, bias(&v)?], 0)?),
        );
        Ok(Self {
            ln1: LayerNorm::load(w, "layer_norm1", d, eps, true)?,
            qkv,
            out_proj: Linear::load(&a, "out_proj", d, d, true)?,
            ln2: LayerNorm::load(w, "layer_norm2", d, eps, true)?,
            fc1: Linear::load(w, "mlp.fc1", d, cfg.intermediate_size, true)?,
            fc2: Linear::load(w, "mlp.fc2", cfg.intermediate_size, d, true)?,
        })
    }

    fn load_open_clip(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let a = w.pp("attn");
        // nn.MultiheadAttention keeps q, k, v stacked in that order: already our fused form.
        let qkv = Linear::new(
            a.get((3 * d, d), "in_proj_weight")?,
            Some(a.get(3 * d, "in_proj_bias")?),
        );
        Ok(Self {
            ln1: LayerNorm::load(w, "ln_1", d, eps, true)?,
            qkv,
            out_proj: Linear::load(&a, "out_proj", d, d, true)?,
            ln2: LayerNorm::load(w, "ln_2", d, eps, true)?,
            fc1: Linear::load(w, "mlp.c_fc", d, cfg.intermediate_size, true)?,
            fc2: Linear::load(w, "mlp.c_proj", cfg.intermediate_size, d, true)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let (n, s, d) = x.dims3()?;
        let hd = d / heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)?)?;
        // (N, S, 3, H, hd) → (3, N, H, S, hd): one copy gives all three head-major tensors.
        let qkv = qkv
            .reshape((n, s, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (qkv.get(0)? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let att = softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, s, d))?;
        let x = (x + self.out_proj.forward(&o)?)?;
        let h = act.forward(&self.fc1.forward(&self.ln2.forward(&x)?)?)?;
        Ok((x + self.fc2.forward(&h)?)?)
    }
}

/// The CLIP ViT image encoder, producing OpenFlamingo's patch tokens.
pub struct ClipVision {
    cfg: ClipVisionConfig,
    /// Patch-embedding conv kernel flattened to `[D, C·p·p]`: with stride == kernel the
    /// convolution is one matmul over non-overlapping patches.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    ln_pre: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: Option<LayerNorm>,
    act: Activation,
}

impl ClipVision {
    /// `w` is rooted at the weights file's top level. Detects the layout from the keys: HF
    /// names with or without the `vision_model.` prefix (a `CLIPModel`'s text-tower keys are
    /// ignored), or open_clip names (`visual.` or no prefix). Spec §5.2 has the mapping.
    pub fn load(cfg: &ClipVisionConfig, w: &Weights, opts: &VisionOptions) -> Result<Self> {
        cfg.validate()
            .map_err(|m| Error::config("CLIP vision config", m))?;
        let act = Activation::from_hf_name(&cfg.hidden_act).ok_or_else(|| {
            Error::config(
                "CLIP vision config",
                format!("unsupported hidden_act {}", cfg.hidden_act),
            )
        })?;
        let (layout, w) = detect_layout(w)?;
        let d = cfg.hidden_size;
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let tokens = cfg.grid() * cfg.grid() + 1;
        let eps = cfg.layer_norm_eps;
        let (patch, class_embedding, position_embedding, ln_pre) = match layout {
            Layout::Hf => (
                w.get((d, c, p, p), "embeddings.patch_embedding.weight")?,
                w.get(d, "embeddings.class_embedding")?,
                w.get((tokens, d), "embeddings.position_embedding.weight")?,
                // "layrnorm" is HF's spelling.
                LayerNorm::load(&w, "pre_layrnorm", d, eps, true)?,
            ),
            Layout::OpenClip => (
                w.get((d, c, p, p), "conv1.weight")?,
                w.get(d, "class_embedding")?,
                w.get((tokens, d), "positional_embedding")?,
                LayerNorm::load(&w, "ln_pre", d, eps, true)?,
            ),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| match layout {
                Layout::Hf => EncoderLayer::load_hf(&w.pp(format!("encoder.layers.{i}")), cfg),
                Layout::OpenClip => {
                    EncoderLayer::load_open_clip(&w.pp(format!("transformer.resblocks.{i}")), cfg)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = if opts.apply_post_layernorm {
            let name = match layout {
                Layout::Hf => "post_layernorm",
                Layout::OpenClip => "ln_post",
            };
            Some(LayerNorm::load(&w, name, d, eps, true)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight: patch.reshape((d, c * p * p))?,
            class_embedding,
            position_embedding,
            ln_pre,
            layers,
            post_layernorm,
            act,
        })
    }

    /// pixels (N, C, H, W) → patch tokens (N, num_patches, hidden): the LAST encoder block's
    /// output without post-layernorm, CLS dropped — what the released checkpoints were
    /// trained on (spec §5.1). With `apply_post_layernorm`, post-LN is applied to every token
    /// first (open_clip ≥ 2.23).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (c, size, p, d) = (
            cfg.num_channels,
            cfg.image_size,
            cfg.patch_size,
            cfg.hidden_size,
        );
        let dims = pixels.dims();
        if dims.len() != 4 || dims[1] != c || dims[2] != size || dims[3] != size {
            return Err(Error::InvalidInput(format!(
                "the vision tower takes pixels of shape (N, {c}, {size}, {size}), got {dims:?}; \
                 resize and center-crop images with the CLIP preprocessing first"
            )));
        }
        let n = dims[0];
        let g = cfg.grid();
        let pixels = pixels.to_dtype(self.patch_weight.dtype())?;
        // Non-overlapping p×p patches, each flattened in the conv kernel's (c, kh, kw) order.
        let patches = pixels
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, c * p * p))?;
        let patches = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((n, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((n, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let mut x = self.ln_pre.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, cfg.num_attention_heads, self.act)?;
        }
        // LayerNorm acts per token, so normalising after dropping CLS equals open_clip's
        // "ln_post on all tokens, then split" and skips one token's work.
        let tokens = x.narrow(1, 1, g * g)?;
        match &self.post_layernorm {
            Some(ln) => ln.forward(&tokens),
            None => Ok(tokens.contiguous()?),
        }
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Patch tokens per image: `(image_size / patch_size)²` (256 for ViT-L/14 at 224).
    pub fn num_patches(&self) -> usize {
        self.cfg.grid() * self.cfg.grid()
    }

    /// Width of the tokens (`hidden_size`).
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_model_config_reads_the_nested_vision_config_and_fills_hf_defaults() {
        let raw = serde_json::json!({
            "model_type": "clip",
            "text_config": {"hidden_size": 768},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                               "num_hidden_layers": 24, "num_attention_heads": 16,
                               "patch_size": 14}
        });
        let cfg = ClipVisionConfig::from_hf_json(Path::new("config.json"), &raw).unwrap();
        let l14 = ClipVisionConfig::vit_l_14();
        assert_eq!(cfg.hidden_size, l14.hidden_size);
        assert_eq!(cfg.num_hidden_layers, l14.num_hidden_layers);
        assert_eq!(cfg.image_size, 224);
        assert_eq!(cfg.num_channels, 3);
        assert_eq!(cfg.hidden_act, "quick_gelu");
        assert_eq!(cfg.layer_norm_eps, 1e-5);
    }

    #[test]
    fn config_with_indivisible_heads_is_rejected_with_the_reason() {
        let raw = serde_json::json!({"hidden_size": 50, "num_attention_heads": 4});
        let err = ClipVisionConfig::from_hf_json(Path::new("c.json"), &raw).unwrap_err();
        assert!(err.to_string().contains("not divisible"), "{err}");
    }

    #[test]
    fn clip_model_config_without_vision_config_is_an_error() {
        let raw = serde_json::json!({"model_type": "clip"});
        let err = ClipVisionConfig::from_hf_json(Path::new("c.json"), &raw).unwrap_err();
        assert!(err.to_string().contains("vision_config"), "{err}");
    }
}
