//! Perceiver resampler (OpenFlamingo helpers.py `PerceiverResampler`, `PerceiverAttention`,
//! `FeedForward`; spec §3.1–§3.3): a fixed set of learned latents cross-attends to each
//! image's patch tokens, turning any number of tokens into `num_latents` per image.
//!
//! Also home to the pieces the gated cross-attention shares with it: the feed-forward block,
//! the `"(h d)"` head split/merge, and the reference's parameter initialisation.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::flamingo::config::PerceiverConfig;
use crate::io::Weights;
use crate::nn::{gelu_erf, softmax_last_dim, LayerNorm, Linear};
use crate::{Error, Result};

/// Every LayerNorm of the Flamingo modules is PyTorch's default: eps 1e-5, with bias.
pub(crate) const LN_EPS: f64 = 1e-5;

/// `FeedForward(dim, mult)`: `nn.Sequential(LayerNorm, Linear(dim, mult·dim), GELU,
/// Linear(mult·dim, dim))`, bias-free linears and exact erf GELU (spec §3.1). The keys are the
/// Sequential's indices: `0.*` (LN), `1.weight`, `3.weight`.
#[derive(Clone, Debug)]
pub(crate) struct FeedForward {
    norm: LayerNorm,
    up: Linear,
    down: Linear,
}

impl FeedForward {
    pub(crate) fn load(w: &Weights, dim: usize, mult: usize) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::load(w, "0", dim, LN_EPS, true)?,
            up: Linear::load(w, "1", dim, mult * dim, false)?,
            down: Linear::load(w, "3", mult * dim, dim, false)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = gelu_erf(&self.up.forward(&self.norm.forward(x)?)?)?;
        self.down.forward(&h)
    }

    pub(crate) fn init_tensors(
        rng: &mut InitRng,
        prefix: &str,
        dim: usize,
        mult: usize,
        device: &Device,
        out: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        rng.layer_norm(&format!("{prefix}0"), dim, device, out)?;
        out.insert(
            format!("{prefix}1.weight"),
            rng.linear(mult * dim, dim, device)?,
        );
        out.insert(
            format!("{prefix}3.weight"),
            rng.linear(dim, mult * dim, device)?,
        );
        Ok(())
    }
}

/// `(B, n, h·d) → (B, h, n, d)`: einops `"b n (h d) -> b h n d"`, so channel `c` is head
/// `c / d` (h-major), as the checkpoints were trained.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, inner) = x.dims3()?;
    Ok(x.reshape((b, n, heads, inner / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `(B, h, n, d) → (B, n, h·d)`, the inverse of [`split_heads`].
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, n, h * d))?)
}

/// A small deterministic generator (SplitMix64) for fresh initialisation: candle's CPU
/// device cannot be seeded, and a seed must reproduce the same weights on every device.
pub(crate) struct InitRng(u64);

impl InitRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// PyTorch's default `nn.Linear` init, kaiming-uniform with a = √5, which reduces to
    /// U(−1/√fan_in, 1/√fan_in). Shape `[out, in]`, f32.
    pub(crate) fn linear(&mut self, out: usize, fan_in: usize, device: &Device) -> Result<Tensor> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let v: Vec<f32> = (0..out * fan_in)
            .map(|_| ((2.0 * self.unit() - 1.0) * bound) as f32)
            .collect();
        Ok(Tensor::from_vec(v, (out, fan_in), device)?)
    }

    /// Standard normal samples (Box–Muller), f32.
    pub(crate) fn randn(&mut self, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
        let mut v = Vec::with_capacity(rows * cols);
        while v.len() < rows * cols {
            // 1 − u lies in (0, 1], so the log is finite.
            let r = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
            let t = std::f64::consts::TAU * self.unit();
            v.push((r * t.cos()) as f32);
            v.push((r * t.sin()) as f32);
        }
        v.truncate(rows * cols);
        Ok(Tensor::from_vec(v, (rows, cols), device)?)
    }

    /// LayerNorm init: weight 1, bias 0, as `{name}.weight` / `{name}.bias`.
    pub(crate) fn layer_norm(
        &mut self,
        name: &str,
        dim: usize,
        device: &Device,
        out: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        out.insert(
            format!("{name}.weight"),
            Tensor::ones(dim, DType::F32, device)?,
        );
        out.insert(
            format!("{name}.bias"),
            Tensor::zeros(dim, DType::F32, device)?,
        );
        Ok(())
    }
}

