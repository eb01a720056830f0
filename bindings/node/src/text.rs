//! The text side of flamingo-core for JavaScript: `FlamingoTokenizer` (the reference's
//! special-token procedure over an HF `tokenizer.json`), its streaming decoder, and the
//! reference's prompt formats and post-processing (`flamingo_core::text::prompts`), so the
//! exact strings have one implementation.
//!
//! Loading a tokenizer parses a JSON file of megabytes (tens of milliseconds): it runs on the
//! libuv pool (`AsyncTask`). Encoding and decoding are synchronous: a prompt encodes in well
//! under a millisecond and a streaming step decodes one token, so a Promise per call would
//! cost more than the work it hands off.

use std::path::PathBuf;

use flamingo_core::text::prompts::{self, Segment};
use flamingo_core::text::{BatchOptions, FlamingoTokenizer, PaddingSide, TextStream};
use napi::bindgen_prelude::{AsyncTask, Int32Array};
use napi::{Env, Task};
use napi_derive::napi;

use crate::error::{BindingError, BindingResult};

/// A `BindingResult` as napi wants it, with the error built on this (the JS) thread.
fn js<T>(env: &Env, result: BindingResult<T>) -> napi::Result<T> {
    result.map_err(|e| e.into_js(env))
}

fn core<T>(result: flamingo_core::Result<T>) -> BindingResult<T> {
    result.map_err(BindingError::from)
}

fn side(name: &str, value: Option<&str>) -> BindingResult<Option<PaddingSide>> {
    match value {
        None => Ok(None),
        Some("left") => Ok(Some(PaddingSide::Left)),
        Some("right") => Ok(Some(PaddingSide::Right)),
        Some(other) => Err(BindingError::invalid_input(format!(
            "{name} must be \"left\" or \"right\", got \"{other}\""
        ))),
    }
}

fn side_name(side: PaddingSide) -> String {
    match side {
        PaddingSide::Left => "left".into(),
        PaddingSide::Right => "right".into(),
    }
}

/// Token ids from JavaScript: every value must be a non-negative id.
fn ids_from(name: &str, ids: &[i32]) -> BindingResult<Vec<u32>> {
    ids.iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| {
                BindingError::invalid_input(format!(
                    "{name}: token ids must not be negative (found {v})"
                ))
            })
        })
        .collect()
}

/// Ids as JavaScript holds them. Vocabularies are far below 2^31 (the core checks ids as
/// `u32`; an id that does not fit an `i32` cannot come out of a tokenizer).
fn ids_to_js(ids: Vec<u32>) -> Int32Array {
    Int32Array::new(ids.into_iter().map(|v| v as i32).collect())
}

/// The ids and strings a tokenizer's special tokens have.
#[napi(object)]
pub struct SpecialTokens {
    /// `<image>`.
    pub media: u32,
    /// `<|endofchunk|>`.
    pub end_of_chunk: u32,
    pub pad: u32,
    pub pad_token: String,
    /// Whether the reference's procedure added `<PAD>` (the tokenizer had no pad token).
    pub added_pad_token: bool,
    pub eos: u32,
    pub eos_token: String,
    pub bos: Option<u32>,
    pub bos_token: Option<String>,
}

/// `encodeBatch` options; absent fields: transformers' `tokenizer(texts, padding="longest")`.
#[napi(object)]
pub struct EncodeBatchOptions {
    /// `"left"` or `"right"`; default: the tokenizer's own side.
    pub padding: Option<String>,
    pub max_length: Option<u32>,
    pub truncation: Option<bool>,
    pub pad_to_max_length: Option<bool>,
    pub add_special_tokens: Option<bool>,
}

/// A padded batch: `(B, T)` ids and mask, row-major.
#[napi(object)]
pub struct EncodedBatch {
    pub ids: Int32Array,
    pub attention_mask: Int32Array,
    /// `[B, T]`.
    pub shape: Vec<u32>,
}

/// One piece of an interleaved prompt: exactly one of `text` and `image` (an index into the
/// caller's images).
#[napi(object)]
pub struct PromptSegment {
    pub text: Option<String>,
    pub image: Option<u32>,
}

/// Interleaved rows, tokenized and padded; `image_orders[b][k]` is the caller's index of the
/// image the `k`-th `<image>` token of row `b` stands for.
#[napi(object)]
pub struct InterleavedBatch {
    pub ids: Int32Array,
    pub attention_mask: Int32Array,
    pub shape: Vec<u32>,
    pub image_orders: Vec<Vec<u32>>,
}

/// An interleaved prompt as text, and the order of its images.
#[napi(object)]
pub struct InterleavedText {
    pub text: String,
    pub image_order: Vec<u32>,
}

/// A VQA demonstration.
#[napi(object)]
pub struct VqaDemo {
    pub question: String,
    pub answer: String,
}

