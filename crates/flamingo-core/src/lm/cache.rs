//! The explicit, resettable key/value cache shared by every decoder family.

use candle_core::{Tensor, D};

use crate::Result;

/// One layer's cached keys and values, each `(B, H_kv, S, head_dim)`.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub kv: Option<(Tensor, Tensor)>,
}

impl LayerKv {
    /// Appends this step's `k`, `v` (`(B, H_kv, T, head_dim)`) and returns the full cache.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.kv {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (
                Tensor::cat(&[pk, k], D::Minus2)?,
                Tensor::cat(&[pv, v], D::Minus2)?,
            ),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    pub fn seq_len(&self) -> usize {
        self.kv
            .as_ref()
            .map(|(k, _)| k.dim(D::Minus2).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// The KV cache of a whole decoder stack.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); num_layers],
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn seq_len(&self) -> usize {
        self.layers.first().map(|l| l.seq_len()).unwrap_or(0)
    }

    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.kv = None;
        }
    }

    /// Reorders the batch dimension (beam search): row `i` becomes old row `indices[i]`.
    pub fn reorder(&mut self, indices: &Tensor) -> Result<()> {
        for l in &mut self.layers {
            if let Some((k, v)) = &l.kv {
                l.kv = Some((k.index_select(indices, 0)?, v.index_select(indices, 0)?));
            }
        }
        Ok(())
    }
}
