//! Rotary position embedding (RoPE, Su et al. 2021) in the rotate-half layout of HF
//! transformers' LLaMA and GPT-NeoX (`rotate_half`, `apply_rotary_pos_emb`), with partial
//! rotary (GPT-NeoX `rotary_pct`) and the "linear" and "llama3" frequency scalings.
//!
//! Written with plain tensor ops (narrow, mul, cat) rather than candle's fused rope kernels,
//! which do not propagate gradients (candle-napi-notes §B4): the cross-attention blocks sit
//! below rotary layers, so their gradients must flow through here.

use std::path::Path;

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// How the rotary frequencies are rescaled for context extension (`rope_scaling` in
/// transformers 4, the `rope_type` of `rope_parameters` in transformers 5).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"` or no scaling).
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// LLaMA 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Reads the scaling from either config form. transformers 4 writes
    /// `"rope_scaling": {"type"|"rope_type": …, "factor": …}`; transformers 5 folds the same
    /// fields (plus `rope_theta`) into `"rope_parameters"`.
    pub fn from_config(cfg_path: &Path, raw: &serde_json::Value) -> Result<Self> {
        let params = match (raw.get("rope_parameters"), raw.get("rope_scaling")) {
            (Some(p), _) if p.is_object() => p,
            (_, Some(s)) if s.is_object() => s,
            (_, Some(s)) if !s.is_null() => {
                return Err(Error::config(
                    cfg_path,
                    format!("\"rope_scaling\" must be an object or null, found {s}"),
                ))
            }
            _ => return Ok(RopeScaling::None),
        };
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |name: &str| -> Result<f64> {
            params.get(name).and_then(|v| v.as_f64()).ok_or_else(|| {
                Error::config(
                    cfg_path,
                    format!("rope scaling \"{kind}\" needs a numeric \"{name}\""),
                )
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            other => Err(Error::config(
                cfg_path,
                format!(
                    "unsupported rope scaling type \"{other}\" (supported: default, linear, llama3)"
                ),
            )),
        }
    }
}

/// Rotary embedding over the first `rotary_dim` channels of each head.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// `1 / θ^(2i / rotary_dim)` for `i in 0..rotary_dim/2`, after scaling.
    inv_freq: Tensor,
    rotary_dim: usize,
    head_dim: usize,
}

impl Rotary {
    /// `fraction` is the share of each head that rotates (GPT-NeoX `rotary_pct`); the
    /// rotary width is `int(head_dim · fraction)` as in HF, and must be even.
    pub fn new(
        cfg_path: &Path,
        head_dim: usize,
        fraction: f64,
        theta: f64,
        scaling: &RopeScaling,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::config(
                cfg_path,
                format!("partial rotary factor must be in (0, 1], found {fraction}"),
            ));
        }
        // HF truncates (`int(head_size * rotary_pct)`).
        let rotary_dim = (head_dim as f64 * fraction) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            return Err(Error::config(
                cfg_path,
                format!(
                    "rotary width {rotary_dim} (head_dim {head_dim} × {fraction}) must be even and non-zero"
                ),
            ));
        }
        if theta.is_nan() || theta <= 0.0 {
            return Err(Error::config(
                cfg_path,
                format!("rope_theta must be positive, found {theta}"),
            ));
        }
        let half = rotary_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64))
            .collect();
        match *scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                // transformers `_compute_llama3_parameters`: wavelengths longer than the
                // original context / low_freq_factor are interpolated by `factor`, shorter
                // than context / high_freq_factor kept, a linear blend in between.
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let inv_freq: Vec<f32> = inv_freq.into_iter().map(|f| f as f32).collect();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, half, device)?,
            rotary_dim,
            head_dim,
        })
    }

    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }

    /// cos and sin of `position · inv_freq`, each `(B, T, 1, rotary_dim/2)` in `dtype`, for
    /// `positions` `(B, T)` u32 and inputs laid out `(B, T, heads, head_dim)`.
    /// The angles are computed in f32 as HF does (it disables autocast there).
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let angles = pos
            .broadcast_mul(&self.inv_freq.reshape((1, 1, self.rotary_dim / 2))?)?
            .unsqueeze(2)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotates `x` `(B, T, heads, head_dim)`: with `x = [x1, x2, pass]` (x1, x2 the two halves
    /// of the rotary part), `[x1·cos − x2·sin, x2·cos + x1·sin, pass]` — HF's
    /// `x·cos + rotate_half(x)·sin` with the duplicated cos/sin halves folded out.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = self.rotary_dim / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        if self.rotary_dim == self.head_dim {
            Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
        } else {
            let pass = x.narrow(D::Minus1, self.rotary_dim, self.head_dim - self.rotary_dim)?;
            Ok(Tensor::cat(&[r1, r2, pass], D::Minus1)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rotary(head_dim: usize, fraction: f64, scaling: RopeScaling) -> Rotary {
        Rotary::new(
            Path::new("config.json"),
            head_dim,
            fraction,
            10_000.0,
            &scaling,
            &Device::Cpu,
        )
        .expect("valid rotary settings")
    }

    #[test]
    fn rotation_preserves_norm_and_leaves_pass_through_channels_alone() {
        let r = rotary(8, 0.5, RopeScaling::None);
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 8.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3, 8))
            .unwrap();
        let pos = Tensor::new(&[[0u32, 7]], &Device::Cpu).unwrap();
        let (cos, sin) = r.cos_sin(&pos, DType::F32).unwrap();
        let y = r.apply(&x, &cos, &sin).unwrap();
        // position 0 is the identity
        let d0 = (y.narrow(1, 0, 1).unwrap() - x.narrow(1, 0, 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d0 < 1e-6);
        // channels beyond the rotary width pass through untouched
        let pass = (y.narrow(3, 4, 4).unwrap() - x.narrow(3, 4, 4).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(pass, 0.0);
        // a rotation keeps the norm of the rotated part
        let n = |t: &Tensor| {
            t.narrow(3, 0, 4)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!((n(&x) - n(&y)).abs() / n(&x) < 1e-5);
    }

    #[test]
    fn linear_scaling_divides_positions_by_the_factor() {
        let plain = rotary(8, 1.0, RopeScaling::None);
        let scaled = rotary(8, 1.0, RopeScaling::Linear { factor: 4.0 });
        let p8 = Tensor::new(&[[8u32]], &Device::Cpu).unwrap();
        let p2 = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
        let (c1, _) = scaled.cos_sin(&p8, DType::F32).unwrap();
        let (c2, _) = plain.cos_sin(&p2, DType::F32).unwrap();
        let d = (c1 - c2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = rotary(128, 1.0, RopeScaling::None);
        let scaled = rotary(
            128,
            1.0,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        );
        let a = plain.inv_freq.to_vec1::<f32>().unwrap();
        let b = scaled.inv_freq.to_vec1::<f32>().unwrap();
        assert_eq!(a[0], b[0]);
        assert!((a[63] / 8.0 - b[63]).abs() < 1e-12);
        assert!(b.windows(2).all(|w| w[0] > w[1]), "still decreasing");
    }

    #[test]
    fn unsupported_scaling_types_are_config_errors() {
        let raw = serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 2.0}});
        let err = RopeScaling::from_config(Path::new("c.json"), &raw).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(err.to_string().contains("yarn"));
        let raw =
            serde_json::json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}});
        assert_eq!(
            RopeScaling::from_config(Path::new("c.json"), &raw).unwrap(),
            RopeScaling::None
        );
    }
}