/// `PerceiverAttention` (spec §3.2): latents query `[LN(media); LN(latents)]`, so the latents
/// also attend to themselves. No mask.
struct PerceiverAttention {
    norm_media: LayerNorm,
    norm_latents: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl PerceiverAttention {
    fn load(w: &Weights, dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            norm_media: LayerNorm::load(w, "norm_media", dim, LN_EPS, true)?,
            norm_latents: LayerNorm::load(w, "norm_latents", dim, LN_EPS, true)?,
            to_q: Linear::load(w, "to_q", dim, inner, false)?,
            to_kv: Linear::load(w, "to_kv", dim, 2 * inner, false)?,
            to_out: Linear::load(w, "to_out", inner, dim, false)?,
            heads,
            dim_head,
        })
    }

    /// x (M, n1, D) media tokens, latents (M, n2, D) → (M, n2, D).
    fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let inner = self.heads * self.dim_head;
        let xn = self.norm_media.forward(x)?;
        let ln = self.norm_latents.forward(latents)?;
        let q = (split_heads(&self.to_q.forward(&ln)?, self.heads)?
            * (self.dim_head as f64).powf(-0.5))?;
        let kv = self.to_kv.forward(&Tensor::cat(&[&xn, &ln], 1)?)?;
        // `chunk(2, dim=-1)`: K is the first half of to_kv's outputs, V the second.
        let k = split_heads(&kv.narrow(2, 0, inner)?, self.heads)?;
        let v = split_heads(&kv.narrow(2, inner, inner)?, self.heads)?;
        let attn = softmax_last_dim(&q.matmul(&k.t()?)?)?;
        self.to_out.forward(&merge_heads(&attn.matmul(&v)?)?)
    }
}

/// OpenFlamingo's `PerceiverResampler(dim)`: 6 × (attention + feed-forward) over 64 learned
/// latents, then a final LayerNorm. No frame or media-time embeddings: OpenFlamingo never
/// enables them, so its checkpoints have no such keys (spec §3.3).
pub struct PerceiverResampler {
    latents: Tensor,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    norm: LayerNorm,
    dim: usize,
}

impl PerceiverResampler {
    /// `w` rooted at the `perceiver` prefix (`latents`, `layers.{i}.0.*`, `layers.{i}.1.*`,
    /// `norm.*`). `dim` = vision width.
    pub fn load(w: &Weights, dim: usize, cfg: &PerceiverConfig) -> Result<Self> {
        if cfg.heads == 0 || cfg.dim_head == 0 || cfg.num_latents == 0 {
            return Err(Error::InvalidInput(format!(
                "perceiver heads, dim_head and num_latents must be positive, got {cfg:?}"
            )));
        }
        let layers = (0..cfg.depth)
            .map(|i| {
                let l = w.pp(format!("layers.{i}"));
                Ok((
                    PerceiverAttention::load(&l.pp("0"), dim, cfg.heads, cfg.dim_head)?,
                    FeedForward::load(&l.pp("1"), dim, cfg.ff_mult)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents: w.get((cfg.num_latents, dim), "latents")?,
            layers,
            norm: LayerNorm::load(w, "norm", dim, LN_EPS, true)?,
            dim,
        })
    }

    /// Fresh init as the reference: latents ~ N(0, 1), linears U(±1/√fan_in), LayerNorms
    /// weight 1 bias 0. Keys as in the checkpoint under `perceiver.` (without the prefix).
    pub fn init_tensors(
        dim: usize,
        cfg: &PerceiverConfig,
        seed: u64,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut rng = InitRng::new(seed);
        let inner = cfg.heads * cfg.dim_head;
        let mut out = HashMap::new();
        out.insert(
            "latents".to_string(),
            rng.randn(cfg.num_latents, dim, device)?,
        );
        for i in 0..cfg.depth {
            let a = format!("layers.{i}.0.");
            rng.layer_norm(&format!("{a}norm_media"), dim, device, &mut out)?;
            rng.layer_norm(&format!("{a}norm_latents"), dim, device, &mut out)?;
            out.insert(format!("{a}to_q.weight"), rng.linear(inner, dim, device)?);
            out.insert(
                format!("{a}to_kv.weight"),
                rng.linear(2 * inner, dim, device)?,
            );
            out.insert(format!("{a}to_out.weight"), rng.linear(dim, inner, device)?);
            FeedForward::init_tensors(
                &mut rng,
                &format!("layers.{i}.1."),
                dim,
                cfg.ff_mult,
                device,
                &mut out,
            )?;
        }
        rng.layer_norm("norm", dim, device, &mut out)?;
        Ok(out)
    }

    /// x (B, T, F, v, D) → (B, T, num_latents, D). Frames are concatenated into one token
    /// sequence per image, and each (b, t) image is resampled independently.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 5 || dims[4] != self.dim {
            return Err(Error::InvalidInput(format!(
                "the perceiver takes vision tokens of shape (B, T_img, F, tokens, {}), got {dims:?}",
                self.dim
            )));
        }
        let (b, t, f, v, d) = (dims[0], dims[1], dims[2], dims[3], dims[4]);
        let x = x
            .to_dtype(self.latents.dtype())?
            .reshape((b * t, f * v, d))?;
        let n = self.latents.dim(0)?;
        let mut lat = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((b * t, n, d))?
            .contiguous()?;
        // The media `x` is never updated: every layer re-normalises the same raw tokens.
        for (attn, ff) in &self.layers {
            lat = (attn.forward(&x, &lat)? + &lat)?;
            lat = (ff.forward(&lat)? + &lat)?;
        }
        Ok(self.norm.forward(&lat)?.reshape((b, t, n, d))?)
    }

