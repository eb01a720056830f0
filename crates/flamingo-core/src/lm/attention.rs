//! Attention context (positions and masks derived from the padding mask) and the scaled
//! dot-product attention every decoder family uses.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::nn::softmax_last_dim;
use crate::Result;

/// Added to the scores of keys a query may not see. Finite (not −inf) so that a fully
/// masked row (a left-pad query) gives a uniform softmax instead of NaNs that would leak
/// through `0 · NaN` into real rows.
pub const MASKED_SCORE: f32 = -1e30;

/// Per-forward attention inputs shared by every layer.
#[derive(Clone, Debug)]
pub struct AttentionContext {
    /// Position of each new token `(B, T)` as u32, counted over real (unmasked) tokens only,
    /// so left-padded rows start at 0 (HF: `cumsum(mask) − 1`, pads set to 1).
    pub positions: Tensor,
    /// Additive mask `(B, 1, T, S)` over all `S = past + T` keys: causal and padding.
    pub mask: Tensor,
    /// Number of keys already in the cache before this forward.
    pub past_len: usize,
    /// New tokens in this forward.
    pub seq_len: usize,
    /// Per-forward tensors every layer would otherwise rebuild (the mask in the compute
    /// dtype, ALiBi biases). Building them once matters on a GPU: candle's `arange` and
    /// `from_vec` copy from the host, and each such copy waits for the device's queue to
    /// drain, so per-layer rebuilds serialised every decode step (docs/CUDA.md).
    memo: Arc<Mutex<Vec<MemoEntry>>>,
}

/// A memoized tensor with its key and dtype.
type MemoEntry = (&'static str, DType, Tensor);

impl AttentionContext {
    /// `attention_mask` is `(B, past + T)` with 1 for real tokens and 0 for padding, covering
    /// the cached keys and the `T` new tokens.
    pub fn new(
        attention_mask: &[Vec<u32>],
        past_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let b = attention_mask.len();
        let total = attention_mask.first().map(|r| r.len()).unwrap_or(0);
        let t = total.saturating_sub(past_len);
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t * total);
        for row in attention_mask {
            let mut count: i64 = 0;
            let mut pos_row = Vec::with_capacity(total);
            for &m in row {
                count += (m != 0) as i64;
                pos_row.push(if m != 0 { (count - 1) as u32 } else { 1 });
            }
            positions.extend_from_slice(&pos_row[past_len..]);
            for i in 0..t {
                let q = past_len + i;
                for (j, &m) in row.iter().enumerate() {
                    let visible = j <= q && m != 0;
                    mask.push(if visible { 0.0f32 } else { MASKED_SCORE });
                }
            }
        }
        let positions = Tensor::from_vec(positions, (b, t), device)?;
        let mask = Tensor::from_vec(mask, (b, 1, t, total), device)?.to_dtype(dtype)?;
        Ok(Self {
            positions,
            mask,
            past_len,
            seq_len: t,
            memo: Arc::default(),
        })
    }

    /// The tensor `build` makes, built once per context for each `(key, dtype)` and shared by
    /// every layer that asks. Keys name what is cached; the builder must depend only on this
    /// context (and the model's constant weights).
    pub fn memoized(
        &self,
        key: &'static str,
        dtype: DType,
        build: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        // The lock is not held while building: a builder may ask for another memoized tensor
        // (the ALiBi sum asks for the mask). A poisoned lock only means a builder panicked
        // elsewhere; the entries stay valid.
        let lock = || self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, t)) = lock().iter().find(|(k, d, _)| *k == key && *d == dtype) {
            return Ok(t.clone());
        }
        let t = build()?;
        lock().push((key, dtype, t.clone()));
        Ok(t)
    }

    /// The additive mask in `dtype` (see [`mask_in_dtype`]), converted once per context.
    pub fn mask_in(&self, dtype: DType) -> Result<Tensor> {
        self.memoized("mask", dtype, || mask_in_dtype(&self.mask, dtype))
    }

    /// All tokens real, no cache: positions `0..T`.
    pub fn unpadded(batch: usize, seq_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let rows = vec![vec![1u32; seq_len]; batch];
        Self::new(&rows, 0, dtype, device)
    }
}

/// `softmax(q kᵀ · scale + mask [+ bias]) v` for `q` `(B, H, T, d)`, `k`/`v` `(B, H, S, d)`.
/// `bias` (e.g. ALiBi) broadcasts against the `(B, H, T, S)` scores.
pub fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let q = q.contiguous()?;
    let kt = k.t()?.contiguous()?;
    let mut scores = (q.matmul(&kt)? * scale)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let scores = scores.broadcast_add(mask)?;
    let probs = softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Repeats each of `n_kv` key/value heads `n_rep` times (GQA): `(B, n_kv, S, d)` → `(B, n_kv·n_rep, S, d)`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, n_kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, n_kv, n_rep, s, d))?
        .reshape((b, n_kv * n_rep, s, d))?)
}

/// The additive mask in the scores' dtype. candle refuses mixed-dtype adds, and the
/// composition builds the mask in f32. In f16, `MASKED_SCORE` would become −inf (f16 tops
/// out at 65504), turning fully masked left-pad rows into NaNs that then leak into real rows
/// through `0 · NaN`; half of f16's range still zeroes a key after softmax and leaves
/// headroom for the scores and ALiBi biases added to it.
pub fn mask_in_dtype(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    if mask.dtype() == dtype {
        return Ok(mask.clone());
    }
    let mask = if dtype == DType::F16 {
        mask.to_dtype(DType::F32)?.maximum(-32752f64)?
    } else {
        mask.clone()
    };
    Ok(mask.to_dtype(dtype)?)
}
