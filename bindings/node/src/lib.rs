//! flamingo-vlm-node: the N-API surface (napi-rs) of flamingo-core, the thin native layer
//! under the `flamingo-vlm` npm package.
//!
//! It holds no model logic: options arrive already validated and planned by the TypeScript
//! layer (which decides the cross-attention layer plan), are converted into the core's
//! `LoadSpec`/`ForwardInput`, and results go back as typed arrays. Every computing call
//! returns a Promise settled by the model's engine thread (`engine.rs` explains why a
//! dedicated thread); failures reject with a JS `Error` whose `code` is the core's
//! `Error::code()` (`error.rs`).

mod engine;
mod error;
mod generate;
pub mod image;
mod tensor;
pub mod text;
mod train;

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::LoadSpec;
use napi::bindgen_prelude::PromiseRaw;
use napi::{Env, JsValue};
use napi_derive::napi;

use crate::engine::{settle, Deferred, ForwardJob, Job};
use crate::error::{BindingError, BindingResult};
use crate::tensor::{FloatTensor, HostTensor, IntTensor};

/// The version of this native binding (the crate version), for the loader's sanity check.
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `FlamingoModel.load` options: the core's `LoadSpec`, with the layer plan already decided.
#[napi(object)]
pub struct LoadOptions {
    /// HF CLIP vision folder (`config.json` + weights).
    pub vision_dir: String,
    /// HF causal-LM folder (`config.json` + weights).
    pub lm_dir: String,
    /// OpenFlamingo checkpoint (`.pt` or `.safetensors`); absent: fresh initialisation.
    pub checkpoint: Option<String>,
    pub media_token_id: u32,
    pub end_of_chunk_token_id: u32,
    /// LM layer indices that get a gated cross-attention block before them.
    pub cross_attn_layers: Vec<u32>,
    /// The decoder-layers path the caller inferred (e.g. `model.layers`); checked by the core.
    pub decoder_layers_path: Option<String>,
    /// `PerceiverConfig` fields (camelCase); missing ones take the reference defaults.
    pub perceiver: Option<serde_json::Value>,
    /// `CrossAttnConfig` fields (camelCase); missing ones take the reference defaults.
    pub cross_attn: Option<serde_json::Value>,
    pub vision_post_layernorm: Option<bool>,
    pub vocab_size: Option<u32>,
    pub strict: Option<bool>,
    pub init_seed: Option<i64>,
}

/// `forward` inputs. Ids, mask and labels are `Int32Array`s (labels use −100 for "ignore").
#[napi(object)]
pub struct ForwardInput {
    /// `(B, T_img, F, 3, H, W)`.
    pub vision_x: FloatTensor,
    /// `(B, T)`.
    pub lang_x: IntTensor,
    pub attention_mask: Option<IntTensor>,
    pub labels: Option<IntTensor>,
    pub allow_excess_media_tokens: Option<bool>,
}

#[napi(object)]
pub struct ForwardOutput {
    /// `(B, T, V)`.
    pub logits: FloatTensor,
    /// Mean shifted cross-entropy, when labels were given.
    pub loss: Option<f64>,
}

fn config_from<T: serde::de::DeserializeOwned + Default>(
    what: &str,
    value: Option<serde_json::Value>,
) -> BindingResult<T> {
    match value {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| BindingError::invalid_input(format!("invalid {what} options: {e}"))),
    }
}

impl LoadOptions {
    fn into_spec(self) -> BindingResult<LoadSpec> {
        let init_seed = match self.init_seed {
            None => 0,
            Some(s) => u64::try_from(s).map_err(|_| {
                BindingError::invalid_input(format!("seed must be a non-negative integer, got {s}"))
            })?,
        };
        Ok(LoadSpec {
            vision_dir: PathBuf::from(self.vision_dir),
            lm_dir: PathBuf::from(self.lm_dir),
            checkpoint: self.checkpoint.map(PathBuf::from),
            media_token_id: self.media_token_id,
            end_of_chunk_token_id: self.end_of_chunk_token_id,
            cross_attn_layers: self.cross_attn_layers.iter().map(|&i| i as usize).collect(),
            decoder_layers_path: self.decoder_layers_path,
            perceiver: config_from::<PerceiverConfig>("perceiver", self.perceiver)?,
            cross_attn: config_from::<CrossAttnConfig>("cross-attention block", self.cross_attn)?,
            vision_post_layernorm: self.vision_post_layernorm.unwrap_or(false),
            vocab_size: self.vocab_size.map(|v| v as usize),
            strict: self.strict.unwrap_or(false),
            init_seed,
        })
    }
}

/// A new pending Promise and the deferred that settles it.
fn promise<'env, T: napi::bindgen_prelude::ToNapiValue + Send + 'static>(
    env: &'env Env,
) -> napi::Result<(Deferred<T>, PromiseRaw<'env, T>)> {
    let (deferred, promise) = env.create_deferred()?;
    Ok((deferred, PromiseRaw::new(env.raw(), promise.raw())))
}

/// A loaded model. Made by `FlamingoModel.load`; freed by `dispose()` (or when collected).
#[napi]
pub struct FlamingoModel {
    /// The engine thread's queue; `None` once disposed.
    jobs: Mutex<Option<Sender<Job>>>,
    summary: serde_json::Value,
    report: serde_json::Value,
    /// Abort flags of the running generations and scoring calls (`generate.rs`).
    operations: Mutex<generate::AbortFlags>,
}