fn segments_from(row: usize, segments: Vec<PromptSegment>) -> BindingResult<Vec<Segment>> {
    segments
        .into_iter()
        .enumerate()
        .map(|(i, s)| match (s.text, s.image) {
            (Some(t), None) => Ok(Segment::Text(t)),
            (None, Some(ix)) => Ok(Segment::Image(ix as usize)),
            _ => Err(BindingError::invalid_input(format!(
                "row {row}, segment {i}: give exactly one of text and image"
            ))),
        })
        .collect()
}

fn padded(rows: Vec<Vec<u32>>, masks: Vec<Vec<u32>>) -> (Int32Array, Int32Array, Vec<u32>) {
    let shape = vec![rows.len() as u32, rows.first().map_or(0, Vec::len) as u32];
    (ids_to_js(rows.concat()), ids_to_js(masks.concat()), shape)
}

/// A loaded tokenizer. Immutable; safe to share between calls.
#[napi]
pub struct NativeTokenizer {
    inner: FlamingoTokenizer,
}

/// Loading a tokenizer on the libuv pool.
pub struct LoadTokenizerTask {
    path: PathBuf,
}

impl Task for LoadTokenizerTask {
    type Output = BindingResult<FlamingoTokenizer>;
    type JsValue = NativeTokenizer;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let path = self.path.clone();
        // A panic must not cross the pool thread's C frame (it would abort the process).
        Ok(crate::engine::guarded("loading the tokenizer", move || {
            core(if path.is_dir() {
                FlamingoTokenizer::from_dir(&path)
            } else {
                FlamingoTokenizer::from_file(&path)
            })
        }))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<NativeTokenizer> {
        js(&env, output).map(|inner| NativeTokenizer { inner })
    }
}

/// Loads `tokenizer.json` (a file, or a folder holding one) with the config files beside it,
/// and adds OpenFlamingo's tokens as the reference does.
#[napi]
pub fn load_tokenizer(path: String) -> AsyncTask<LoadTokenizerTask> {
    AsyncTask::new(LoadTokenizerTask {
        path: PathBuf::from(path),
    })
}

#[napi]
impl NativeTokenizer {
    /// `len(tokenizer)`: the vocabulary with the added tokens.
    #[napi(js_name = "len")]
    pub fn vocabulary_len(&self) -> u32 {
        self.inner.len() as u32
    }

    #[napi]
    pub fn special_tokens(&self) -> SpecialTokens {
        let t = &self.inner;
        SpecialTokens {
            media: t.media_token_id(),
            end_of_chunk: t.end_of_chunk_token_id(),
            pad: t.pad_token_id(),
            pad_token: t.pad_token().to_string(),
            added_pad_token: t.added_pad_token(),
            eos: t.eos_token_id(),
            eos_token: t.eos_token().to_string(),
            bos: t.bos_token_id(),
            bos_token: t.bos_token().map(str::to_string),
        }
    }

    /// The side batches are padded on when the call does not say.
    #[napi]
    pub fn default_padding_side(&self) -> String {
        side_name(self.inner.default_padding_side())
    }

    #[napi]
    pub fn token_to_id(&self, token: String) -> Option<u32> {
        self.inner.token_to_id(&token)
    }

    #[napi]
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[napi]
    pub fn encode(
        &self,
        env: &Env,
        text: String,
        add_special_tokens: Option<bool>,
    ) -> napi::Result<Int32Array> {
        let ids = core(self.inner.encode(&text, add_special_tokens.unwrap_or(true)));
        js(env, ids.map(ids_to_js))
    }

    #[napi]
    pub fn encode_batch(
        &self,
        env: &Env,
        texts: Vec<String>,
        options: Option<EncodeBatchOptions>,
    ) -> napi::Result<EncodedBatch> {
        let result = (|| {
            let o = options.unwrap_or(EncodeBatchOptions {
                padding: None,
                max_length: None,
                truncation: None,
                pad_to_max_length: None,
                add_special_tokens: None,
            });
            let batch = core(self.inner.encode_batch_with(
                &texts,
                &BatchOptions {
                    padding_side: side("padding", o.padding.as_deref())?,
                    truncation: o.truncation.unwrap_or(false),
                    max_length: o.max_length.map(|n| n as usize),
                    pad_to_max_length: o.pad_to_max_length.unwrap_or(false),
                    add_special_tokens: o.add_special_tokens.unwrap_or(true),
                },
            ))?;
            let (ids, attention_mask, shape) = padded(batch.input_ids, batch.attention_mask);
            Ok(EncodedBatch {
                ids,
                attention_mask,
                shape,
            })
        })();
        js(env, result)
    }

    #[napi]
    pub fn decode(
        &self,
        env: &Env,
        ids: Int32Array,
        skip_special_tokens: Option<bool>,
    ) -> napi::Result<String> {
        let result = ids_from("ids", &ids).and_then(|ids| {
            core(
                self.inner
                    .decode(&ids, skip_special_tokens.unwrap_or(false)),
            )
        });
        js(env, result)
    }

