//! Weight and config I/O: tensor sources (safetensors, PyTorch pickles, memory), the
//! `Weights` view models load from, and HF folder layouts.

pub mod pickle;
pub mod weights;

pub mod checkpoint;
pub mod hf;

pub use weights::{MemoryTensors, Overlay, SafetensorsFiles, TensorSource, Weights};
