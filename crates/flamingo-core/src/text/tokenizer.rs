//! `FlamingoTokenizer`: an HF `tokenizer.json` with OpenFlamingo's special-token procedure
//! (`open_flamingo/src/factory.py`, spec §2.2 step 3) and the encode/pad/truncate/decode
//! behaviour of `transformers`' fast tokenizers, which the reference calls.
//!
//! What is read, and from where (everything optional except `tokenizer.json`):
//! - `tokenizer.json`: the model, normalizer, pre-tokenizer, post-processor (which decides
//!   BOS/EOS: LLaMA and OPT files prepend BOS, GPT-NeoX adds nothing), decoder and added
//!   tokens. Its `padding.pad_token` defines a pad token and its `padding.direction` /
//!   `truncation.direction` the default sides, as `PreTrainedTokenizerFast.__init__` does.
//! - `tokenizer_config.json` beside it: `bos_token`, `eos_token`, `unk_token`, `sep_token`,
//!   `pad_token`, `cls_token`, `mask_token`, `additional_special_tokens` (strings or
//!   `AddedToken` objects), `add_bos_token` / `add_eos_token`, `padding_side`,
//!   `truncation_side`, `clean_up_tokenization_spaces`, `model_max_length`.
//! - `special_tokens_map.json` beside it: the same token keys. It fills keys that
//!   `tokenizer_config.json` lacks; it overrides them only for files without
//!   `added_tokens_decoder` (transformers' legacy loading path, the one older hub repos take).
//!
//! Not supported: slow-only tokenizers (`tokenizer.model`, `vocab.json` + `merges.txt`
//! without a `tokenizer.json`: save the fast tokenizer once from Python), `added_tokens.json`,
//! and `added_tokens_decoder` entries that `tokenizer.json` does not already contain.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, PostProcessor, Tokenizer, TruncationDirection};

use crate::text::prompts::{interleaved_prompt, Segment};
use crate::text::{END_OF_CHUNK_TOKEN, MEDIA_TOKEN, PAD_TOKEN};
use crate::{Error, Result};

/// Which end of a row receives padding. The reference pads on the **left** for evaluation and
/// generation (so every row's last token is its newest) and on the **right** for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    Left,
    Right,
}

/// A special token as `tokenizer_config.json` / `special_tokens_map.json` write it: a plain
/// string, or a serialised `AddedToken` (`{"content": "<s>", "lstrip": false, …}`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SpecialTokenSpec {
    Content(String),
    Added {
        content: String,
        #[serde(default)]
        lstrip: bool,
        #[serde(default)]
        rstrip: bool,
        #[serde(default)]
        single_word: bool,
        /// Special tokens default to matching the raw text (`AddedToken(special=True)`).
        #[serde(default)]
        normalized: bool,
    },
}

impl SpecialTokenSpec {
    pub fn content(&self) -> &str {
        match self {
            SpecialTokenSpec::Content(c) => c,
            SpecialTokenSpec::Added { content, .. } => content,
        }
    }

    fn to_added_token(&self) -> AddedToken {
        match self {
            SpecialTokenSpec::Content(c) => AddedToken::from(c.clone(), true),
            SpecialTokenSpec::Added {
                content,
                lstrip,
                rstrip,
                single_word,
                normalized,
            } => AddedToken::from(content.clone(), true)
                .lstrip(*lstrip)
                .rstrip(*rstrip)
                .single_word(*single_word)
                .normalized(*normalized),
        }
    }
}