    #[napi]
    pub fn decode_batch(
        &self,
        env: &Env,
        rows: Vec<Int32Array>,
        skip_special_tokens: Option<bool>,
    ) -> napi::Result<Vec<String>> {
        let result = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ids = ids_from(&format!("row {i}"), r)?;
                core(
                    self.inner
                        .decode(&ids, skip_special_tokens.unwrap_or(false)),
                )
            })
            .collect();
        js(env, result)
    }

    /// A decoder that turns generated ids into text one token at a time.
    #[napi]
    pub fn decode_stream(&self, skip_special_tokens: Option<bool>) -> NativeTextStream {
        NativeTextStream {
            inner: self
                .inner
                .decode_stream(skip_special_tokens.unwrap_or(false)),
        }
    }

    /// Interleaved rows (`<image>` per image, chunks closed by `<|endofchunk|>`), tokenized
    /// and padded on `padding`.
    #[napi]
    pub fn encode_interleaved_batch(
        &self,
        env: &Env,
        rows: Vec<Vec<PromptSegment>>,
        padding: String,
        add_special_tokens: Option<bool>,
    ) -> napi::Result<InterleavedBatch> {
        let result = (|| {
            let rows = rows
                .into_iter()
                .enumerate()
                .map(|(b, r)| segments_from(b, r))
                .collect::<BindingResult<Vec<_>>>()?;
            let side = side("padding", Some(&padding))?.unwrap_or(PaddingSide::Left);
            let (batch, orders) = core(self.inner.encode_interleaved_batch(
                &rows,
                side,
                add_special_tokens.unwrap_or(true),
            ))?;
            let (ids, attention_mask, shape) = padded(batch.input_ids, batch.attention_mask);
            Ok(InterleavedBatch {
                ids,
                attention_mask,
                shape,
                image_orders: orders
                    .into_iter()
                    .map(|o| o.into_iter().map(|i| i as u32).collect())
                    .collect(),
            })
        })();
        js(env, result)
    }
}

/// Incremental detokenization (the core's `TextStream`): the pieces it returns concatenate
/// to exactly `decode(all ids)`.
#[napi]
pub struct NativeTextStream {
    inner: TextStream,
}

#[napi]
impl NativeTextStream {
    /// Adds one id; returns the text it completes (`""` when it completes none yet).
    #[napi]
    pub fn push(&mut self, env: &Env, id: i32) -> napi::Result<String> {
        let result = ids_from("id", &[id])
            .and_then(|ids| core(self.inner.step(ids[0])))
            .map(Option::unwrap_or_default);
        js(env, result)
    }

    /// Whatever is still held back (an incomplete character, a pending clean-up).
    #[napi]
    pub fn flush(&mut self, env: &Env) -> napi::Result<String> {
        js(
            env,
            core(self.inner.finish()).map(Option::unwrap_or_default),
        )
    }

    /// Every id pushed so far.
    #[napi]
    pub fn ids(&self) -> Int32Array {
        ids_to_js(self.inner.ids().to_vec())
    }
}

/// The reference's captioning prompt: `"<image>Output:{caption}<|endofchunk|>\n"` per demo
/// (captions stripped), then `"<image>Output:"`; with `text_only_demos` the demos' `<image>`
/// tags are removed (the reference's zero-shot).
#[napi]
pub fn caption_prompt_text(demo_captions: Vec<String>, text_only_demos: bool) -> String {
    prompts::caption_few_shot(&demo_captions, text_only_demos)
}

/// The reference's VQA prompt: `"<image>Question:{q} Short answer:{a}<|endofchunk|>\n"` per
/// demo, then `"<image>Question:{q} Short answer:"`.
#[napi]
pub fn vqa_prompt_text(demos: Vec<VqaDemo>, question: String, text_only_demos: bool) -> String {
    let pairs: Vec<(String, String)> = demos.into_iter().map(|d| (d.question, d.answer)).collect();
    prompts::vqa_few_shot(&pairs, &question, text_only_demos)
}

/// `text.split("Output", 1)[0]` without `"`: the reference's caption clean-up.
#[napi]
pub fn postprocess_caption(text: String) -> String {
    prompts::postprocess_caption(&text)
}

/// `re.split("Question|Answer|Short", s, 1)[0]`, then `re.split(", ", …, 1)[0]`.
#[napi]
pub fn postprocess_vqa(text: String) -> String {
    prompts::postprocess_vqa(&text)
}

/// `[image, text, image, text, …]` as the reference's text, and the order of its images.
#[napi]
pub fn interleaved_prompt_text(
    env: &Env,
    segments: Vec<PromptSegment>,
) -> napi::Result<InterleavedText> {
    let result = segments_from(0, segments).and_then(|s| {
        let p = core(prompts::interleaved_prompt(&s))?;
        Ok(InterleavedText {
            text: p.text,
            image_order: p.image_order.into_iter().map(|i| i as u32).collect(),
        })
    });
    js(env, result)
}
