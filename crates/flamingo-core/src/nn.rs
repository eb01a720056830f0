//! Building blocks shared by every model: linear layers, norms, softmax and activations.
//!
//! candle's fused `layer_norm`, `rms_norm` and `softmax_last_dim` silently drop gradients
//! (candle-napi-notes §B4). Each op here picks the fused kernel only when nothing upstream
//! is tracked by autograd (`Tensor::track_op`), and the differentiable composition
//! otherwise, so inference stays fast and training paths get exact gradients without a
//! mode flag threaded through every call.

use candle_core::{DType, Module, Tensor, D};

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
        let mut y = flat.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim();
        Ok(y.reshape(out_dims)?)
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