/// The keys of `tokenizer_config.json` (and `special_tokens_map.json`) this crate honours.
/// Field names mirror the HF files; unknown keys are ignored.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub bos_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub eos_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub unk_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub sep_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub pad_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub cls_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub mask_token: Option<SpecialTokenSpec>,
    #[serde(default)]
    pub additional_special_tokens: Option<Vec<SpecialTokenSpec>>,
    /// When present, rebuilds the post-processor so that BOS is (not) prepended, as
    /// `update_post_processor()` does in transformers. Absent: `tokenizer.json` decides.
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    #[serde(default)]
    pub add_eos_token: Option<bool>,
    #[serde(default)]
    pub padding_side: Option<PaddingSide>,
    #[serde(default)]
    pub truncation_side: Option<PaddingSide>,
    /// transformers' `clean_up_tokenization` after decoding (" ." → "." and the like).
    /// Absent means `true`, the default of the transformers releases the reference ran on
    /// (4.28–4.44; the GPT-NeoX-20B tokenizer files do not set it).
    #[serde(default)]
    pub clean_up_tokenization_spaces: Option<bool>,
    /// The truncation cap when truncation is asked for without a `max_length`.
    #[serde(default)]
    pub model_max_length: Option<f64>,
    /// Only its presence matters: it marks files written by transformers ≥ 4.34, whose
    /// loader ignores `special_tokens_map.json`.
    #[serde(default)]
    pub added_tokens_decoder: Option<serde_json::Value>,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json` and `special_tokens_map.json` from `dir` where present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let mut config: TokenizerConfig = if config_path.is_file() {
            read_config(&config_path)?
        } else {
            TokenizerConfig::default()
        };
        let map_path = dir.join("special_tokens_map.json");
        if map_path.is_file() {
            let map: TokenizerConfig = read_config(&map_path)?;
            config.merge_special_tokens_map(map);
        }
        Ok(config)
    }

    /// Applies `special_tokens_map.json` on top of `tokenizer_config.json` (see the module doc).
    pub fn merge_special_tokens_map(&mut self, map: TokenizerConfig) {
        let legacy = self.added_tokens_decoder.is_none();
        let merge = |mine: &mut Option<SpecialTokenSpec>, theirs: Option<SpecialTokenSpec>| {
            if theirs.is_some() && (legacy || mine.is_none()) {
                *mine = theirs;
            }
        };
        merge(&mut self.bos_token, map.bos_token);
        merge(&mut self.eos_token, map.eos_token);
        merge(&mut self.unk_token, map.unk_token);
        merge(&mut self.sep_token, map.sep_token);
        merge(&mut self.pad_token, map.pad_token);
        merge(&mut self.cls_token, map.cls_token);
        merge(&mut self.mask_token, map.mask_token);
        if let Some(extra) = map.additional_special_tokens {
            let list = self.additional_special_tokens.get_or_insert_with(Vec::new);
            for token in extra {
                if !list.iter().any(|t| t.content() == token.content()) {
                    list.push(token);
                }
            }
        }
    }
}

fn read_config(path: &Path) -> Result<TokenizerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// Options of a batch encode; the defaults are transformers' `tokenizer(texts, padding="longest")`.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// `None`: the tokenizer's default side (`padding_side` in the config, else right).
    pub padding_side: Option<PaddingSide>,
    /// Cut each row to `max_length` tokens, special tokens included (HF `truncation=True`).
    /// Without `max_length` the config's `model_max_length` is the cap, if it has one.
    pub truncation: bool,
    /// The truncation cap and, with `pad_to_max_length`, the padded width.
    pub max_length: Option<usize>,
    /// Pad every row to `max_length` (HF `padding="max_length"`, the MMC4 trainer's choice)
    /// instead of to the longest row. Rows longer than that (without truncation) set the width.
    pub pad_to_max_length: bool,
    /// Let the post-processor add BOS/EOS (HF `add_special_tokens=True`).
    pub add_special_tokens: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            padding_side: None,
            truncation: false,
            max_length: None,
            pad_to_max_length: false,
            add_special_tokens: true,
        }
    }
}

/// Padded token rows, ready for `Flamingo::forward_tokens` or `to_tensors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEncoding {
    /// `(B, T)` ids; padding positions hold the pad token id.
    pub input_ids: Vec<Vec<u32>>,
    /// `(B, T)`: 1 for tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

impl BatchEncoding {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The padded width `T`.
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// `(B, T)` u32 tensors: ids and attention mask.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (self.len(), self.seq_len());
        let ids = Tensor::from_vec(self.input_ids.concat(), shape, device)?;
        let mask = Tensor::from_vec(self.attention_mask.concat(), shape, device)?;
        Ok((ids, mask))
    }
}

