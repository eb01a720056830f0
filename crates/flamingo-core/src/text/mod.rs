//! Text side of OpenFlamingo: the tokenizer with the reference's special-token procedure
//! (spec §2.2 step 3) and the prompt/label formats of its evaluation and training code
//! (spec §6, §7.1–7.2).
//!
//! - [`tokenizer`]: [`FlamingoTokenizer`] over an HF `tokenizer.json`: adds `<|endofchunk|>`,
//!   `<image>` and (only when no pad token exists) `<PAD>` exactly as `factory.py` does, then
//!   encodes/pads/truncates/decodes as `transformers` does, plus a streaming decoder.
//! - [`prompts`]: the exact eval prompt strings, few-shot assembly, output post-processing,
//!   the LAION/MMC4 training texts, label masking, and typed interleaved input ([`Segment`]).

pub mod prompts;
pub mod tokenizer;

pub use prompts::{InterleavedPrompt, Segment};
pub use tokenizer::{
    BatchEncoding, BatchOptions, FlamingoTokenizer, InterleavedEncoding, PaddingSide,
    SpecialTokenSpec, TextStream, TokenizerConfig,
};

/// The media token: one per image, placed right before the image's text (no space after it).
pub const MEDIA_TOKEN: &str = "<image>";
/// Closes the text chunk that belongs to the preceding image; the stop token of generation.
pub const END_OF_CHUNK_TOKEN: &str = "<|endofchunk|>";
/// The pad token the reference adds when the tokenizer has none (GPT-NeoX, LLaMA).
pub const PAD_TOKEN: &str = "<PAD>";
