//! STUB (replaced on merge).
use crate::flamingo::config::CrossAttnConfig;
use crate::io::Weights;
use crate::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
pub struct MediaKv {
    pub k: Tensor,
    pub v: Tensor,
    pub num_media: usize,
    pub latents_per_media: usize,
}
pub struct GatedCrossAttentionBlock;
impl GatedCrossAttentionBlock {
    pub fn load(_w: &Weights, _d: usize, _dv: usize, _c: &CrossAttnConfig) -> Result<Self> {
        todo!()
    }
    pub fn init_tensors(
        _d: usize,
        _dv: usize,
        _c: &CrossAttnConfig,
        _s: u64,
        _dev: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        todo!()
    }
    pub fn media_kv(&self, _m: &Tensor) -> Result<MediaKv> {
        todo!()
    }
    pub fn forward(&self, _x: &Tensor, _m: &MediaKv, _t: &Tensor) -> Result<Tensor> {
        todo!()
    }
}