    /// Width of the media tokens it takes and the latents it returns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Latents per image (64 in OpenFlamingo).
    pub fn num_latents(&self) -> usize {
        self.latents.dim(0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn small_cfg() -> PerceiverConfig {
        PerceiverConfig {
            depth: 2,
            heads: 2,
            dim_head: 4,
            num_latents: 3,
            ff_mult: 2,
        }
    }

    #[test]
    fn init_tensors_are_deterministic_and_follow_the_reference_init() {
        let dev = Device::Cpu;
        let cfg = PerceiverConfig::default();
        let a = PerceiverResampler::init_tensors(16, &cfg, 7, &dev).unwrap();
        let b = PerceiverResampler::init_tensors(16, &cfg, 7, &dev).unwrap();
        let c = PerceiverResampler::init_tensors(16, &cfg, 8, &dev).unwrap();
        // 1 latents + depth × (2 LN × 2 + 3 linears + FF: LN × 2 + 2 linears) + final LN × 2
        assert_eq!(a.len(), 1 + cfg.depth * (4 + 3 + 4) + 2);
        let lat = |m: &HashMap<String, Tensor>| {
            m["latents"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(lat(&a), lat(&b));
        assert_ne!(lat(&a), lat(&c));
        let l = lat(&a);
        let mean = l.iter().sum::<f32>() / l.len() as f32;
        let var = l.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / l.len() as f32;
        assert!(mean.abs() < 0.15 && (var - 1.0).abs() < 0.2, "{mean} {var}");
        let q = a["layers.0.0.to_q.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bound = 1.0 / 4.0;
        assert!(q.iter().all(|x| x.abs() <= bound));
        assert!(q.iter().any(|x| x.abs() > 0.9 * bound));
        assert_eq!(a["layers.0.0.to_kv.weight"].dims(), &[1024, 16]);
        assert_eq!(a["layers.3.1.3.weight"].dims(), &[16, 64]);
        let w = Weights::from_tensors(a, DType::F32, &dev);
        PerceiverResampler::load(&w, 16, &cfg).unwrap();
    }

    #[test]
    fn every_perceiver_parameter_receives_a_gradient() {
        let dev = Device::Cpu;
        let cfg = small_cfg();
        let init = PerceiverResampler::init_tensors(8, &cfg, 3, &dev).unwrap();
        let vars: HashMap<String, Var> = init
            .into_iter()
            .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
            .collect();
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let p =
            PerceiverResampler::load(&Weights::from_tensors(tensors, DType::F32, &dev), 8, &cfg)
                .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, 1, 5, 8), &dev).unwrap();
        let target = Tensor::randn(0f32, 1.0, (2, 1, 3, 8), &dev).unwrap();
        let loss = (p.forward(&x).unwrap() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }

    #[test]
    fn images_are_resampled_independently() {
        let dev = Device::Cpu;
        let cfg = small_cfg();
        let w = Weights::from_tensors(
            PerceiverResampler::init_tensors(8, &cfg, 5, &dev).unwrap(),
            DType::F32,
            &dev,
        );
        let p = PerceiverResampler::load(&w, 8, &cfg).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 2, 1, 5, 8), &dev).unwrap();
        let both = p.forward(&x).unwrap();
        let second = p.forward(&x.narrow(1, 1, 1).unwrap()).unwrap();
        let diff = (both.narrow(1, 1, 1).unwrap() - second)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
