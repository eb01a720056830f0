//! Decoding options, validated once before any compute.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to decode. Defaults follow HF `generate` (greedy, 20 new tokens) with OpenFlamingo's
/// stop token (`<|endofchunk|>`, filled in by the caller when `eos_token_ids` is empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// The stop tokens are suppressed until this many tokens were generated.
    pub min_new_tokens: usize,
    /// 1: greedy or sampling; > 1: beam search.
    pub num_beams: usize,
    /// Beam scores are divided by `generated_len ^ length_penalty` (0 in the reference's eval).
    pub length_penalty: f64,
    /// Beam search stops as soon as `num_beams` hypotheses finished (HF `early_stopping=True`).
    pub early_stopping: bool,
    /// Sequences returned per prompt (≤ num_beams for beam search).
    pub num_return_sequences: usize,
    pub do_sample: bool,
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f64,
    pub seed: u64,
    /// CTRL-style penalty on tokens already in the sequence (1.0 disables).
    pub repetition_penalty: f64,
    /// Bans repeating any n-gram of this size (0 disables).
    pub no_repeat_ngram_size: usize,
    /// Token ids that end a sequence; empty means `<|endofchunk|>`.
    pub eos_token_ids: Vec<u32>,
    /// Written after a row finished, and as the filler of shorter beams.
    pub pad_token_id: Option<u32>,
    /// Allow the model to generate `<image>` (the reference does; then rows that do lose
    /// their image attention, spec §4.4). Off by default.
    pub allow_media_token: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: false,
            num_return_sequences: 1,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            allow_media_token: false,
        }
    }
}

impl GenerationConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.max_new_tokens == 0 {
            return bad("maxNewTokens must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "minNewTokens ({}) cannot exceed maxNewTokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if self.num_beams == 0 {
            return bad("numBeams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("numReturnSequences must be at least 1".into());
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "numReturnSequences ({}) cannot exceed numBeams ({})",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.num_beams == 1 && !self.do_sample && self.num_return_sequences > 1 {
            return bad(
                "greedy decoding returns one sequence; use numBeams or doSample for more".into(),
            );
        }
        if self.num_beams > 1 && self.do_sample {
            return bad(
                "beam sampling is not supported: use numBeams > 1 or doSample, not both".into(),
            );
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("topP must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetitionPenalty must be a positive number, got {}",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad("lengthPenalty must be finite".into());
        }
        Ok(())
    }
}
