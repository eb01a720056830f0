//! Building blocks shared by every model: linear layers, norms, softmax and activations.
//!
//! candle's fused `layer_norm`, `rms_norm` and `softmax_last_dim` silently drop gradients
//! (candle-napi-notes §B4). Each op here picks the fused kernel only when nothing upstream
//! is tracked by autograd (`Tensor::track_op`), and the differentiable composition
//! otherwise, so inference stays fast and training paths get exact gradients without a
//! mode flag threaded through every call.
//!
//! `Linear` likewise keeps frozen weights out of the gradient store: under a tracked input
//! it multiplies by an untracked weight through a custom op whose backward yields only the
//! input's gradient (candle-napi-notes §B5).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, MetalStorage, Module, Shape, Storage,
    Tensor, D,
};

use crate::io::Weights;
use crate::Result;

fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// `y = x Wᵀ (+ b)` over the last dimension of `x`, any number of leading dimensions.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `{name}.weight` of shape `[out, in]`, and `{name}.bias` if `bias`.
    pub fn load(
        w: &Weights,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let w = w.pp(name);
        let weight = w.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = x.reshape((rows, in_dim))?;
        // A frozen weight under a tracked input: candle's matmul backward would also compute
        // and keep a weight-sized gradient until backward ends (candle-napi-notes §B5), for
        // every LM layer after the first cross-attention block. The custom op returns only
        // the input's gradient. Inference (nothing tracked) keeps the plain matmul.
        let frozen_under_tracked_input = flat.track_op()
            && !self.weight.track_op()
            && !MATERIALISE_FROZEN_WEIGHT_GRADS.load(Ordering::Relaxed);
        let mut y = if frozen_under_tracked_input {
            flat.apply_op1(FrozenMatmul {
                weight: self.weight.clone(),
            })?
        } else {
            flat.matmul(&self.weight.t()?)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim();
        Ok(y.reshape(out_dims)?)
    }
}

/// Measurements only: `true` sends frozen weights through candle's plain matmul again, so
/// that their gradient buffers are materialised as before the fix (to report the memory
/// the fix saves). Never set in normal use.
#[doc(hidden)]
pub static MATERIALISE_FROZEN_WEIGHT_GRADS: AtomicBool = AtomicBool::new(false);

/// `x · Wᵀ` for a 2-D `x` `(rows, in)` and a weight `W` `(out, in)` that autograd does not
/// track. The forward is the very storage-level matmul `Tensor::matmul` runs (same kernel,
/// same layouts, so bit-identical results); the backward returns only `grad · W`, so no
/// `(out, in)` gradient is ever allocated for the frozen weight.
struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    /// `(batch, m, n, k)` for candle's `BackendStorage::matmul`, after checking the shapes.
    fn dims(&self, x: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (rows, k) = x.shape().dims2()?;
        let (n, k2) = self.weight.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen linear: input has {k} features, the weight expects {k2}")
        }
        Ok((1, rows, n, k))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(layout)?;
        let wt = self.weight.t()?;
        let (w_storage, w_layout) = wt.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else {
            candle_core::bail!("frozen linear: the input is on the CPU but the weight is not")
        };
        let out = storage.matmul(w, dims, layout, w_layout)?;
        Ok((out, Shape::from((dims.1, dims.2))))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = self.dims(layout)?;
        let wt = self.weight.t()?;
        let (w_storage, w_layout) = wt.storage_and_layout();
        let Storage::Cuda(w) = &*w_storage else {
            candle_core::bail!("frozen linear: the input is on a CUDA device but the weight is not")
        };
        let out = storage.matmul(w, dims, layout, w_layout)?;
        Ok((out, Shape::from((dims.1, dims.2))))
    }

    fn metal_fwd(
        &self,
        storage: &MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        let dims = self.dims(layout)?;
        let wt = self.weight.t()?;
        let (w_storage, w_layout) = wt.storage_and_layout();
        let Storage::Metal(w) = &*w_storage else {
            candle_core::bail!(
                "frozen linear: the input is on a Metal device but the weight is not"
            )
        };
        let out = storage.matmul(w, dims, layout, w_layout)?;
        Ok((out, Shape::from((dims.1, dims.2))))
    }

    /// `d(x Wᵀ)/dx = grad · W`, exactly what candle's matmul backward gives the left operand.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// LayerNorm over the last dimension; `bias` is optional (MPT has none).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64, bias: bool) -> Result<Self> {
        let w = w.pp(name);
        let weight = w.get(dim, "weight")?;
        let bias = if bias {
            Some(w.get(dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let zeros;
        let bias = match &self.bias {
            Some(b) => b,
            None => {
                zeros = self.weight.zeros_like()?;
                &zeros
            }
        };
        if tracked(&[x, &self.weight, bias]) {
            Ok(candle_nn::ops::layer_norm_slow(
                x,
                &self.weight,
                bias,
                self.eps as f32,
            )?)
        } else {
            let x = x.contiguous()?;
            Ok(candle_nn::ops::layer_norm(
                &x,
                &self.weight,
                bias,
                self.eps as f32,
            )?)
        }
    }
}

/// RMSNorm (LLaMA) over the last dimension.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.pp(name).get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if tracked(&[x, &self.weight]) {
            Ok(candle_nn::ops::rms_norm_slow(
                x,
                &self.weight,
                self.eps as f32,
            )?)
        } else {
            let x = x.contiguous()?;
            Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
        }
    }
}

/// Softmax over the last dimension, computed in the input dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
}

/// QuickGELU `x·σ(1.702x)`, used by OpenAI's CLIP weights.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let s = (x * 1.702)?;
    let sig = (s.neg()?.exp()? + 1.0)?.recip()?;
    Ok((x * sig)?)
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::Activation::Silu.forward(x)?)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.relu()?)
}

/// An activation named the way HF configs name them (`hidden_act`, `activation_function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    QuickGelu,
    Silu,
    Relu,
}

impl Activation {
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => gelu_erf(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::QuickGelu => quick_gelu(x),
            Activation::Silu => silu(x),
            Activation::Relu => relu(x),
        }
    }
}

/// Embedding lookup: `table[ids]` for ids of any shape.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let dims = ids.dims().to_vec();
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    let rows = table.index_select(&flat, 0)?;
    let mut out = dims;
    out.push(table.dim(1)?);
    Ok(rows.reshape(out)?)
}
