//! One engine thread per model: it loads the model, owns it, runs every computing call in
//! the order the calls were made, and settles each call's Promise through a `JsDeferred`.
//!
//! Why a dedicated thread rather than napi's `AsyncTask` on the libuv pool:
//! - the libuv pool has 4 threads shared with Node's fs, dns, crypto and zlib; a model call
//!   takes seconds (training steps and generation will take much longer), and parking those
//!   threads on it would stall unrelated I/O in the host application;
//! - calls on one model are serialised in submission order, so a model never runs two
//!   forwards at once (peak memory stays that of one call, and a GPU sees one stream of work);
//! - the model never crosses threads: it is created, used and dropped on its own thread, and
//!   `dispose()` is an ordinary message that frees it after the calls queued before it.
//!
//! A `JsDeferred` settles from any thread, so no async runtime (tokio) is involved either.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use candle_core::Device;
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use napi::bindgen_prelude::ToNapiValue;
use napi::{Env, JsDeferred};

use crate::error::{BindingError, BindingResult, ERR_ENGINE_PANIC};
use crate::generate::{
    GenerateResult, GenerateStarted, GenerateStep, ScoreJob, ScoreOutput, Sessions, StartJob,
};
use crate::tensor::{to_js, FloatTensor, HostTensor};

type Resolver<T> = Box<dyn FnOnce(Env) -> napi::Result<T>>;
/// The pending Promise of one call.
pub type Deferred<T> = JsDeferred<T, Resolver<T>>;

/// Settles a call's Promise: resolves with `result`'s value, or rejects with a JS `Error`
/// carrying the error's `code` (built on the JS thread, where JS values can be made).
pub fn settle<T: ToNapiValue + Send + 'static>(deferred: Deferred<T>, result: BindingResult<T>) {
    deferred.resolve(Box::new(move |env: Env| {
        result.map_err(|e| e.into_js(&env))
    }));
}

/// Runs `f`, turning a panic into an error so that the caller's Promise still settles and
/// the engine thread lives on for the next call.
fn guarded<T>(what: &str, f: impl FnOnce() -> BindingResult<T>) -> BindingResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(BindingError::new(
            ERR_ENGINE_PANIC,
            format!("internal error in {what}: {detail} (this is a bug in flamingo-vlm; please report it)"),
        ))
    })
}

/// The inputs of `forward`, already copied out of JavaScript.
pub struct ForwardJob {
    pub vision_x: HostTensor<f32>,
    pub lang_x: HostTensor<i32>,
    pub attention_mask: Option<HostTensor<i32>>,
    pub labels: Option<HostTensor<i32>>,
    pub allow_excess_media_tokens: bool,
}

/// A request to the engine thread.
pub enum Job {
    Forward(ForwardJob, Deferred<crate::ForwardOutput>),
    VisionTokens(HostTensor<f32>, Deferred<FloatTensor>),
    EncodeVision(HostTensor<f32>, Deferred<FloatTensor>),
    /// Start a generation session (vision encoding and prompt) under the job's id.
    GenerateStart(StartJob, Deferred<GenerateStarted>),
    /// Decode up to `.1` tokens of session `.0`.
    GenerateStep(u32, u32, Deferred<GenerateStep>),
    /// Return session `.0`'s sequences and free it.
    GenerateFinish(u32, Deferred<GenerateResult>),
    /// Free session `.0` (if it still exists); nothing to settle.
    GenerateDrop(u32),
    Score(ScoreJob, Deferred<ScoreOutput>),
    /// Free the model (after every job queued before this one) and stop the thread.
    Dispose(Deferred<()>),
}

impl Job {
    /// Rejects the job's Promise without running it (the engine is gone).
    pub fn reject(self, error: BindingError) {
        match self {
            Job::Forward(_, d) => settle(d, Err(error)),
            Job::VisionTokens(_, d) | Job::EncodeVision(_, d) => settle(d, Err(error)),
            Job::Dispose(d) => settle(d, Err(error)),
            Job::GenerateStart(_, d) => settle(d, Err(error)),
            Job::GenerateStep(_, _, d) => settle(d, Err(error)),
            Job::GenerateFinish(_, d) => settle(d, Err(error)),
            Job::GenerateDrop(_) => {}
            Job::Score(_, d) => settle(d, Err(error)),
        }
    }
}

/// What the JS handle learns about a model once it is loaded.
pub struct Loaded {
    pub jobs: Sender<Job>,
    pub summary: serde_json::Value,
    pub report: serde_json::Value,
}

