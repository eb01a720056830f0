//! The training loop's step: OpenFlamingo's `train_one_epoch` (train_utils.py) for one
//! optimizer step, over a `Flamingo` whose bridge tensors (and optionally two embedding
//! rows) have been made `Var`s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use crate::flamingo::model::{Flamingo, ForwardInput, TrainableRows};
use crate::train::optim::AdamW;
use crate::train::state::{self, ParamEntry, StateFile};
use crate::train::{ClipMode, NonFinitePolicy, TrainConfig, DECAY_GROUP_MARKER};
use crate::{Error, Result};

/// One forward pass of a micro-batch, weighted in the objective.
#[derive(Clone, Debug)]
pub struct WeightedInput {
    /// Must carry `labels`.
    pub input: ForwardInput,
    /// Scales this part's loss (the reference: `--loss_multiplier_laion` 0.2,
    /// `--loss_multiplier_mmc4` 1.0).
    pub loss_multiplier: f64,
    /// A label for statistics (e.g. `"laion"`, `"mmc4"`).
    pub dataset: String,
}

impl WeightedInput {
    pub fn new(input: ForwardInput, loss_multiplier: f64, dataset: impl Into<String>) -> Self {
        Self {
            input,
            loss_multiplier,
            dataset: dataset.into(),
        }
    }
}

/// The parts one micro-step backpropagates before clipping (the reference: one LAION and
/// one MMC4 batch).
#[derive(Clone, Debug, Default)]
pub struct MicroBatch {
    pub parts: Vec<WeightedInput>,
}

impl MicroBatch {
    pub fn new(parts: Vec<WeightedInput>) -> Self {
        Self { parts }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartLoss {
    pub micro_batch: usize,
    pub dataset: String,
    /// The part's mean cross-entropy, unscaled.
    pub loss: f64,
    pub loss_multiplier: f64,
}

/// What one `Trainer::step` did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStats {
    /// Optimizer steps completed, this one included (unchanged when skipped).
    pub step: u64,
    /// The objective backpropagated: Σ loss · multiplier / accumulation steps.
    pub loss: f64,
    pub parts: Vec<PartLoss>,
    /// Global gradient norm before clipping (at the last clip, with per-micro-batch clipping).
    pub grad_norm: f64,
    /// Learning rate this step used.
    pub lr: f64,
    pub skipped: bool,
    pub skip_reason: Option<String>,
    /// Sequences processed (rows over all parts).
    pub samples: usize,
    pub seconds: f64,
}

/// Raw gradients of one loss, before any clipping.
pub struct Gradients {
    pub loss: f32,
    /// By parameter name: the checkpoint names of the bridge, and
    /// `Trainer::embedding_rows_name()` for the trainable rows `(k, D)`.
    pub by_name: BTreeMap<String, Tensor>,
    /// The token id of each row of the embedding-rows gradient.
    pub embedding_row_ids: Option<Vec<u32>>,
}

/// What `load_state` restored.
#[derive(Clone, Debug)]
pub struct ResumeInfo {
    pub step: u64,
    pub skipped_steps: u64,
    /// The caller's data position saved with the state.
    pub data_position: serde_json::Value,
}

/// Trains a `Flamingo`'s bridge. Owns the model; `model()` lends it for evaluation and
/// `into_model()` hands it back with plain (untracked) weights.
pub struct Trainer {
    model: Flamingo,
    cfg: TrainConfig,
    optimizer: AdamW,
    /// Token ids of the trainable embedding rows (the last optimizer parameter).
    row_ids: Option<Vec<u32>>,
    step: u64,
    skipped_steps: u64,
}

fn scalar(x: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(x as f32, like.device())?)
}

