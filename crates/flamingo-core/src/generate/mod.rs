//! Generation: KV-cached decoding with greedy search, beam search and sampling over a
//! `Flamingo` model, driven one step (or a small chunk of steps) at a time so a caller can
//! stream tokens and cancel between steps.
//!
//! Reference semantics (spec §4.4): images are encoded once; the prompt pass uses the
//! running `<image>` count; every later token attends to the last image of its row's
//! prompt; beams repeat each sample's media (interleaved); the default stop token is
//! `<|endofchunk|>`.

pub mod beam;
pub mod config;
pub mod logits;
pub mod score;
pub mod session;

pub use config::GenerationConfig;
pub use score::{score_continuations, ContinuationScore};
pub use session::{GenerationResult, GenerationSession, StepOutput};
