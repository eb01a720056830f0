//! Training from JavaScript: `DataLoader` (a stream of native batches), `Batch`, and
//! `Trainer`.
//!
//! Both long-lived handles run on threads of their own, as a model does (`engine.rs`):
//! - a loader's thread indexes the data, then prepares batches ahead of the requests (up to
//!   `prefetch` of them), decoding images on the core's worker threads while the trainer
//!   computes; `next()` settles as soon as a prepared batch is there;
//! - a trainer's thread owns its model (loaded there from the model's load options, after
//!   the caller's handle gave it up) and the core `Trainer`, and runs steps, saves and
//!   exports in call order.
//!
//! Batches never cross into JavaScript memory: a `Batch` wraps the core's collated buffers,
//! and `Trainer.step` hands the same buffers to the trainer's thread. Their contents can be
//! copied out for inspection (`inputIds()`, `visionX()`, …).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use flamingo_core::data::{self as core_data, DataConfig, DataKind, DataPosition};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput as CoreForwardInput};
use flamingo_core::lm::AttentionContext;
use flamingo_core::text::FlamingoTokenizer;
use flamingo_core::train::{MicroBatch, TrainConfig, Trainer as CoreTrainer, WeightedInput};
use napi::bindgen_prelude::{ClassInstance, Float32Array, Int32Array, PromiseRaw};
use napi::Env;
use napi_derive::napi;

use crate::engine::{engine_device, guarded, settle, to_json, Deferred, ForwardJob};
use crate::error::{BindingError, BindingResult, ERR_ENGINE_PANIC};
use crate::tensor::{to_js, FloatTensor, HostTensor, IntTensor};
use crate::{promise, ForwardInput, LoadOptions};

fn invalid(message: impl Into<String>) -> BindingError {
    BindingError::invalid_input(message)
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> BindingResult<T> {
    serde_json::from_value(value).map_err(|e| invalid(format!("invalid {what}: {e}")))
}

/// Spawns a named thread that first runs `start` and settles `deferred` with its result
/// (turned into the JS handle by `handle`), then, on success, serves `queue` with `serve`.
fn spawn_owner<S, T, H>(
    name: &str,
    deferred: Deferred<T>,
    start: impl FnOnce() -> BindingResult<S> + Send + 'static,
    handle: impl FnOnce(&S) -> BindingResult<T> + Send + 'static,
    serve: H,
) where
    S: 'static,
    T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
    H: FnOnce(S) + Send + 'static,
{
    // If the thread cannot start, the deferred must still settle: hand it over through a
    // slot we can take back.
    let slot = Arc::new(Mutex::new(Some(deferred)));
    let thread_slot = slot.clone();
    let what = name.to_string();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let Some(deferred) = thread_slot.lock().ok().and_then(|mut s| s.take()) else {
                return;
            };
            let state = guarded(&what, || {
                let state = start()?;
                let js = handle(&state)?;
                Ok((state, js))
            });
            match state {
                Err(e) => settle(deferred, Err(e)),
                Ok((state, js)) => {
                    settle(deferred, Ok(js));
                    serve(state);
                }
            }
        });
    if let Err(e) = started {
        if let Some(deferred) = slot.lock().ok().and_then(|mut s| s.take()) {
            settle(
                deferred,
                Err(BindingError::new(
                    ERR_ENGINE_PANIC,
                    format!("could not start a thread: {e}"),
                )),
            );
        }
    }
}