impl Trainer {
    /// Makes the bridge tensors (and, unless `freeze_lm_embeddings`, the `<image>` and
    /// `<|endofchunk|>` embedding rows) f32 `Var`s and sets up AdamW: weight decay on the
    /// names containing `gated_cross_attn`, none elsewhere (spec §7.4).
    pub fn new(mut model: Flamingo, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let vocab = model.lm().info().vocab_size;
        let special = [model.media_token_id(), model.end_of_chunk_token_id()];
        if let Some(bad) = special.iter().find(|&&i| i as usize >= vocab) {
            if !cfg.freeze_lm_embeddings {
                return Err(Error::InvalidInput(format!(
                    "token id {bad} (<image> or <|endofchunk|>) is outside the LM's vocabulary of {vocab}: pass the tokenizer's length as vocabSize when loading"
                )));
            }
        }
        let mut names: Vec<String> = model.bridge_tensors().keys().cloned().collect();
        names.sort();
        let mut params = Vec::with_capacity(names.len() + 1);
        let mut var_tensors = HashMap::with_capacity(names.len());
        for name in names {
            let t = &model.bridge_tensors()[&name];
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?.contiguous()?)?;
            var_tensors.insert(name.clone(), var.as_tensor().clone());
            let wd = if name.contains(DECAY_GROUP_MARKER) {
                cfg.optimizer.weight_decay
            } else {
                0.0
            };
            params.push((name, var, wd));
        }
        model.set_bridge_tensors(var_tensors)?;