/// The device models run on: CPU, or the first CUDA device in a `cuda` build.
fn engine_device() -> BindingResult<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

fn to_json<T: serde::Serialize>(what: &str, value: &T) -> BindingResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| {
        BindingError::new(
            ERR_ENGINE_PANIC,
            format!("could not describe the {what}: {e}"),
        )
    })
}

/// Starts the engine thread for `spec`. `on_loaded` turns the loaded model's handle into the
/// JS value `load()` resolves with; it runs on the engine thread.
pub fn spawn<T, F>(spec: LoadSpec, deferred: Deferred<T>, on_loaded: F)
where
    T: ToNapiValue + Send + 'static,
    F: FnOnce(Loaded) -> T + Send + 'static,
{
    let (jobs, queue) = mpsc::channel::<Job>();
    // The deferred moves into the thread; if the thread cannot even start we must still
    // settle it, so hand it over through a slot we can take back on failure.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(deferred)));
    let thread_slot = slot.clone();
    let started = std::thread::Builder::new()
        .name("flamingo-engine".into())
        .spawn(move || {
            let Some(deferred) = thread_slot.lock().ok().and_then(|mut s| s.take()) else {
                return;
            };
            let loaded = guarded("load", || {
                let device = engine_device()?;
                // Shared with the generation sessions, which live on this thread too.
                let model = Arc::new(Flamingo::load(&spec, &device)?);
                let summary = to_json("model summary", &model.summary())?;
                let report = to_json("load report", model.report())?;
                Ok((model, device, summary, report))
            });
            match loaded {
                Err(e) => settle(deferred, Err(e)),
                Ok((model, device, summary, report)) => {
                    let handle = on_loaded(Loaded {
                        jobs,
                        summary,
                        report,
                    });
                    settle(deferred, Ok(handle));
                    serve(model, device, queue);
                }
            }
        });
    if let Err(e) = started {
        if let Some(deferred) = slot.lock().ok().and_then(|mut s| s.take()) {
            settle(
                deferred,
                Err(BindingError::new(
                    ERR_ENGINE_PANIC,
                    format!("could not start the engine thread: {e}"),
                )),
            );
        }
    }
}

/// The engine loop: runs jobs until `Dispose` arrives or every handle is gone.
fn serve(model: Arc<Flamingo>, device: Device, queue: Receiver<Job>) {
    let mut sessions = Sessions::default();
    for job in queue {
        match job {
            Job::Forward(input, d) => {
                settle(d, guarded("forward", || forward(&model, &device, input)))
            }
            Job::VisionTokens(x, d) => settle(
                d,
                guarded("visionTokens", || {
                    to_js(&model.vision_tokens(&x.to_tensor(&device)?)?)
                }),
            ),
            Job::EncodeVision(x, d) => settle(
                d,
                guarded("encodeVision", || {
                    to_js(&model.encode_vision(&x.to_tensor(&device)?)?)
                }),
            ),
            Job::GenerateStart(job, d) => settle(
                d,
                guarded("generate", || sessions.start(&model, &device, job)),
            ),
            Job::GenerateStep(id, steps, d) => settle(
                d,
                guarded("generate", || sessions.step(id, steps)).inspect_err(|_| {
                    // A panic leaves the session half-updated: do not step it again.
                    sessions.remove(id)
                }),
            ),
            Job::GenerateFinish(id, d) => settle(d, guarded("generate", || sessions.finish(id))),
            Job::GenerateDrop(id) => sessions.remove(id),
            Job::Score(job, d) => settle(
                d,
                guarded("score", || crate::generate::score(&model, &device, job)),
            ),
            Job::Dispose(d) => {
                sessions.clear();
                drop(model);
                settle(d, Ok(()));
                return;
            }
        }
    }
}

fn forward(
    model: &Flamingo,
    device: &Device,
    job: ForwardJob,
) -> BindingResult<crate::ForwardOutput> {
    let input = ForwardInput {
        vision_x: job.vision_x.to_tensor(device)?,
        lang_x: job.lang_x.to_u32(device)?,
        attention_mask: job.attention_mask.map(|m| m.to_u32(device)).transpose()?,
        labels: job.labels.map(|l| l.to_i64(device)).transpose()?,
        allow_excess_media_tokens: job.allow_excess_media_tokens,
    };
    let out = model.forward(&input)?;
    let loss = match out.loss {
        Some(loss) => Some(f64::from(
            loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?,
        )),
        None => None,
    };
    Ok(crate::ForwardOutput {
        logits: to_js(&out.logits)?,
        loss,
    })
}
