//! AdamW with parameter groups and exportable state, matching PyTorch's `torch.optim.AdamW`
//! (`_single_tensor_adamw` in torch 2.0.1, the reference's pin; the same arithmetic as
//! torch ≥ 2.6's `_single_tensor_adam(decoupled_weight_decay=True)`).
//!
//! candle's own `AdamW` has no groups and keeps its moments private, so it can neither give
//! the cross-attention blocks their own weight decay (spec §7.4) nor be checkpointed
//! (candle-napi-notes §B3).
//!
//! Per parameter and step, in torch's order (scalars are computed in f64 as Python does and
//! rounded to f32 where a tensor op consumes them; every tensor op rounds once in f32):
//! ```text
//! step += 1
//! θ  = θ · (1 − lr·λ)
//! m  = m + (1 − β1)·(g − m)                      lerp_(g, 1 − β1), weight < 0.5 branch
//! v  = v·β2 + (1 − β2)·g·g                       mul_(β2).addcmul_(g, g, 1 − β2)
//! denom = sqrt(v) / sqrt(1 − β2^step) + ε
//! θ  = θ + (−lr / (1 − β1^step)) · (m / denom)   addcdiv_(m, denom, −step_size)
//! ```
//! (torch's vectorised CPU `lerp` may fuse the multiply-add; the result can then differ from
//! this in the last bit of `m`. Runs of this optimizer are bit-reproducible among themselves,
//! which is what resuming needs.)
//! As in torch, a parameter without a gradient in a step is left alone, its own step count
//! included.

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW hyper-parameters. `weight_decay` applies to the parameters the caller puts in the
/// decaying group (the reference: names containing `gated_cross_attn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule scales it). Reference: 1e-4.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay of the decaying group. Reference: 0.1.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidInput(format!("optimizer: {what}")));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(&format!("lr must be a finite number ≥ 0, got {}", self.lr));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(&format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(&format!(
                "eps must be a finite number ≥ 0, got {}",
                self.eps
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(&format!(
                "weightDecay must be a finite number ≥ 0, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// One optimised tensor and its AdamW state.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// This parameter's group decay (0 outside the decaying group).
    pub weight_decay: f64,
    /// First moment, f32, the parameter's shape.
    pub exp_avg: Tensor,
    /// Second moment, f32, the parameter's shape.
    pub exp_avg_sq: Tensor,
    /// Steps this parameter has taken (torch keeps one count per parameter).
    pub step: u64,
}

/// AdamW over named `Var`s.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
}

/// A 0-d f32 tensor: the f32 rounding of a Python-float scalar that a torch op consumes.
fn scalar(x: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(x as f32, like.device())?)
}

impl AdamW {
    /// `params`: `(name, var, weight_decay)`. Vars must be f32 (the moments are f32 too).
    pub fn new(cfg: AdamWConfig, params: Vec<(String, Var, f64)>) -> Result<Self> {
        cfg.validate()?;
        let params = params
            .into_iter()
            .map(|(name, var, weight_decay)| {
                if var.dtype() != DType::F32 {
                    return Err(Error::InvalidInput(format!(
                        "optimizer: parameter {name} is {:?}; trainable parameters must be f32",
                        var.dtype()
                    )));
                }
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    weight_decay,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, params })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Replaces the hyper-parameters (a restored state's). Group decays are per parameter.
    pub fn set_config(&mut self, cfg: AdamWConfig) -> Result<()> {
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// One update at learning rate `lr`. `grads[i]` is the gradient of `params()[i]`;
    /// `None` skips that parameter, as torch does for `p.grad is None`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::InvalidInput(format!(
                "optimizer: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.cfg;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            if g.dims() != p.var.dims() {
                return Err(Error::InvalidInput(format!(
                    "optimizer: gradient of {} has shape {:?}, the parameter {:?}",
                    p.name,
                    g.dims(),
                    p.var.dims()
                )));
            }
            let g = g.to_dtype(DType::F32)?;
            let theta = p.var.as_tensor();
            p.step += 1;
            let step = p.step as f64;

            // torch 2.0.1 multiplies even by 1.0 (λ = 0); skipping that is bit-identical.
            let keep = 1.0 - lr * p.weight_decay;
            let decayed = if keep as f32 == 1.0 {
                theta.clone()
            } else {
                theta.broadcast_mul(&scalar(keep, theta)?)?
            };
            let m = (&p.exp_avg + (&g - &p.exp_avg)?.broadcast_mul(&scalar(1.0 - beta1, &g)?)?)?;
            let v = (p.exp_avg_sq.broadcast_mul(&scalar(beta2, &g)?)?
                + g.broadcast_mul(&scalar(1.0 - beta2, &g)?)?.mul(&g)?)?;
            let bias_correction1 = 1.0 - beta1.powf(step);
            let bias_correction2 = 1.0 - beta2.powf(step);
            let step_size = lr / bias_correction1;
            let denom = v
                .sqrt()?
                .broadcast_div(&scalar(bias_correction2.sqrt(), &v)?)?
                .broadcast_add(&scalar(eps, &v)?)?;
            let updated = (decayed + m.div(&denom)?.broadcast_mul(&scalar(-step_size, &m)?)?)?;
            p.var.set(&updated)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        Ok(())
    }
}