/// One interleaved prompt, tokenized: `<image>` ids appear in `input_ids` in the order of
/// `image_order` (indices into the caller's images).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterleavedEncoding {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub image_order: Vec<usize>,
}

struct Inner {
    tokenizer: Tokenizer,
    media_token_id: u32,
    end_of_chunk_token_id: u32,
    pad_token_id: u32,
    pad_token: String,
    added_pad_token: bool,
    eos_token_id: u32,
    eos_token: String,
    bos_token_id: Option<u32>,
    bos_token: Option<String>,
    padding_side: PaddingSide,
    truncation_side: TruncationDirection,
    clean_up_tokenization_spaces: bool,
    model_max_length: Option<usize>,
}

/// The reference's tokenizer after `create_model_and_transforms` has added its tokens.
/// Cheap to clone (the vocabulary is shared); `Send + Sync`.
#[derive(Clone)]
pub struct FlamingoTokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FlamingoTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("FlamingoTokenizer")
            .field("len", &self.len())
            .field("media_token_id", &i.media_token_id)
            .field("end_of_chunk_token_id", &i.end_of_chunk_token_id)
            .field("pad_token_id", &i.pad_token_id)
            .field("eos_token_id", &i.eos_token_id)
            .field("bos_token_id", &i.bos_token_id)
            .finish()
    }
}

/// Well-known EOS spellings, used only when no config names `eos_token`: GPT-NeoX/GPT-2
/// (whose tokenizer classes default to `<|endoftext|>`), LLaMA/OPT, LLaMA-3, Gemma.
const FALLBACK_EOS: [&str; 4] = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"];