        let row_ids = if cfg.freeze_lm_embeddings {
            None
        } else {
            let mut ids = special.to_vec();
            ids.sort_unstable();
            ids.dedup();
            // Start from the rows the model uses now: a model handed back by an earlier
            // trainer carries its trained rows beside the LM's (unchanged) table.
            let start = match model.trainable_rows() {
                Some(tr) if tr.ids == ids => tr.rows.clone(),
                _ => {
                    let idx = Tensor::from_slice(&ids, ids.len(), model.device())?;
                    model.lm().input_embeddings().index_select(&idx, 0)?
                }
            };
            let var = Var::from_tensor(&start.to_dtype(DType::F32)?.contiguous()?)?;
            model.set_trainable_rows(Some(TrainableRows {
                ids: ids.clone(),
                rows: var.as_tensor().clone(),
            }))?;
            params.push((Self::rows_name_of(&model), var, 0.0));
            Some(ids)
        };
        let optimizer = AdamW::new(cfg.optimizer.clone(), params)?;
        Ok(Self {
            model,
            cfg,
            optimizer,
            row_ids,
            step: 0,
            skipped_steps: 0,
        })
    }

    fn rows_name_of(model: &Flamingo) -> String {
        format!(
            "lang_encoder.{}.rows",
            model.lm().info().input_embedding_key
        )
    }

    /// The name the trainable embedding rows go by in gradients and training states.
    pub fn embedding_rows_name(&self) -> String {
        Self::rows_name_of(&self.model)
    }

    pub fn model(&self) -> &Flamingo {
        &self.model
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.cfg.schedule.lr(self.cfg.optimizer.lr, self.step)
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The trainable tensors by name (current values, shared with the model).
    pub fn parameters(&self) -> BTreeMap<String, Tensor> {
        self.optimizer
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// The number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.optimizer
            .params()
            .iter()
            .map(|p| p.var.elem_count())
            .sum()
    }

    /// Loss and raw gradients of one forward (no clipping, no update).
    pub fn gradients(&self, input: &ForwardInput) -> Result<Gradients> {
        let loss = self.loss_of(input)?;
        let value = loss.to_scalar::<f32>()?;
        let grads = loss.backward()?;
        let by_name = self
            .optimizer
            .params()
            .iter()
            .filter_map(|p| {
                grads
                    .get(p.var.as_tensor())
                    .map(|g| (p.name.clone(), g.clone()))
            })
            .collect();
        Ok(Gradients {
            loss: value,
            by_name,
            embedding_row_ids: self.row_ids.clone(),
        })
    }

    fn loss_of(&self, input: &ForwardInput) -> Result<Tensor> {
        self.model.forward(input)?.loss.ok_or_else(|| {
            Error::InvalidInput(
                "a training batch needs labels (langX shifted targets, -100 ignored)".into(),
            )
        })
    }

    /// One optimizer step over `micro_batches` (gradient accumulation over all of them):
    /// for each part, backward of `loss / accumulation steps · multiplier` (the steps are
    /// the micro-batches, unless `gradient_accumulation_steps` fixes them); clipping by
    /// global norm per `clip_mode`; AdamW at the schedule's rate; the schedule advances.
    pub fn step(&mut self, micro_batches: &[MicroBatch]) -> Result<StepStats> {
        let started = Instant::now();
        if micro_batches.is_empty() || micro_batches.iter().any(|m| m.parts.is_empty()) {
            return Err(Error::InvalidInput(
                "a training step needs at least one micro-batch, each with at least one part"
                    .into(),
            ));
        }
        if let Some(bad) = micro_batches
            .iter()
            .flat_map(|m| &m.parts)
            .find(|p| !p.loss_multiplier.is_finite())
        {
            return Err(Error::InvalidInput(format!(
                "lossMultiplier of dataset \"{}\" must be finite, got {}",
                bad.dataset, bad.loss_multiplier
            )));
        }
        let accum = match self.cfg.gradient_accumulation_steps {
            None => micro_batches.len(),
            Some(n) if micro_batches.len() <= n => n,
            Some(n) => {
                return Err(Error::InvalidInput(format!(
                    "{} micro-batches in one step, but gradientAccumulationSteps is {n}",
                    micro_batches.len()
                )))
            }
        };
        let lr = self.next_lr();
        let n = self.optimizer.params().len();
        let mut acc: Vec<Option<Tensor>> = vec![None; n];
        let mut parts = Vec::new();
        let mut objective = 0.0;
        let mut grad_norm = 0.0;
        let mut samples = 0;
        for (mi, micro) in micro_batches.iter().enumerate() {
            for part in &micro.parts {
                samples += part.input.lang_x.dim(0)?;
                let where_ = format!(
                    "micro-batch {mi}, dataset \"{}\" (step {})",
                    part.dataset,
                    self.step + 1
                );
                if !has_targets(&part.input)? {
                    return self.bad_step(
                        format!("every label is -100 in {where_}: its loss is undefined (NaN in the reference)"),
                        lr,
                        parts,
                        samples,
                        started,
                    );
                }
                let loss = self.loss_of(&part.input)?;
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    return self.bad_step(
                        format!("the loss is {value} in {where_}"),
                        lr,
                        parts,
                        samples,
                        started,
                    );
                }
                // The reference's `(loss / gradient_accumulation_steps) * multiplier`, one
                // f32 op each.
                let scaled = loss
                    .broadcast_div(&scalar(accum as f64, &loss)?)?
                    .broadcast_mul(&scalar(part.loss_multiplier, &loss)?)?;
                let grads = scaled.backward()?;
                for (slot, p) in acc.iter_mut().zip(self.optimizer.params()) {
                    if let Some(g) = grads.get(p.var.as_tensor()) {
                        *slot = Some(match slot.take() {
                            None => g.clone(),
                            Some(a) => (a + g)?,
                        });
                    }
                }
                drop(grads);
                objective += value / accum as f64 * part.loss_multiplier;
                parts.push(PartLoss {
                    micro_batch: mi,
                    dataset: part.dataset.clone(),
                    loss: value,
                    loss_multiplier: part.loss_multiplier,
                });
            }
            let last = mi + 1 == micro_batches.len();
            if self.cfg.clip_mode == ClipMode::EveryMicroBatch || last {
                grad_norm = clip_by_global_norm(&mut acc, self.cfg.max_grad_norm)?;
                if !grad_norm.is_finite() {
                    return self.bad_step(
                        format!(
                            "the gradient norm is {grad_norm} after micro-batch {mi} (step {})",
                            self.step + 1
                        ),
                        lr,
                        parts,
                        samples,
                        started,
                    );
                }
            }
        }
        self.optimizer.step(&acc, lr)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: objective,
            parts,
            grad_norm,
            lr,
            skipped: false,
            skip_reason: None,
            samples,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// A step that cannot be taken: an error, or (policy `Skip`) a counted skip with every
    /// gradient of the step dropped.
    fn bad_step(
        &mut self,
        reason: String,
        lr: f64,
        parts: Vec<PartLoss>,
        samples: usize,
        started: Instant,
    ) -> Result<StepStats> {
        match self.cfg.non_finite {
            NonFinitePolicy::Error => Err(Error::InvalidInput(format!(
                "{reason}; nothing was updated (set nonFinite to \"skip\" to skip such steps, as the reference does for all-masked MMC4 batches)"
            ))),
            NonFinitePolicy::Skip => {
                self.skipped_steps += 1;
                Ok(StepStats {
                    step: self.step,
                    loss: f64::NAN,
                    parts,
                    grad_norm: f64::NAN,
                    lr,
                    skipped: true,
                    skip_reason: Some(reason),
                    samples,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
        }
    }

    /// Saves everything a resume needs — trainable weights, AdamW moments and step counts,
    /// the schedule position, the configuration and `data_position` (opaque to us) — into
    /// the folder `dir` (created if missing), crash-safely (see `train::state`).
    pub fn save_state(&self, dir: &Path, data_position: &serde_json::Value) -> Result<()> {
        state::prepare_dir(dir)?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for p in self.optimizer.params() {
            tensors.insert(format!("param/{}", p.name), p.var.as_tensor().clone());
            tensors.insert(format!("exp_avg/{}", p.name), p.exp_avg.clone());
            tensors.insert(format!("exp_avg_sq/{}", p.name), p.exp_avg_sq.clone());
        }
        let tensors_name = state::tensors_file_name(self.step);
        let tensors_path = dir.join(&tensors_name);
        write_safetensors(&tensors, &tensors_path, |_| {
            state::maybe_crash("tensors-written")
        })?;
        let (tensors_bytes, tensors_fnv1a64) = state::file_digest(&tensors_path)?;

        let file = StateFile {
            format: state::FORMAT.into(),
            version: state::VERSION,
            step: self.step,
            skipped_steps: self.skipped_steps,
            config: self.cfg.clone(),
            params: self
                .optimizer
                .params()
                .iter()
                .map(|p| ParamEntry {
                    name: p.name.clone(),
                    shape: p.var.dims().to_vec(),
                    weight_decay: p.weight_decay,
                    step: p.step,
                })
                .collect(),
            embedding_row_ids: self.row_ids.clone(),
            data_position: data_position.clone(),
            exact_floats: state::exact_floats(&self.cfg),
            tensors_file: tensors_name.clone(),
            tensors_bytes,
            tensors_fnv1a64,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| {
            Error::InvalidInput(format!("dataPosition cannot be saved as JSON: {e}"))
        })?;
        let json_path = dir.join(state::STATE_FILE);
        let temp = state::temp_path(dir, state::STATE_FILE);
        if let Err(e) = write_and_sync(&temp, &json) {
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(&tensors_path);
            return Err(e);
        }
        state::maybe_crash("before-commit");
        state::commit(&temp, &json_path)?;
        state::remove_stale(dir, &tensors_name);
        Ok(())
    }

    /// Restores a state saved by `save_state` into this trainer (whose model must have the
    /// same trainable parameters). The saved configuration replaces this trainer's, as
    /// torch's `optimizer.load_state_dict` and `lr_scheduler.load_state_dict` do; the
    /// following steps continue bit-identically.
    pub fn load_state(&mut self, dir: &Path) -> Result<ResumeInfo> {
        let (mut file, tensors_path) = state::read_state(dir)?;
        state::restore_exact_floats(&mut file.config, &file.exact_floats);
        let mismatch = |detail: String| {
            Error::Checkpoint(format!(
                "the training state in {} was saved for other trainable parameters: {detail}",
                dir.display()
            ))
        };
        let params = self.optimizer.params();
        if file.params.len() != params.len() {
            return Err(mismatch(format!(
                "it has {} tensors, this trainer {} (freezeLmEmbeddings: saved {}, now {})",
                file.params.len(),
                params.len(),
                file.config.freeze_lm_embeddings,
                self.cfg.freeze_lm_embeddings
            )));
        }
        for (saved, p) in file.params.iter().zip(params) {
            if saved.name != p.name || saved.shape != p.var.dims() {
                return Err(mismatch(format!(
                    "saved {} {:?}, here {} {:?}",
                    saved.name,
                    saved.shape,
                    p.name,
                    p.var.dims()
                )));
            }
        }
        if file.embedding_row_ids != self.row_ids {
            return Err(mismatch(format!(
                "embedding rows {:?} saved, {:?} here",
                file.embedding_row_ids, self.row_ids
            )));
        }
        file.config.validate()?;
        let device = self.model.device().clone();
        let mut tensors = candle_core::safetensors::load(&tensors_path, &device)
            .map_err(|e| Error::corrupt(&tensors_path, e.to_string()))?;
        let mut take = |key: String, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(&key)
                .ok_or_else(|| Error::corrupt(&tensors_path, format!("tensor {key} is missing")))?;
            if t.dims() != shape || t.dtype() != DType::F32 {
                return Err(Error::corrupt(
                    &tensors_path,
                    format!(
                        "tensor {key} is {:?} {:?}, expected F32 {shape:?}",
                        t.dtype(),
                        t.dims()
                    ),
                ));
            }
            Ok(t)
        };
        // Read everything before changing anything, so a bad file leaves the trainer as it was.
        let mut loaded = Vec::with_capacity(file.params.len());
        for saved in &file.params {
            loaded.push((
                take(format!("param/{}", saved.name), &saved.shape)?,
                take(format!("exp_avg/{}", saved.name), &saved.shape)?,
                take(format!("exp_avg_sq/{}", saved.name), &saved.shape)?,
            ));
        }
        self.optimizer.set_config(file.config.optimizer.clone())?;
        for ((saved, p), (value, m, v)) in file
            .params
            .iter()
            .zip(self.optimizer.params_mut())
            .zip(loaded)
        {
            p.var.set(&value)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
            p.step = saved.step;
            // Recomputed rather than read: the JSON's decimal may not round-trip exactly.
            p.weight_decay = if saved.name.contains(DECAY_GROUP_MARKER) {
                file.config.optimizer.weight_decay
            } else {
                0.0
            };
        }
        self.cfg = file.config;
        self.step = file.step;
        self.skipped_steps = file.skipped_steps;
        Ok(ResumeInfo {
            step: file.step,
            skipped_steps: file.skipped_steps,
            data_position: file.data_position,
        })
    }

    /// The input-embedding matrix the model uses now: the LM's table with the rows that
    /// shadow it (the trainable ones, or rows trained earlier and now frozen).
    pub fn effective_input_embeddings(&self) -> Result<Tensor> {
        let table = self.model.lm().input_embeddings().to_dtype(DType::F32)?;
        let Some(tr) = self.model.trainable_rows() else {
            return Ok(table);
        };
        let (vocab, dim) = table.dims2()?;
        let idx = Tensor::from_slice(&tr.ids, tr.ids.len(), table.device())?;
        // 0 + row is exact, and the mask picks whole rows: the result holds the trained
        // rows bit for bit (an in-place add of deltas would round).
        let rows = tr.rows.to_dtype(DType::F32)?.detach();
        let scattered = table.zeros_like()?.index_add(&idx, &rows, 0)?;
        let mut mask = vec![0u8; vocab];
        for &id in &tr.ids {
            mask[id as usize] = 1;
        }
        let mask =
            Tensor::from_vec(mask, (vocab, 1), table.device())?.broadcast_as((vocab, dim))?;
        Ok(mask.where_cond(&scattered, &table)?)
    }

    /// Writes the trainable weights as an OpenFlamingo checkpoint (safetensors) that
    /// `Flamingo::load` reads: `perceiver.*`, `lang_encoder.<layers>.<i>.gated_cross_attn_layer.*`,
    /// and the input embedding as the full matrix with the trained rows under
    /// `lang_encoder.<LM embedding key>` — always, as the reference's checkpoint filter keeps
    /// every `embed` weight (a checkpoint's embedding can differ from the LM's, spec §8.1).
    /// For tied embeddings loaded with a `lm_head.weight` alias, the alias is written too.
    pub fn export_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let rows_name = self.row_ids.as_ref().map(|_| self.embedding_rows_name());
        for p in self.optimizer.params() {
            if Some(&p.name) != rows_name.as_ref() {
                tensors.insert(p.name.clone(), p.var.as_tensor().clone());
            }
        }
        let info = self.model.lm().info();
        let embeddings = self.effective_input_embeddings()?;
        tensors.insert(
            format!("lang_encoder.{}", info.input_embedding_key),
            embeddings.clone(),
        );
        let alias = "lm_head.weight";
        if info.output_embedding_key.is_none()
            && self.model.report().lm_overrides.iter().any(|k| k == alias)
        {
            tensors.insert(format!("lang_encoder.{alias}"), embeddings);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| state::io_err(dir, "cannot create the export folder", e))?;
        }
        write_safetensors(&tensors, path, |_| {})
    }

    /// Hands the model back with plain tensors: the trained values, no longer tracked by
    /// autograd, so inference records no graph.
    pub fn into_model(self) -> Result<Flamingo> {
        let Trainer {
            mut model,
            optimizer,
            row_ids,
            ..
        } = self;
        let mut bridge = HashMap::new();
        let mut rows = None;
        let n = optimizer.params().len();
        for (i, p) in optimizer.params().iter().enumerate() {
            let plain = p.var.as_tensor().detach();
            if row_ids.is_some() && i + 1 == n {
                rows = Some(plain);
            } else {
                bridge.insert(p.name.clone(), plain);
            }
        }
        model.set_bridge_tensors(bridge)?;
        if let (Some(ids), Some(rows)) = (row_ids, rows) {
            model.set_trainable_rows(Some(TrainableRows { ids, rows }))?;
        }
        Ok(model)
    }
}

