//! Learning-rate schedules with linear warmup: HF transformers'
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` (optimization.py), the three the reference trainer
//! offers (`--lr_scheduler constant|linear|cosine`, spec §7.4).
//!
//! They are `LambdaLR` multipliers of the peak rate, evaluated at the scheduler's step
//! count. The reference calls `optimizer.step()` before `lr_scheduler.step()`, so optimizer
//! step `k` (0-based) runs at `lr · factor(k)`: with warmup, the very first step has rate 0.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScheduleKind {
    /// Warmup, then the peak rate (the reference's default and the releases' choice).
    Constant,
    /// Warmup, then linear decay to 0 at `total_steps`.
    Linear,
    /// Warmup, then half a cosine period (by default) down to 0 at `total_steps`.
    Cosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0 to the peak rate. Release: 1875.
    pub warmup_steps: u64,
    /// Optimizer steps in the whole run; required by `linear` and `cosine`.
    pub total_steps: Option<u64>,
    /// Cosine periods over the decay (HF `num_cycles`, default 0.5: from peak to 0 once).
    pub num_cycles: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            total_steps: None,
            num_cycles: 0.5,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        match (self.kind, self.total_steps) {
            (ScheduleKind::Linear | ScheduleKind::Cosine, None) => {
                Err(Error::InvalidInput(format!(
                    "the {:?} learning-rate schedule needs totalSteps (the number of optimizer steps in the run)",
                    self.kind
                )))
            }
            _ if !self.num_cycles.is_finite() => Err(Error::InvalidInput(format!(
                "numCycles must be finite, got {}",
                self.num_cycles
            ))),
            _ => Ok(()),
        }
    }

    /// The multiplier of the peak rate at scheduler step `step` (HF's `lr_lambda`).
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = self.warmup_steps;
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let total = self.total_steps.unwrap_or(0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                // HF: max(0, (total − step) / max(1, total − warmup)), in Python floats.
                let remaining = total as f64 - step as f64;
                let span = (total as f64 - warmup as f64).max(1.0);
                (remaining / span).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress = (step - warmup) as f64 / (total as f64 - warmup as f64).max(1.0);
                let cos = (std::f64::consts::PI * self.num_cycles * 2.0 * progress).cos();
                (0.5 * (1.0 + cos)).max(0.0)
            }
        }
    }

    /// The learning rate of optimizer step `step` (0-based) for peak rate `lr`.
    pub fn lr(&self, lr: f64, step: u64) -> f64 {
        lr * self.factor(step)
    }
}