impl FlamingoTokenizer {
    /// Loads `dir/tokenizer.json` (and the config files beside it).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json`, reading `tokenizer_config.json` and
    /// `special_tokens_map.json` from the same folder where present.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let config = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => TokenizerConfig::from_dir(dir)?,
            _ => TokenizerConfig::from_dir(Path::new("."))?,
        };
        Self::build(&bytes, config, path)
    }

    /// Builds from the bytes of a `tokenizer.json` and an already-parsed config.
    pub fn from_bytes(tokenizer_json: &[u8], config: TokenizerConfig) -> Result<Self> {
        Self::build(
            tokenizer_json,
            config,
            Path::new("tokenizer.json (in memory)"),
        )
    }

    fn build(json: &[u8], config: TokenizerConfig, origin: &Path) -> Result<Self> {
        let mut tok = parse_tokenizer_json(json, origin)?;
        let err = |what: &str, e: tokenizers::Error| Error::config(origin, format!("{what}: {e}"));

        // transformers reads these before dropping them: the `padding` section defines a pad
        // token (`kwargs.setdefault("pad_token", padding["pad_token"])`) and default sides.
        let json_pad = tok.get_padding().map(|p| p.pad_token.clone());
        let json_padding_side = tok.get_padding().map(|p| match p.direction {
            tokenizers::PaddingDirection::Left => PaddingSide::Left,
            tokenizers::PaddingDirection::Right => PaddingSide::Right,
        });
        let json_truncation_side = tok.get_truncation().map(|t| t.direction);
        // Padding and truncation are decided per call, as transformers' `__call__` does.
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| err("cannot clear truncation", e))?;

        let pad_spec = config
            .pad_token
            .clone()
            .or_else(|| json_pad.map(SpecialTokenSpec::Content));

        // transformers registers every declared special token that is not yet an added token
        // (an id of its own if the vocabulary lacks it), in `SPECIAL_TOKENS_ATTRIBUTES` order.
        let declared = [
            &config.bos_token,
            &config.eos_token,
            &config.unk_token,
            &config.sep_token,
            &pad_spec,
            &config.cls_token,
            &config.mask_token,
        ];
        let extra = config.additional_special_tokens.iter().flatten();
        for spec in declared.into_iter().flatten().chain(extra) {
            if !tok
                .get_added_vocabulary()
                .get_vocab()
                .contains_key(spec.content())
            {
                tok.add_special_tokens([spec.to_added_token()])
                    .map_err(|e| err("cannot add a declared special token", e))?;
            }
        }

        let declared_id = |tok: &Tokenizer, spec: &SpecialTokenSpec| -> Result<u32> {
            tok.token_to_id(spec.content()).ok_or_else(|| {
                Error::config(
                    origin,
                    format!("special token {:?} has no id", spec.content()),
                )
            })
        };
        let bos_declared = match &config.bos_token {
            Some(spec) => Some((spec.content().to_string(), declared_id(&tok, spec)?)),
            None => None,
        };
        let eos_declared = match &config.eos_token {
            Some(spec) => Some((spec.content().to_string(), declared_id(&tok, spec)?)),
            None => None,
        };

        apply_add_bos_eos(
            &mut tok,
            &config,
            bos_declared.as_ref(),
            eos_declared.as_ref(),
            origin,
        )?;

        // What the post-processor adds around a text, for BOS/EOS not named by any config.
        let (leading, trailing) = probe_added_tokens(&tok);
        let name_of = |tok: &Tokenizer, id: u32| tok.id_to_token(id).unwrap_or_default();
        let (bos_token, bos_token_id) = match bos_declared {
            Some((t, id)) => (Some(t), Some(id)),
            None => match leading.first() {
                Some(&id) => (Some(name_of(&tok, id)), Some(id)),
                None => (None, None),
            },
        };
        let (eos_token, eos_token_id) = match eos_declared {
            Some(found) => found,
            None => match trailing.last() {
                Some(&id) => (name_of(&tok, id), id),
                None => FALLBACK_EOS
                    .iter()
                    .find_map(|t| tok.token_to_id(t).map(|id| (t.to_string(), id)))
                    .ok_or_else(|| {
                        Error::config(
                            origin,
                            format!(
                                "no EOS token: no tokenizer_config.json/special_tokens_map.json \
                                 names an eos_token and the vocabulary has none of {}; add \
                                 \"eos_token\" to tokenizer_config.json",
                                FALLBACK_EOS.join(", ")
                            ),
                        )
                    })?,
            },
        };

        // factory.py: add_special_tokens({"additional_special_tokens": ["<|endofchunk|>",
        // "<image>"]}), in that order, so their ids follow the current vocabulary.
        tok.add_special_tokens([
            AddedToken::from(END_OF_CHUNK_TOKEN, true),
            AddedToken::from(MEDIA_TOKEN, true),
        ])
        .map_err(|e| err("cannot add <|endofchunk|> and <image>", e))?;
        // … then `if tokenizer.pad_token is None: add_special_tokens({"pad_token": "<PAD>"})`.
        let (pad_token, added_pad_token) = match &pad_spec {
            Some(spec) => (spec.content().to_string(), false),
            None => {
                tok.add_special_tokens([AddedToken::from(PAD_TOKEN, true)])
                    .map_err(|e| err("cannot add <PAD>", e))?;
                (PAD_TOKEN.to_string(), true)
            }
        };
        let id_of = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| {
                Error::config(origin, format!("token {t:?} has no id after adding it"))
            })
        };
        let end_of_chunk_token_id = id_of(END_OF_CHUNK_TOKEN)?;
        let media_token_id = id_of(MEDIA_TOKEN)?;
        let pad_token_id = id_of(&pad_token)?;

        let model_max_length = config
            .model_max_length
            .filter(|n| (1.0..1e15).contains(n))
            .map(|n| n as usize);
        let truncation_side = match config.truncation_side {
            Some(PaddingSide::Left) => TruncationDirection::Left,
            Some(PaddingSide::Right) => TruncationDirection::Right,
            None => json_truncation_side.unwrap_or(TruncationDirection::Right),
        };
        Ok(FlamingoTokenizer {
            inner: Arc::new(Inner {
                tokenizer: tok,
                media_token_id,
                end_of_chunk_token_id,
                pad_token_id,
                pad_token,
                added_pad_token,
                eos_token_id,
                eos_token,
                bos_token_id,
                bos_token,
                padding_side: config
                    .padding_side
                    .or(json_padding_side)
                    .unwrap_or(PaddingSide::Right),
                truncation_side,
                clean_up_tokenization_spaces: config.clean_up_tokenization_spaces.unwrap_or(true),
                model_max_length,
            }),
        })
    }

    /// The `<image>` id (`tok.encode("<image>")[-1]` in the reference).
    pub fn media_token_id(&self) -> u32 {
        self.inner.media_token_id
    }

    /// The `<|endofchunk|>` id: generation's stop token.
    pub fn end_of_chunk_token_id(&self) -> u32 {
        self.inner.end_of_chunk_token_id
    }

    /// The pad id: the tokenizer's own pad token, or `<PAD>` when it had none.
    pub fn pad_token_id(&self) -> u32 {
        self.inner.pad_token_id
    }

    pub fn pad_token(&self) -> &str {
        &self.inner.pad_token
    }

    /// Whether the reference's procedure added `<PAD>` (the tokenizer defined no pad token).
    pub fn added_pad_token(&self) -> bool {
        self.inner.added_pad_token
    }

    pub fn eos_token_id(&self) -> u32 {
        self.inner.eos_token_id
    }

    /// The EOS text, as the LAION/MMC4 training texts append it (`tokenizer.eos_token`).
    pub fn eos_token(&self) -> &str {
        &self.inner.eos_token
    }

    /// The BOS id when the tokenizer defines one. Whether it is *prepended* is the
    /// post-processor's business: GPT-NeoX names `<|endoftext|>` as BOS but adds nothing.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_token_id
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }

    /// `len(tokenizer)`: the vocabulary including added tokens. The reference resizes the
    /// LM's embeddings to this (GPT-NeoX-20B: 50277 + 3 = 50280).
    pub fn len(&self) -> usize {
        self.inner.tokenizer.get_vocab_size(true)
    }

    /// Never true for a loaded tokenizer (it holds at least the added tokens).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The side `encode_batch_with` pads on when the options do not say.
    pub fn default_padding_side(&self) -> PaddingSide {
        self.inner.padding_side
    }

    /// Whether `decode` applies transformers' `clean_up_tokenization`.
    pub fn clean_up_tokenization_spaces(&self) -> bool {
        self.inner.clean_up_tokenization_spaces
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tokenizer.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tokenizer.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer, with the added tokens.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// Token ids of one text. `add_special_tokens` lets the post-processor add BOS/EOS
    /// (HF `tok.encode(text)` defaults to `true`). `<image>` and `<|endofchunk|>` in the text
    /// always become their single ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| encode_error(text, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `encode` cut to `max_length` tokens including the post-processor's additions, from the
    /// tokenizer's truncation side: what the Rust tokenizer does under `truncation=True`.
    fn encode_truncated(
        &self,
        text: &str,
        add_special_tokens: bool,
        max_length: usize,
    ) -> Result<Vec<u32>> {
        let tok = &self.inner.tokenizer;
        let added = if add_special_tokens {
            tok.get_post_processor()
                .map_or(0, |p| p.added_tokens(false))
        } else {
            0
        };
        if max_length < added {
            crate::invalid_input!(
                "max_length {max_length} leaves no room for the {added} special tokens the \
                 tokenizer adds to every row"
            );
        }
        let mut enc = tok.encode(text, false).map_err(|e| encode_error(text, e))?;
        enc.truncate(max_length - added, 0, self.inner.truncation_side);
        let enc = tok
            .post_process(enc, None, add_special_tokens)
            .map_err(|e| encode_error(text, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A padded batch, as `tokenizer(texts, padding="longest", truncation=…, max_length=…)`
    /// with the given padding side (the reference's eval: left, 2000, truncation on).
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        padding_side: PaddingSide,
        max_length: Option<usize>,
        truncation: bool,
    ) -> Result<BatchEncoding> {
        self.encode_batch_with(
            texts,
            &BatchOptions {
                padding_side: Some(padding_side),
                truncation,
                max_length,
                ..BatchOptions::default()
            },
        )
    }

    /// A padded batch with every option (`padding="max_length"`, no special tokens, …).
    pub fn encode_batch_with<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &BatchOptions,
    ) -> Result<BatchEncoding> {
        if options.pad_to_max_length && options.max_length.is_none() {
            crate::invalid_input!("pad_to_max_length needs max_length");
        }
        let cap = if options.truncation {
            options.max_length.or(self.inner.model_max_length)
        } else {
            None
        };
        let rows = texts
            .iter()
            .map(|t| match cap {
                Some(n) => self.encode_truncated(t.as_ref(), options.add_special_tokens, n),
                None => self.encode(t.as_ref(), options.add_special_tokens),
            })
            .collect::<Result<Vec<_>>>()?;
        let side = options.padding_side.unwrap_or(self.inner.padding_side);
        let mut width = rows.iter().map(Vec::len).max().unwrap_or(0);
        if options.pad_to_max_length {
            width = width.max(options.max_length.unwrap_or(0));
        }
        Ok(self.pad_rows(rows, side, width))
    }

    fn pad_rows(&self, rows: Vec<Vec<u32>>, side: PaddingSide, width: usize) -> BatchEncoding {
        let pad = self.inner.pad_token_id;
        let mut input_ids = Vec::with_capacity(rows.len());
        let mut attention_mask = Vec::with_capacity(rows.len());
        for row in rows {
            let n_pad = width - row.len();
            let (ids, mask) = match side {
                PaddingSide::Left => (
                    [vec![pad; n_pad], row.clone()].concat(),
                    [vec![0; n_pad], vec![1; row.len()]].concat(),
                ),
                PaddingSide::Right => (
                    [row.clone(), vec![pad; n_pad]].concat(),
                    [vec![1; row.len()], vec![0; n_pad]].concat(),
                ),
            };
            input_ids.push(ids);
            attention_mask.push(mask);
        }
        BatchEncoding {
            input_ids,
            attention_mask,
        }
    }

    /// Text of `ids`, as `tokenizer.decode(ids, skip_special_tokens=…)`: with
    /// `clean_up_tokenization` when the config asks for it (the default). Ids outside the
    /// vocabulary are dropped, as the Rust tokenizer does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.decode_raw(ids, skip_special_tokens)?;
        Ok(if self.inner.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    fn decode_raw(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("cannot decode {} token ids: {e}", ids.len())))
    }

    /// `decode` for each row.
    pub fn decode_batch<R: AsRef<[u32]>>(
        &self,
        rows: &[R],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>> {
        rows.iter()
            .map(|r| self.decode(r.as_ref(), skip_special_tokens))
            .collect()
    }

    /// A decoder for generated tokens, one at a time (see [`TextStream`]).
    pub fn decode_stream(&self, skip_special_tokens: bool) -> TextStream {
        TextStream {
            tokenizer: self.clone(),
            skip_special_tokens,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Tokenizes typed interleaved input (see [`interleaved_prompt`]): ids, mask and the
    /// order in which the images must be stacked along `T_img`.
    pub fn encode_interleaved(
        &self,
        segments: &[Segment],
        add_special_tokens: bool,
    ) -> Result<InterleavedEncoding> {
        let prompt = interleaved_prompt(segments)?;
        let input_ids = self.encode(&prompt.text, add_special_tokens)?;
        let media = input_ids
            .iter()
            .filter(|&&t| t == self.inner.media_token_id)
            .count();
        if media != prompt.image_order.len() {
            crate::invalid_input!(
                "the prompt has {} images but tokenizes to {media} <image> tokens",
                prompt.image_order.len()
            );
        }
        Ok(InterleavedEncoding {
            attention_mask: vec![1; input_ids.len()],
            input_ids,
            image_order: prompt.image_order,
        })
    }

    /// `encode_interleaved` for several rows, padded on `padding_side`; returns each row's
    /// image order beside the batch.
    pub fn encode_interleaved_batch(
        &self,
        rows: &[Vec<Segment>],
        padding_side: PaddingSide,
        add_special_tokens: bool,
    ) -> Result<(BatchEncoding, Vec<Vec<usize>>)> {
        let encoded = rows
            .iter()
            .map(|r| self.encode_interleaved(r, add_special_tokens))
            .collect::<Result<Vec<_>>>()?;
        let width = encoded.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let mut orders = Vec::with_capacity(encoded.len());
        let mut ids = Vec::with_capacity(encoded.len());
        for e in encoded {
            orders.push(e.image_order);
            ids.push(e.input_ids);
        }
        Ok((self.pad_rows(ids, padding_side, width), orders))
    }
}

/// Incremental detokenization of generated ids.
///
/// Every step decodes the whole sequence and emits only text that later tokens cannot change:
/// a trailing U+FFFD (an incomplete UTF-8 character, e.g. the first bytes of an emoji that
/// byte-level BPE splits over several tokens) waits for the rest of its bytes, and with
/// `clean_up_tokenization_spaces` a trailing start of a clean-up pattern (`" "`, `" '"`,
/// `" n"`, …) waits for the next token. So the concatenation of every `step` and `finish`
/// equals `decode(all ids)` exactly. Costs one decode of the sequence per step.
pub struct TextStream {
    tokenizer: FlamingoTokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Bytes of the decoded text already returned.
    emitted: usize,
}

impl TextStream {
    /// Adds one token; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let stable = stable_prefix_len(&full, self.tokenizer.clean_up_tokenization_spaces());
        Ok(self.emit(&full, stable))
    }

    /// Returns whatever is still held back (call once generation has stopped).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok(self.emit(&full, full.len()))
    }

    /// The ids seen so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn emit(&mut self, full: &str, upto: usize) -> Option<String> {
        if upto <= self.emitted || !full.is_char_boundary(self.emitted) {
            return None;
        }
        let out = full[self.emitted..upto].to_string();
        self.emitted = upto;
        Some(out)
    }
}