#[napi]
impl FlamingoModel {
    /// Loads a model on a new engine thread. Resolves once the weights are loaded.
    #[napi]
    pub fn load<'env>(
        env: &'env Env,
        options: LoadOptions,
    ) -> napi::Result<PromiseRaw<'env, FlamingoModel>> {
        let (deferred, promise) = promise::<FlamingoModel>(env)?;
        match options.into_spec() {
            Err(e) => settle(deferred, Err(e)),
            Ok(spec) => engine::spawn(spec, deferred, |loaded| FlamingoModel {
                jobs: Mutex::new(Some(loaded.jobs)),
                summary: loaded.summary,
                report: loaded.report,
                operations: Mutex::default(),
            }),
        }
        Ok(promise)
    }

    /// Queues `job` on the engine thread, or rejects it when the model is disposed.
    fn submit(&self, job: Job) {
        let sender = self.jobs.lock().ok().and_then(|s| s.clone());
        match sender {
            None => job.reject(BindingError::disposed()),
            Some(sender) => {
                if let Err(returned) = sender.send(job) {
                    returned.0.reject(BindingError::new(
                        error::ERR_ENGINE_PANIC,
                        "the model's engine thread has stopped; load the model again",
                    ));
                }
            }
        }
    }

    /// One forward pass: logits for every position, and the loss when labels are given.
    #[napi]
    pub fn forward<'env>(
        &self,
        env: &'env Env,
        input: ForwardInput,
    ) -> napi::Result<PromiseRaw<'env, ForwardOutput>> {
        let (deferred, promise) = promise::<ForwardOutput>(env)?;
        let job = (|| -> BindingResult<ForwardJob> {
            Ok(ForwardJob {
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
            })
        })();
        match job {
            Err(e) => settle(deferred, Err(e)),
            Ok(job) => self.submit(Job::Forward(job, deferred)),
        }
        Ok(promise)
    }

    /// CLIP patch tokens `(B, T_img, F, P, Dv)`: what the Perceiver reads.
    #[napi]
    pub fn vision_tokens<'env>(
        &self,
        env: &'env Env,
        vision_x: FloatTensor,
    ) -> napi::Result<PromiseRaw<'env, FloatTensor>> {
        let (deferred, promise) = promise::<FloatTensor>(env)?;
        match HostTensor::<f32>::from_js("visionX", &vision_x) {
            Err(e) => settle(deferred, Err(e)),
            Ok(x) => self.submit(Job::VisionTokens(x, deferred)),
        }
        Ok(promise)
    }

    /// Vision tower and Perceiver resampler: `(B, T_img, latents, Dv)`.
    #[napi]
    pub fn encode_vision<'env>(
        &self,
        env: &'env Env,
        vision_x: FloatTensor,
    ) -> napi::Result<PromiseRaw<'env, FloatTensor>> {
        let (deferred, promise) = promise::<FloatTensor>(env)?;
        match HostTensor::<f32>::from_js("visionX", &vision_x) {
            Err(e) => settle(deferred, Err(e)),
            Ok(x) => self.submit(Job::EncodeVision(x, deferred)),
        }
        Ok(promise)
    }

    /// Sizes and the layer plan (the core's `ModelSummary`). Still readable after dispose.
    #[napi]
    pub fn summary(&self) -> serde_json::Value {
        self.summary.clone()
    }

    /// What loading found in the checkpoint (the core's `LoadReport`).
    #[napi]
    pub fn report(&self) -> serde_json::Value {
        self.report.clone()
    }

    /// Whether `dispose()` has been called.
    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.jobs.lock().map(|s| s.is_none()).unwrap_or(true)
    }

    /// Frees the model once the calls made before this one have finished; later calls reject
    /// with `ERR_DISPOSED`. Resolves when the memory is released. Calling it again is a no-op.
    #[napi]
    pub fn dispose<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        dispose_handle(env, &self.jobs, Job::Dispose, |job| match job {
            Job::Dispose(d) => Some(d),
            _ => None,
        })
    }
}

/// `dispose()` of a handle whose work runs on its own thread (a model, a trainer): takes its
/// job channel, so later calls reject, and resolves once the thread has dropped its state —
/// at once when the handle is already closed or its thread is gone. `as_dispose` makes the
/// thread's dispose job; `take_back` recovers the Promise from a job the thread never got.
pub(crate) fn dispose_handle<'env, J>(
    env: &'env Env,
    jobs: &Mutex<Option<Sender<J>>>,
    as_dispose: fn(Deferred<()>) -> J,
    take_back: fn(J) -> Option<Deferred<()>>,
) -> napi::Result<PromiseRaw<'env, ()>> {
    let (deferred, promise) = promise::<()>(env)?;
    let sender = jobs.lock().ok().and_then(|mut s| s.take());
    match sender {
        None => settle(deferred, Ok(())),
        Some(sender) => {
            if let Err(returned) = sender.send(as_dispose(deferred)) {
                // The thread is already gone, and the state with it.
                if let Some(d) = take_back(returned.0) {
                    settle(d, Ok(()));
                }
            }
        }
    }
    Ok(promise)
}

/// The CUDA devices this build can use: always 0 in a CPU build; in a CUDA build, what the
/// driver reports (0 when no driver or device is there). The TypeScript loader asks before it
/// picks a CUDA build, and falls back to the CPU build when this is 0.
#[napi]
pub fn cuda_device_count() -> u32 {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
            .map(|n| n.max(0) as u32)
            .unwrap_or(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}