/// Sends `job` to a handle's thread, or rejects it when the handle is closed.
fn submit<J>(
    jobs: &Mutex<Option<Sender<J>>>,
    job: J,
    reject: impl Fn(J, BindingError),
    closed: fn() -> BindingError,
) {
    let sender = jobs.lock().ok().and_then(|s| s.clone());
    match sender {
        None => reject(job, closed()),
        Some(sender) => {
            if let Err(returned) = sender.send(job) {
                reject(
                    returned.0,
                    BindingError::new(ERR_ENGINE_PANIC, "the worker thread has stopped"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Batch
// ---------------------------------------------------------------------------------------

/// A collated training batch: padded token ids, attention mask, labels and images.
#[napi]
pub struct Batch {
    inner: Arc<core_data::Batch>,
}

fn i32_tensor<T: Copy>(data: &[T], shape: Vec<u32>, f: impl Fn(T) -> i32) -> IntTensor {
    IntTensor {
        data: Int32Array::new(data.iter().map(|&v| f(v)).collect()),
        shape,
    }
}

#[napi]
impl Batch {
    /// `"pairs"` or `"documents"`.
    #[napi(getter)]
    pub fn kind(&self) -> String {
        self.inner.kind.name().to_string()
    }

    /// Rows (samples).
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        self.inner.rows as u32
    }

    /// Padded token length `T`.
    #[napi(getter)]
    pub fn seq_len(&self) -> u32 {
        self.inner.seq_len as u32
    }

    /// Image slots per row (1 for pairs, `maxImages` for documents).
    #[napi(getter)]
    pub fn image_slots(&self) -> u32 {
        self.inner.vision_shape[1] as u32
    }

    #[napi(getter)]
    pub fn epoch(&self) -> i64 {
        self.inner.epoch as i64
    }

    /// The loader's position after this batch (what a training state saves).
    #[napi(getter)]
    pub fn position(&self) -> serde_json::Value {
        // A position is plain numbers and strings: it always serialises.
        serde_json::to_value(&self.inner.position).unwrap_or(serde_json::Value::Null)
    }

    /// Where each row came from (`train.jsonl:12`, `shard-0.tar:000001`).
    #[napi(getter)]
    pub fn keys(&self) -> Vec<String> {
        self.inner.keys.clone()
    }

    /// Whether each row's images were flipped horizontally.
    #[napi(getter)]
    pub fn flipped(&self) -> Vec<bool> {
        self.inner.flipped.clone()
    }

    /// Real (non-padding) images per row.
    #[napi(getter)]
    pub fn num_images(&self) -> Vec<u32> {
        self.inner.num_images.iter().map(|&n| n as u32).collect()
    }

    /// `[B, T]` token ids (a copy).
    #[napi]
    pub fn input_ids(&self) -> IntTensor {
        let b = &self.inner;
        i32_tensor(&b.input_ids, vec![b.rows as u32, b.seq_len as u32], |v| {
            v as i32
        })
    }

    /// `[B, T]` attention mask (a copy).
    #[napi]
    pub fn attention_mask(&self) -> IntTensor {
        let b = &self.inner;
        i32_tensor(
            &b.attention_mask,
            vec![b.rows as u32, b.seq_len as u32],
            |v| v as i32,
        )
    }

    /// `[B, T]` labels, −100 where ignored (a copy).
    #[napi]
    pub fn labels(&self) -> IntTensor {
        let b = &self.inner;
        i32_tensor(&b.labels, vec![b.rows as u32, b.seq_len as u32], |v| {
            v as i32
        })
    }

    /// `[B, images, 1, 3, S, S]` preprocessed images (a copy).
    #[napi]
    pub fn vision_x(&self) -> FloatTensor {
        let b = &self.inner;
        FloatTensor {
            data: Float32Array::new(b.vision_x.clone()),
            shape: b.vision_shape.iter().map(|&d| d as u32).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// DataLoader
// ---------------------------------------------------------------------------------------

/// `DataLoader.open` options. `config` holds the core `DataConfig` fields (camelCase) that
/// differ from the reference's defaults for `kind`.
#[napi(object)]
pub struct DataLoaderOptions {
    /// `"pairs"` or `"documents"`.
    pub kind: String,
    /// `tokenizer.json`, or the folder holding it.
    pub tokenizer: String,
    pub config: Option<serde_json::Value>,
    /// A position a batch of a loader with the same settings reported.
    pub position: Option<serde_json::Value>,
    /// Batches prepared ahead of the requests. Default 2.
    pub prefetch: Option<u32>,
}

enum LoaderJob {
    Next(Deferred<Option<Batch>>),
    Close(Deferred<()>),
}

fn reject_loader_job(job: LoaderJob, error: BindingError) {
    match job {
        LoaderJob::Next(d) => settle(d, Err(error)),
        LoaderJob::Close(d) => settle(d, Err(error)),
    }
}

fn loader_closed() -> BindingError {
    BindingError::new(
        crate::error::ERR_DISPOSED,
        "this data loader has been closed",
    )
}

/// A native stream of training batches (see `flamingo_core::data`).
#[napi]
pub struct DataLoader {
    jobs: Mutex<Option<Sender<LoaderJob>>>,
    /// The loader's position once the data is exhausted (skips after the last batch included).
    end_position: Arc<Mutex<Option<serde_json::Value>>>,
    length: u32,
    config: serde_json::Value,
    tokens: serde_json::Value,
}

fn parse_kind(kind: &str) -> BindingResult<DataKind> {
    match kind {
        "pairs" => Ok(DataKind::Pairs),
        "documents" => Ok(DataKind::Documents),
        other => Err(invalid(format!(
            "kind must be \"pairs\" or \"documents\", got \"{other}\""
        ))),
    }
}

/// Overlays `overrides` (a JSON object) on the reference's settings for `kind`.
fn data_config(kind: DataKind, overrides: Option<serde_json::Value>) -> BindingResult<DataConfig> {
    let mut base = to_json("data settings", &DataConfig::new(kind))?;
    if let Some(serde_json::Value::Object(fields)) = overrides {
        if let serde_json::Value::Object(target) = &mut base {
            for (k, v) in fields {
                target.insert(k, v);
            }
        }
    } else if overrides.is_some() {
        return Err(invalid("data loader config must be an object"));
    }
    from_json("data loader options", base)
}

fn load_tokenizer(path: &str) -> BindingResult<FlamingoTokenizer> {
    let path = PathBuf::from(path);
    Ok(if path.is_dir() {
        FlamingoTokenizer::from_dir(&path)?
    } else {
        FlamingoTokenizer::from_file(&path)?
    })
}

struct LoaderState {
    loader: core_data::DataLoader,
    queue: Receiver<LoaderJob>,
    prefetch: usize,
    end_position: Arc<Mutex<Option<serde_json::Value>>>,
}

/// The loader thread: keeps up to `prefetch` batches ready, serving requests in order.
fn serve_loader(state: LoaderState) {
    let LoaderState {
        mut loader,
        queue,
        prefetch,
        end_position,
    } = state;
    let mut ready: std::collections::VecDeque<BindingResult<Option<Arc<core_data::Batch>>>> =
        std::collections::VecDeque::new();
    let mut finished = false;
    let produce = |loader: &mut core_data::DataLoader| {
        guarded("DataLoader.next", || {
            let batch = loader.next_batch()?.map(Arc::new);
            if batch.is_none() {
                let end = to_json("data position", loader.position())?;
                if let Ok(mut slot) = end_position.lock() {
                    *slot = Some(end);
                }
            }
            Ok(batch)
        })
    };
    loop {
        // Serve waiting requests first; prepare ahead only while nobody is waiting.
        let job = if finished || ready.len() >= prefetch {
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        } else {
            match queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    let result = produce(&mut loader);
                    finished = !matches!(result, Ok(Some(_)));
                    ready.push_back(result);
                    continue;
                }
            }
        };
        match job {
            LoaderJob::Next(d) => {
                let result = match ready.pop_front() {
                    Some(r) => r,
                    None if finished => Ok(None),
                    None => {
                        let r = produce(&mut loader);
                        finished = !matches!(r, Ok(Some(_)));
                        r
                    }
                };
                settle(d, result.map(|b| b.map(|inner| Batch { inner })));
            }
            LoaderJob::Close(d) => {
                settle(d, Ok(()));
                return;
            }
        }
    }
}

#[napi]
impl DataLoader {
    /// Indexes the data on a new thread and resolves with the loader.
    #[napi]
    pub fn open<'env>(
        env: &'env Env,
        options: DataLoaderOptions,
    ) -> napi::Result<PromiseRaw<'env, DataLoader>> {
        let (deferred, promise) = promise::<DataLoader>(env)?;
        let (jobs, queue) = mpsc::channel::<LoaderJob>();
        let prefetch = options.prefetch.unwrap_or(2).max(1) as usize;
        let start = move || -> BindingResult<LoaderState> {
            let kind = parse_kind(&options.kind)?;
            let cfg = data_config(kind, options.config)?;
            let tokenizer = load_tokenizer(&options.tokenizer)?;
            let position = options
                .position
                .map(|p| from_json::<DataPosition>("data position", p))
                .transpose()?;
            let loader = core_data::DataLoader::open(cfg, tokenizer, position)?;
            Ok(LoaderState {
                loader,
                queue,
                prefetch,
                end_position: Arc::new(Mutex::new(None)),
            })
        };
        let handle = move |state: &LoaderState| -> BindingResult<DataLoader> {
            let t = state.loader.tokenizer();
            Ok(DataLoader {
                jobs: Mutex::new(Some(jobs)),
                end_position: state.end_position.clone(),
                length: state.loader.len() as u32,
                config: to_json("data settings", state.loader.config())?,
                tokens: serde_json::json!({
                    "media": t.media_token_id(),
                    "endOfChunk": t.end_of_chunk_token_id(),
                    "pad": t.pad_token_id(),
                    "eos": t.eos_token_id(),
                    "vocabSize": t.len(),
                }),
            })
        };
        spawn_owner("flamingo-data", deferred, start, handle, serve_loader);
        Ok(promise)
    }

    /// The next batch, or `null` when the configured epochs are done.
    #[napi]
    pub fn next<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Option<Batch>>> {
        let (deferred, promise) = promise::<Option<Batch>>(env)?;
        submit(
            &self.jobs,
            LoaderJob::Next(deferred),
            reject_loader_job,
            loader_closed,
        );
        Ok(promise)
    }

    /// The position after the data ran out (`null` before): what the last `next()`
    /// consumed, skipped samples included.
    #[napi(getter)]
    pub fn end_position(&self) -> Option<serde_json::Value> {
        self.end_position.lock().ok().and_then(|p| p.clone())
    }

    /// Samples per epoch, before skipping.
    #[napi(getter)]
    pub fn length(&self) -> u32 {
        self.length
    }

    /// The settings in effect (the core's `DataConfig`).
    #[napi(getter)]
    pub fn config(&self) -> serde_json::Value {
        self.config.clone()
    }

    /// The tokenizer's special ids and length.
    #[napi(getter)]
    pub fn tokens(&self) -> serde_json::Value {
        self.tokens.clone()
    }

    /// Stops the loader thread after the requests made before this call. Idempotent.
    #[napi]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let (deferred, promise) = promise::<()>(env)?;
        let sender = self.jobs.lock().ok().and_then(|mut s| s.take());
        match sender {
            None => settle(deferred, Ok(())),
            Some(sender) => {
                if let Err(returned) = sender.send(LoaderJob::Close(deferred)) {
                    if let LoaderJob::Close(d) = returned.0 {
                        settle(d, Ok(()));
                    }
                }
            }
        }
        Ok(promise)
    }
}

// ---------------------------------------------------------------------------------------
// Trainer
// ---------------------------------------------------------------------------------------

/// `Trainer.create` options.
#[napi(object)]
pub struct TrainerCreateOptions {
    /// How to load the model the trainer owns (the caller's model gave it up).
    pub model: LoadOptions,
    /// The core's `TrainConfig` (camelCase); missing fields take the reference's values.
    pub config: serde_json::Value,
    /// A training-state folder to continue from.
    pub resume_from: Option<String>,
}

/// One part of a micro-batch.
struct StepPart {
    batch: Arc<core_data::Batch>,
    micro_batch: usize,
    loss_multiplier: f64,
}

/// A tensor copied out of the engine, with its name.
#[napi(object)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: FloatTensor,
}

/// `Trainer.gradients` result: one backward of the loss, nothing updated.
#[napi(object)]
pub struct GradientsOutput {
    pub loss: f64,
    /// Raw gradients (before row masking and clipping) of every trainable tensor.
    pub gradients: Vec<NamedTensor>,
    /// The name the trainable embedding rows go by in `gradients`.
    pub embedding_rows_name: String,
    /// The token id of each row of that gradient; `null` when the embeddings are frozen.
    pub embedding_row_ids: Option<Vec<u32>>,
}

enum TrainJob {
    Step(Vec<StepPart>, Deferred<serde_json::Value>),
    Gradients(Box<ForwardJob>, Deferred<GradientsOutput>),
    Parameters(Deferred<Vec<NamedTensor>>),
    FrozenFingerprint(Deferred<serde_json::Value>),
    Save(PathBuf, serde_json::Value, Deferred<serde_json::Value>),
    Export(PathBuf, Deferred<()>),
    Dispose(Deferred<()>),
}

fn reject_train_job(job: TrainJob, error: BindingError) {
    match job {
        TrainJob::Step(_, d) => settle(d, Err(error)),
        TrainJob::Gradients(_, d) => settle(d, Err(error)),
        TrainJob::Parameters(d) => settle(d, Err(error)),
        TrainJob::FrozenFingerprint(d) => settle(d, Err(error)),
        TrainJob::Save(_, _, d) => settle(d, Err(error)),
        TrainJob::Export(_, d) => settle(d, Err(error)),
        TrainJob::Dispose(d) => settle(d, Err(error)),
    }
}

fn trainer_disposed() -> BindingError {
    BindingError::new(
        crate::error::ERR_DISPOSED,
        "this trainer has been disposed; resume it from a saved state to keep training",
    )
}

/// A training run: the model (owned), AdamW state and the schedule, on their own thread.
#[napi]
pub struct Trainer {
    jobs: Mutex<Option<Sender<TrainJob>>>,
    info: serde_json::Value,
}

struct TrainerState {
    trainer: CoreTrainer,
    device: Device,
    queue: Receiver<TrainJob>,
}

fn trainer_info(
    t: &CoreTrainer,
    resumed: Option<&flamingo_core::train::ResumeInfo>,
) -> BindingResult<serde_json::Value> {
    let model = t.model();
    Ok(serde_json::json!({
        "step": t.step_count(),
        "skippedSteps": t.skipped_steps(),
        "parameterCount": t.parameter_count(),
        "config": to_json("training configuration", t.config())?,
        "model": to_json("model summary", model.summary())?,
        "tokens": { "media": model.media_token_id(), "endOfChunk": model.end_of_chunk_token_id() },
        "resumed": resumed.is_some(),
        "dataPosition": resumed.map(|r| r.data_position.clone()),
    }))
}

fn run_step(state: &mut TrainerState, parts: Vec<StepPart>) -> BindingResult<serde_json::Value> {
    let model: &Flamingo = state.trainer.model();
    let image_size = model.summary().image_size;
    let (media, eoc) = (model.media_token_id(), model.end_of_chunk_token_id());
    let mut micro: Vec<MicroBatch> = Vec::new();
    for part in &parts {
        let b = &part.batch;
        if b.media_token_id != media || b.end_of_chunk_token_id != eoc {
            return Err(invalid(format!(
                "the batch's tokenizer has <image> = {} and <|endofchunk|> = {}, but the model was loaded with {media} and {eoc}: use the model's tokenizer",
                b.media_token_id, b.end_of_chunk_token_id
            )));
        }
        if b.image_size() != image_size {
            return Err(invalid(format!(
                "the batch's images are {0}x{0}, but the model's vision tower takes {1}x{1}: open the loader with imageSize {1}",
                b.image_size(),
                image_size
            )));
        }
        while micro.len() <= part.micro_batch {
            micro.push(MicroBatch::default());
        }
        micro[part.micro_batch].parts.push(WeightedInput::new(
            b.to_forward_input(&state.device)?,
            part.loss_multiplier,
            b.kind.name(),
        ));
    }
    let stats = state.trainer.step(&micro)?;
    to_json("step statistics", &stats)
}

fn run_gradients(state: &TrainerState, job: Box<ForwardJob>) -> BindingResult<GradientsOutput> {
    let device = &state.device;
    let input = CoreForwardInput {
        vision_x: job.vision_x.to_tensor(device)?,
        lang_x: job.lang_x.to_u32(device)?,
        attention_mask: job.attention_mask.map(|m| m.to_u32(device)).transpose()?,
        labels: job.labels.map(|l| l.to_i64(device)).transpose()?,
        allow_excess_media_tokens: job.allow_excess_media_tokens,
    };
    let grads = state.trainer.gradients(&input)?;
    Ok(GradientsOutput {
        loss: f64::from(grads.loss),
        gradients: named_tensors(&grads.by_name)?,
        embedding_rows_name: state.trainer.embedding_rows_name(),
        embedding_row_ids: grads.embedding_row_ids,
    })
}

fn named_tensors(
    tensors: &std::collections::BTreeMap<String, Tensor>,
) -> BindingResult<Vec<NamedTensor>> {
    tensors
        .iter()
        .map(|(name, t)| {
            Ok(NamedTensor {
                name: name.clone(),
                tensor: to_js(t)?,
            })
        })
        .collect()
}

/// FNV-1a (64 bit) over a tensor's shape and the bits of its values as f32.
fn bits_digest(t: &Tensor) -> BindingResult<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for &d in t.dims() {
        eat(&(d as u64).to_le_bytes());
    }
    for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
        eat(&v.to_bits().to_le_bytes());
    }
    Ok(format!("{hash:016x}"))
}

