//! Training the Flamingo bridge, as the reference trainer does (open_flamingo/train,
//! train_utils.py `train_one_epoch`; spec §2.6 and §7): the perceiver and the gated
//! cross-attention blocks, and optionally the `<image>` and `<|endofchunk|>` embedding
//! rows, learn; the vision tower and the LM stay frozen.
//!
//! - `Trainer`: one optimizer step over one or more micro-batches, each made of parts with
//!   a loss multiplier (the reference: LAION ×0.2 and MMC4 ×1.0), backward of
//!   `loss / grad_accum · multiplier`, gradient clipping by global norm, AdamW, the schedule.
//! - `optim`: AdamW with parameter groups and exportable state (PyTorch's arithmetic).
//! - `schedule`: HF's constant / linear / cosine schedules with warmup.
//! - `state`: crash-safe training-state folders.
//!
//! Label masking for the datasets belongs to the tokenizer side (`text/`); the trainer
//! takes ready `ForwardInput`s.

pub mod optim;
pub mod schedule;
pub mod state;
mod trainer;

use serde::{Deserialize, Serialize};

pub use optim::{AdamW, AdamWConfig};
pub use schedule::{ScheduleConfig, ScheduleKind};
pub use trainer::{Gradients, MicroBatch, PartLoss, ResumeInfo, StepStats, Trainer, WeightedInput};

use crate::{Error, Result};

/// When gradients are clipped to `max_grad_norm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClipMode {
    /// After every micro-batch, on the gradients accumulated so far — what the reference
    /// does (`clip_grad_norm_` runs each iteration, also inside gradient accumulation, so
    /// early micro-batches are clipped again with the later ones).
    EveryMicroBatch,
    /// Once, on the fully accumulated gradient, before the optimizer step (the usual
    /// textbook order). Identical to the reference without accumulation.
    BeforeStep,
}

/// What to do when a loss (or the gradient norm) is NaN or infinite, or a batch has no
/// target token at all (every label −100, which makes the reference's loss NaN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NonFinitePolicy {
    /// Fail the step with an error; nothing is updated.
    Error,
    /// Drop the whole step's gradients and take no optimizer or schedule step, counting
    /// it in `skipped_steps` — the reference's `zero_grad(); continue` for all-masked MMC4
    /// batches (spec §7.2).
    Skip,
}

/// Training settings; the defaults are the reference's release recipe (spec §7.4) except
/// the warmup, which depends on the run length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TrainConfig {
    pub optimizer: AdamWConfig,
    pub schedule: ScheduleConfig,
    /// Global gradient-norm clip; `None` disables clipping. Reference: 1.0.
    pub max_grad_norm: Option<f64>,
    pub clip_mode: ClipMode,
    /// Keep every embedding row frozen (the reference's `--freeze_lm_embeddings`, used for
    /// the 4B releases). Otherwise the `<image>` and `<|endofchunk|>` rows train.
    pub freeze_lm_embeddings: bool,
    pub non_finite: NonFinitePolicy,
    /// The divisor of every loss (`--gradient_accumulation_steps`). `None`: the number of
    /// micro-batches passed to each step. The reference divides by its setting even in an
    /// epoch's last, shorter group; set it to reproduce that.
    pub gradient_accumulation_steps: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            max_grad_norm: Some(1.0),
            clip_mode: ClipMode::EveryMicroBatch,
            freeze_lm_embeddings: false,
            non_finite: NonFinitePolicy::Error,
            gradient_accumulation_steps: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        self.schedule.validate()?;
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::InvalidInput(format!(
                    "maxGradNorm must be a finite number > 0 (or null to disable clipping), got {n}"
                )));
            }
        }
        if self.gradient_accumulation_steps == Some(0) {
            return Err(Error::InvalidInput(
                "gradientAccumulationSteps must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The parameters whose names contain this get the decaying AdamW group (reference:
/// `"gated_cross_attn" in name`, LayerNorms and gates included).
pub const DECAY_GROUP_MARKER: &str = "gated_cross_attn";
