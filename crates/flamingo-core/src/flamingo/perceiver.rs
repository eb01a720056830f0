//! STUB (replaced on merge).
use crate::flamingo::config::PerceiverConfig;
use crate::io::Weights;
use crate::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
pub struct PerceiverResampler;
impl PerceiverResampler {
    pub fn load(_w: &Weights, _d: usize, _c: &PerceiverConfig) -> Result<Self> {
        todo!()
    }
    pub fn init_tensors(
        _d: usize,
        _c: &PerceiverConfig,
        _s: u64,
        _dev: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        todo!()
    }
    pub fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        todo!()
    }
}