/// Digests of what training must leave alone: the vision tower's tokens for a fixed image,
/// the LM alone (every decoder layer and the head, no cross-attention) on fixed ids that
/// avoid the trainable rows, and the frozen input-embedding table.
fn frozen_fingerprint(state: &TrainerState) -> BindingResult<serde_json::Value> {
    let model = state.trainer.model();
    let device = &state.device;
    let size = model.summary().image_size;
    let pixels: Vec<f32> = (0..3 * size * size)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let image = Tensor::from_vec(pixels, (1, 1, 1, 3, size, size), device)?;
    let vision = model.vision_tokens(&image)?;

    let lm = model.lm();
    let trainable = [model.media_token_id(), model.end_of_chunk_token_id()];
    let vocab = lm.info().vocab_size as u32;
    let stride = (vocab / 16).max(1) as usize;
    let ids: Vec<u32> = (0..vocab)
        .filter(|i| !trainable.contains(i))
        .step_by(stride)
        .take(16)
        .collect();
    let len = ids.len();
    let ids = Tensor::from_vec(ids, (1, len), device)?;
    let ctx = AttentionContext::new(&[vec![1; len]], 0, DType::F32, device)?;
    let mut hidden = lm.embed(&ids, &ctx)?;
    for i in 0..lm.info().num_layers {
        hidden = lm.layer(i, &hidden, &ctx, None)?;
    }
    let logits = lm.head(&hidden)?;
    Ok(serde_json::json!({
        "visionTower": bits_digest(&vision)?,
        "languageModel": bits_digest(&logits)?,
        "embeddingTable": bits_digest(lm.input_embeddings())?,
    }))
}