/// Length of the prefix of `text` that no further token can change (see [`TextStream`]).
fn stable_prefix_len(text: &str, clean_up: bool) -> usize {
    let mut end = text.trim_end_matches('\u{FFFD}').len();
    if clean_up {
        // Proper prefixes of the clean-up patterns, longest first.
        for tail in [" n'", " 'v", " 'r", " n", " '", " "] {
            if text[..end].ends_with(tail) {
                end -= tail.len();
                break;
            }
        }
    }
    end
}

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization`: these replacements, in
/// this order, each over the whole string.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn encode_error(text: &str, e: tokenizers::Error) -> Error {
    let preview: String = text.chars().take(40).collect();
    Error::InvalidInput(format!("cannot tokenize {preview:?}…: {e}"))
}

fn parse_tokenizer_json(json: &[u8], origin: &Path) -> Result<Tokenizer> {
    // Check the outline first: the tokenizers error for a missing model is a bare serde
    // message, and a common mistake is pointing at a config or a SentencePiece file.
    let raw: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        Error::config(
            origin,
            format!("not valid JSON ({e}); expected an HF tokenizers `tokenizer.json`"),
        )
    })?;
    if raw.get("model").is_none_or(|m| m.is_null()) {
        return Err(Error::config(
            origin,
            "has no \"model\" section, so it is not an HF tokenizers `tokenizer.json` \
             (convert a slow tokenizer once with `AutoTokenizer.from_pretrained(…).save_pretrained(…)`)",
        ));
    }
    Tokenizer::from_bytes(json).map_err(|e| {
        Error::config(
            origin,
            format!("is not a valid HF tokenizers `tokenizer.json`: {e}"),
        )
    })
}

/// The ids the post-processor puts before and after a text (LLaMA: `[<s>]`, `[]`).
fn probe_added_tokens(tok: &Tokenizer) -> (Vec<u32>, Vec<u32>) {
    let probe = "a";
    let (Ok(with), Ok(without)) = (tok.encode(probe, true), tok.encode(probe, false)) else {
        return (Vec::new(), Vec::new());
    };
    let (with, without) = (with.get_ids(), without.get_ids());
    if without.is_empty() || with.len() < without.len() {
        return (Vec::new(), Vec::new());
    }
    match with.windows(without.len()).position(|w| w == without) {
        Some(at) => (with[..at].to_vec(), with[at + without.len()..].to_vec()),
        None => (Vec::new(), Vec::new()),
    }
}

/// transformers' `update_post_processor()`: when the config sets `add_bos_token` /
/// `add_eos_token`, the template becomes `[bos] $A [eos]` accordingly. A flag the config
/// leaves out keeps what `tokenizer.json` does; nothing changes if the file already agrees.
fn apply_add_bos_eos(
    tok: &mut Tokenizer,
    config: &TokenizerConfig,
    bos: Option<&(String, u32)>,
    eos: Option<&(String, u32)>,
    origin: &Path,
) -> Result<()> {
    if config.add_bos_token.is_none() && config.add_eos_token.is_none() {
        return Ok(());
    }
    let (leading, trailing) = probe_added_tokens(tok);
    let add_bos = config.add_bos_token.unwrap_or(!leading.is_empty());
    let add_eos = config.add_eos_token.unwrap_or(!trailing.is_empty());
    let already = |ids: &[u32], want: bool, tok: Option<&(String, u32)>| match (want, tok) {
        (false, _) => ids.is_empty(),
        (true, Some((_, id))) => ids == [*id],
        (true, None) => false,
    };
    if already(&leading, add_bos, bos) && already(&trailing, add_eos, eos) {
        return Ok(());
    }
    let missing = |flag: &str, name: &str| {
        Error::config(
            origin,
            format!(
                "{flag} is true but no {name} is defined; add \"{name}\" to tokenizer_config.json"
            ),
        )
    };
    let mut specials = Vec::new();
    if add_bos {
        let (content, id) = bos.ok_or_else(|| missing("add_bos_token", "bos_token"))?;
        specials.push(SpecialToken::new(
            "bos".into(),
            vec![*id],
            vec![content.clone()],
        ));
    }
    if add_eos {
        let (content, id) = eos.ok_or_else(|| missing("add_eos_token", "eos_token"))?;
        specials.push(SpecialToken::new(
            "eos".into(),
            vec![*id],
            vec![content.clone()],
        ));
    }
    // Template keys ("bos"/"eos") name entries of `specials`, so token texts containing ':'
    // or spaces cannot confuse the template parser.
    let sequence = |seq: &str, type_id: u32| {
        let mut pieces = Vec::new();
        if add_bos {
            pieces.push(format!("bos:{type_id}"));
        }
        pieces.push(format!("{seq}:{type_id}"));
        if add_eos {
            pieces.push(format!("eos:{type_id}"));
        }
        pieces
    };
    let single = sequence("$A", 0);
    let pair = [sequence("$A", 0), sequence("$B", 1)].concat();
    let template_err =
        |e: String| Error::config(origin, format!("cannot build the BOS/EOS template: {e}"));
    let specials = specials
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| template_err(e.to_string()))?;
    let processor = TemplateProcessing::builder()
        .try_single(single.join(" "))
        .map_err(template_err)?
        .try_pair(pair.join(" "))
        .map_err(template_err)?
        .special_tokens(specials)
        .build()
        .map_err(|e| template_err(e.to_string()))?;
    tok.with_post_processor(Some(processor));
    Ok(())
}
