//! Placeholder: being implemented.

use std::path::Path;

use candle_core::Tensor;

use crate::io::Weights;
use crate::lm::{AttentionContext, CausalLm, LayerKv, LmInfo, LmLoadOptions};
use crate::{Error, Result};

pub struct Llama {
    info: LmInfo,
    embeddings: Tensor,
}

impl Llama {
    pub fn load(
        cfg_path: &Path,
        _raw: &serde_json::Value,
        _weights: &Weights,
        _opts: &LmLoadOptions,
    ) -> Result<Self> {
        Err(Error::config(cfg_path, "not implemented yet"))
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &LmInfo {
        &self.info
    }
    fn embed(&self, _ids: &Tensor, _ctx: &AttentionContext) -> Result<Tensor> {
        unimplemented!()
    }
    fn layer(
        &self,
        _i: usize,
        _h: &Tensor,
        _ctx: &AttentionContext,
        _c: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        unimplemented!()
    }
    fn head(&self, _h: &Tensor) -> Result<Tensor> {
        unimplemented!()
    }
    fn input_embeddings(&self) -> &Tensor {
        &self.embeddings
    }
}