fn serve_trainer(mut state: TrainerState) {
    while let Ok(job) = state.queue.recv() {
        match job {
            TrainJob::Step(parts, d) => {
                let r = guarded("Trainer.step", || run_step(&mut state, parts));
                settle(d, r);
            }
            TrainJob::Gradients(job, d) => {
                let r = guarded("Trainer.gradients", || run_gradients(&state, job));
                settle(d, r);
            }
            TrainJob::Parameters(d) => {
                let r = guarded("Trainer.parameters", || {
                    named_tensors(&state.trainer.parameters())
                });
                settle(d, r);
            }
            TrainJob::FrozenFingerprint(d) => {
                let r = guarded("Trainer.frozenFingerprint", || frozen_fingerprint(&state));
                settle(d, r);
            }
            TrainJob::Save(dir, position, d) => {
                let r = guarded("Trainer.save", || {
                    state.trainer.save_state(&dir, &position)?;
                    Ok(serde_json::json!({
                        "step": state.trainer.step_count(),
                        "skippedSteps": state.trainer.skipped_steps(),
                    }))
                });
                settle(d, r);
            }
            TrainJob::Export(path, d) => {
                let r = guarded("Trainer.export", || {
                    Ok(state.trainer.export_checkpoint(&path)?)
                });
                settle(d, r);
            }
            TrainJob::Dispose(d) => {
                drop(state);
                settle(d, Ok(()));
                return;
            }
        }
    }
}

