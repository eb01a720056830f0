//! flamingo-core: OpenFlamingo-style vision-language models on candle.
//!
//! A frozen CLIP vision tower and a frozen causal LM, bridged by a trainable Perceiver
//! resampler and gated cross-attention blocks injected before chosen decoder layers.
//! Pure Rust, no Node types: the N-API binding in `bindings/node` is a thin layer over this.

pub mod data;
pub mod demo;
pub mod error;
pub mod flamingo;
pub mod generate;
pub mod image;
pub mod io;
pub mod lm;
pub mod nn;
pub mod text;
pub mod train;
pub mod vision;

pub use error::{Error, Result};
