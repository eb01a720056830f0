//! The Flamingo bridge: Perceiver resampler, gated cross-attention, the layer plan, and the
//! composition of vision tower, resampler and LM into one model.

pub mod config;
pub mod cross_attn;
pub mod model;
pub mod perceiver;