/// Whether any label after the first position (the shifted targets) is a real target.
fn has_targets(input: &ForwardInput) -> Result<bool> {
    let Some(labels) = &input.labels else {
        return Err(Error::InvalidInput(
            "a training batch needs labels (-100 marks ignored positions)".into(),
        ));
    };
    if labels.rank() != 2 {
        return Err(Error::InvalidInput(format!(
            "labels must have shape [batch, tokens], got {:?}",
            labels.dims()
        )));
    }
    let t = labels.dim(1)?;
    if t < 2 {
        return Ok(false);
    }
    let targets = labels.narrow(1, 1, t - 1)?.to_dtype(DType::I64)?;
    Ok(targets
        .ge(0i64)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?
        > 0)
}

/// `clip_grad_norm_(params, max_norm)` as torch computes it: the global 2-norm of the
/// per-tensor 2-norms; with `max_norm`, every gradient is scaled by
/// `min(1, max_norm / (norm + 1e-6))` (torch forms that as `reciprocal(norm + 1e-6) · max_norm`
/// in f32). Returns the norm before scaling.
fn clip_by_global_norm(grads: &mut [Option<Tensor>], max_norm: Option<f64>) -> Result<f64> {
    let norms = grads
        .iter()
        .flatten()
        .map(|g| Ok(g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?))
        .collect::<Result<Vec<_>>>()?;
    if norms.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&norms, 0)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f32>()?;
    if let Some(max_norm) = max_norm {
        let coef = ((1.0f32 / (total + 1e-6f32)) * max_norm as f32).min(1.0);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = g.broadcast_mul(&Tensor::new(coef, g.device())?)?;
            }
        }
    }
    Ok(total as f64)
}

fn write_and_sync(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| state::io_err(path, "cannot create", e))?;
    f.write_all(bytes)
        .map_err(|e| state::io_err(path, "cannot write", e))?;
    f.sync_all()
        .map_err(|e| state::io_err(path, "cannot flush to disk", e))
}

/// Writes tensors to a temp file beside `target`, flushes it, calls `before_commit`, and
/// renames it into place. The temp file is created first so that an unwritable folder
/// fails with an I/O error naming it.
fn write_safetensors(
    tensors: &HashMap<String, Tensor>,
    target: &Path,
    before_commit: impl FnOnce(&Path),
) -> Result<()> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = state::temp_path(dir, &name);
    let result = (|| {
        std::fs::File::create(&temp)
            .map_err(|e| state::io_err(&temp, "cannot write the checkpoint", e))?;
        candle_core::safetensors::save(tensors, &temp).map_err(|e| {
            state::io_err(
                &temp,
                "cannot write the checkpoint",
                std::io::Error::other(e.to_string()),
            )
        })?;
        state::sync_path(&temp)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    before_commit(&temp);
    state::commit(&temp, target)
}
