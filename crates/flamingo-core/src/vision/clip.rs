//! STUB (replaced on merge).
use crate::io::Weights;
use crate::Result;
use candle_core::Tensor;
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}
impl ClipVisionConfig {
    pub fn from_hf_json(_p: &std::path::Path, _r: &serde_json::Value) -> Result<Self> {
        todo!()
    }
}
#[derive(Clone, Debug, Default)]
pub struct VisionOptions {
    pub apply_post_layernorm: bool,
}
pub struct ClipVision {
    cfg: ClipVisionConfig,
}
impl ClipVision {
    pub fn load(_c: &ClipVisionConfig, _w: &Weights, _o: &VisionOptions) -> Result<Self> {
        todo!()
    }
    pub fn forward(&self, _p: &Tensor) -> Result<Tensor> {
        todo!()
    }
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }
}