#[napi]
impl Trainer {
    /// Loads the model on a new thread, sets up the optimizer (and restores a saved state
    /// with `resumeFrom`), and resolves with the trainer.
    #[napi]
    pub fn create<'env>(
        env: &'env Env,
        options: TrainerCreateOptions,
    ) -> napi::Result<PromiseRaw<'env, Trainer>> {
        let (deferred, promise) = promise::<Trainer>(env)?;
        let (jobs, queue) = mpsc::channel::<TrainJob>();
        let spec = match options.model.into_spec() {
            Ok(spec) => spec,
            Err(e) => {
                settle(deferred, Err(e));
                return Ok(promise);
            }
        };
        let config = options.config;
        let resume_from = options.resume_from.map(PathBuf::from);
        let start = move || -> BindingResult<(TrainerState, serde_json::Value)> {
            let cfg: TrainConfig = from_json("training options", config)?;
            let device = engine_device()?;
            let model = Flamingo::load(&spec, &device)?;
            let mut trainer = CoreTrainer::new(model, cfg)?;
            let resumed = resume_from
                .map(|dir| trainer.load_state(&dir))
                .transpose()?;
            let info = trainer_info(&trainer, resumed.as_ref())?;
            Ok((
                TrainerState {
                    trainer,
                    device,
                    queue,
                },
                info,
            ))
        };
        let handle = move |(_, info): &(TrainerState, serde_json::Value)| {
            Ok(Trainer {
                jobs: Mutex::new(Some(jobs)),
                info: info.clone(),
            })
        };
        spawn_owner("flamingo-trainer", deferred, start, handle, |(state, _)| {
            serve_trainer(state)
        });
        Ok(promise)
    }

    /// What the trainer was created with: step, configuration, model summary, and the data
    /// position of a resumed state.
    #[napi(getter)]
    pub fn info(&self) -> serde_json::Value {
        self.info.clone()
    }

    /// One optimizer step. `batches[i]` is part of micro-batch `microBatch[i]` with loss
    /// multiplier `lossMultipliers[i]`. Resolves with the core's `StepStats`.
    #[napi]
    pub fn step<'env>(
        &self,
        env: &'env Env,
        batches: Vec<ClassInstance<'env, Batch>>,
        micro_batch: Vec<u32>,
        loss_multipliers: Vec<f64>,
    ) -> napi::Result<PromiseRaw<'env, serde_json::Value>> {
        let (deferred, promise) = promise::<serde_json::Value>(env)?;
        if batches.is_empty()
            || micro_batch.len() != batches.len()
            || loss_multipliers.len() != batches.len()
        {
            settle(
                deferred,
                Err(invalid(
                    "step needs at least one batch, with one micro-batch index and one loss multiplier each",
                )),
            );
            return Ok(promise);
        }
        let parts = batches
            .iter()
            .zip(micro_batch)
            .zip(loss_multipliers)
            .map(|((b, m), w)| StepPart {
                batch: b.inner.clone(),
                micro_batch: m as usize,
                loss_multiplier: w,
            })
            .collect();
        submit(
            &self.jobs,
            TrainJob::Step(parts, deferred),
            reject_train_job,
            trainer_disposed,
        );
        Ok(promise)
    }

    /// Loss and raw gradients of one forward on `input` (labels required), with the current
    /// weights; nothing is updated and no optimizer state changes.
    #[napi]
    pub fn gradients<'env>(
        &self,
        env: &'env Env,
        input: ForwardInput,
    ) -> napi::Result<PromiseRaw<'env, GradientsOutput>> {
        let (deferred, promise) = promise::<GradientsOutput>(env)?;
        let job = (|| -> BindingResult<Box<ForwardJob>> {
            Ok(Box::new(ForwardJob {
                vision_x: HostTensor::<f32>::from_js("visionX", &input.vision_x)?,
                lang_x: HostTensor::<i32>::from_js("langX", &input.lang_x)?,
                attention_mask: input
                    .attention_mask
                    .as_ref()
                    .map(|m| HostTensor::<i32>::from_js("attentionMask", m))
                    .transpose()?,
                labels: input
                    .labels
                    .as_ref()
                    .map(|l| HostTensor::<i32>::from_js("labels", l))
                    .transpose()?,
                allow_excess_media_tokens: input.allow_excess_media_tokens.unwrap_or(false),
            }))
        })();
        match job {
            Err(e) => settle(deferred, Err(e)),
            Ok(job) => submit(
                &self.jobs,
                TrainJob::Gradients(job, deferred),
                reject_train_job,
                trainer_disposed,
            ),
        }
        Ok(promise)
    }

    /// The trainable tensors' current values (copies), by name.
    #[napi]
    pub fn parameters<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Vec<NamedTensor>>> {
        let (deferred, promise) = promise::<Vec<NamedTensor>>(env)?;
        submit(
            &self.jobs,
            TrainJob::Parameters(deferred),
            reject_train_job,
            trainer_disposed,
        );
        Ok(promise)
    }

    /// Digests of the frozen parts (`visionTower`, `languageModel`, `embeddingTable`): equal
    /// digests before and after training mean the backbones were left bit for bit.
    #[napi]
    pub fn frozen_fingerprint<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, serde_json::Value>> {
        let (deferred, promise) = promise::<serde_json::Value>(env)?;
        submit(
            &self.jobs,
            TrainJob::FrozenFingerprint(deferred),
            reject_train_job,
            trainer_disposed,
        );
        Ok(promise)
    }

    /// Saves the training state into the folder `dir` with `dataPosition` (any JSON).
    #[napi]
    pub fn save<'env>(
        &self,
        env: &'env Env,
        dir: String,
        data_position: serde_json::Value,
    ) -> napi::Result<PromiseRaw<'env, serde_json::Value>> {
        let (deferred, promise) = promise::<serde_json::Value>(env)?;
        submit(
            &self.jobs,
            TrainJob::Save(PathBuf::from(dir), data_position, deferred),
            reject_train_job,
            trainer_disposed,
        );
        Ok(promise)
    }

    /// Writes the trained weights as an OpenFlamingo checkpoint (safetensors) at `path`.
    #[napi]
    pub fn export<'env>(&self, env: &'env Env, path: String) -> napi::Result<PromiseRaw<'env, ()>> {
        let (deferred, promise) = promise::<()>(env)?;
        submit(
            &self.jobs,
            TrainJob::Export(PathBuf::from(path), deferred),
            reject_train_job,
            trainer_disposed,
        );
        Ok(promise)
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.jobs.lock().map(|s| s.is_none()).unwrap_or(true)
    }

    /// Frees the model and optimizer state after the calls made before this one. Idempotent.
    #[napi]
    pub fn dispose<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        crate::dispose_handle(env, &self.jobs, TrainJob::Dispose, |job| match job {
            TrainJob::Dispose(d) => Some(d),
            _ => None,
        })
    }
}
