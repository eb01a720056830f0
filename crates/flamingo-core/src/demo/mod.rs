//! The demo task and the package's default model (`models/default`): procedurally generated
//! shape images with captions from a closed grammar ([`shapes`]), the word-level tokenizer
//! over that grammar, the model folder's manifest (`flamingo.json`), and captioning with the
//! reference's prompt format (`"<image>Output:"`, spec §6) and post-processing.
//!
//! `examples/train_demo.rs` builds the model the way OpenFlamingo is built, at toy scale:
//! the LM and the vision tower are pretrained on the synthetic data by this crate and then
//! frozen; only the Perceiver, the gated cross-attention blocks and the `<image>` /
//! `<|endofchunk|>` embedding rows are trained on image–caption pairs (spec §2.6, §7).

pub mod shapes;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use crate::flamingo::model::{Flamingo, LoadSpec};
use crate::generate::{GenerationConfig, GenerationSession};
use crate::image::{preprocess_raw, PreprocessConfig};
use crate::text::prompts::{caption_few_shot, postprocess_caption};
use crate::text::{FlamingoTokenizer, PaddingSide};
use crate::{Error, Result};

pub use shapes::{normalize_caption, Caption, Colour, Sample, Shape};

/// The demo LM's vocabulary, in id order: EOS and unknown, the caption grammar, and the
/// reference's caption prompt words (`Output`, `:`). The Flamingo special tokens are
/// appended by [`FlamingoTokenizer`] at load time (`<|endofchunk|>`, `<image>`, `<PAD>`).
pub const VOCAB: &[&str] = &[
    "<|endoftext|>",
    "<unk>",
    "one",
    "two",
    "three",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "star",
    "stars",
    "Output",
    ":",
    ".",
];

/// `len(tokenizer)` after the special tokens are added: the LM's vocabulary size.
pub fn vocab_size() -> usize {
    VOCAB.len() + 3
}

/// An HF `tokenizer.json` for [`VOCAB`] (see [`word_level_tokenizer_json`]).
pub fn tokenizer_json() -> serde_json::Value {
    word_level_tokenizer_json(VOCAB)
}

/// An HF `tokenizer.json` for `words` in id order (`words[0]` is the EOS token
/// `<|endoftext|>`, and `<unk>` must be among them): word level, split on whitespace and
/// punctuation (so `"Output:two"` is `Output`, `:`, `two`), decoded by joining words with
/// spaces. The tiny models of this repository use it too (`examples/make_tiny_model.rs`).
pub fn word_level_tokenizer_json(words: &[&str]) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// `tokenizer_config.json`: EOS `<|endoftext|>`, no BOS, no pad token (so the reference's
/// procedure adds `<PAD>`, as for the GPT-NeoX tokenizers of the releases).
pub fn tokenizer_config_json() -> serde_json::Value {
    serde_json::json!({"eos_token": "<|endoftext|>", "bos_token": null, "pad_token": null})
}

/// Where cross-attention goes: the reference's `cross_attn_every_n_layers`, or a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CrossAttentionPlan {
    #[serde(rename_all = "camelCase")]
    EveryNLayers {
        every_n_layers: usize,
    },
    Layers {
        layers: Vec<usize>,
    },
}

impl CrossAttentionPlan {
    /// LM layer indices that get a block: `(i + 1) % n == 0` (spec §2.5).
    pub fn layers(&self, num_layers: usize) -> Vec<usize> {
        match self {
            CrossAttentionPlan::EveryNLayers { every_n_layers: n } => (0..num_layers)
                .filter(|i| *n > 0 && (i + 1) % n == 0)
                .collect(),
            CrossAttentionPlan::Layers { layers } => layers.clone(),
        }
    }
}

/// Ids of the two tokens the bridge is built around.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestTokens {
    pub media: u32,
    pub end_of_chunk: u32,
}

/// Pixel normalisation of the model's images (they are generated at `size`, so the CLIP
/// resize and crop are identities).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestPreprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// `flamingo.json`: what a model folder holds and how to assemble it. Paths are relative to
/// the folder; the load options use the names of the TypeScript `LoadOptions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub vision: String,
    pub lm: String,
    pub tokenizer: String,
    pub checkpoint: Option<String>,
    pub cross_attention: CrossAttentionPlan,
    pub tokens: ManifestTokens,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub perceiver: PerceiverConfig,
    #[serde(default)]
    pub cross_attention_block: CrossAttnConfig,
    pub image_size: usize,
    pub preprocess: ManifestPreprocess,
    /// Free-form: the prompt formats, training settings and measured accuracy.
    #[serde(default, flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("flamingo.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))
    }

    /// The CLIP transform for this model's images.
    pub fn preprocess_config(&self) -> PreprocessConfig {
        PreprocessConfig {
            size: self.image_size,
            mean: self.preprocess.mean,
            std: self.preprocess.std,
            ..PreprocessConfig::default()
        }
    }

    /// The `LoadSpec` for the folder `dir` this manifest was read from.
    pub fn load_spec(&self, dir: &Path) -> Result<LoadSpec> {
        let lm_dir = dir.join(&self.lm);
        let cfg_path = lm_dir.join("config.json");
        let raw = crate::lm::config::read_json(&cfg_path)?;
        let num_layers = ["n_layers", "num_hidden_layers", "num_layers"]
            .iter()
            .find_map(|k| raw.get(*k).and_then(|v| v.as_u64()))
            .ok_or_else(|| Error::config(&cfg_path, "no layer count (n_layers)"))?
            as usize;
        Ok(LoadSpec {
            vision_dir: dir.join(&self.vision),
            lm_dir,
            checkpoint: self.checkpoint.as_ref().map(|c| dir.join(c)),
            media_token_id: self.tokens.media,
            end_of_chunk_token_id: self.tokens.end_of_chunk,
            cross_attn_layers: self.cross_attention.layers(num_layers),
            decoder_layers_path: None,
            perceiver: self.perceiver.clone(),
            cross_attn: self.cross_attention_block.clone(),
            vision_post_layernorm: false,
            vocab_size: self.vocab_size,
            strict: true,
            init_seed: 0,
        })
    }
}

/// A loaded model folder, ready to caption.
pub struct DemoModel {
    pub model: Arc<Flamingo>,
    pub tokenizer: FlamingoTokenizer,
    pub manifest: Manifest,
    pub dir: PathBuf,
}

/// One captioning request: the query image, after `demos` (image, caption) shown in the
/// reference's few-shot format.
pub struct CaptionRequest<'a> {
    pub demos: Vec<(&'a [u8], String)>,
    pub image: &'a [u8],
}

impl DemoModel {
    /// Loads `dir` (e.g. `models/default`) as its manifest describes, on the CPU.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        let tokenizer = FlamingoTokenizer::from_file(dir.join(&manifest.tokenizer))?;
        if tokenizer.media_token_id() != manifest.tokens.media
            || tokenizer.end_of_chunk_token_id() != manifest.tokens.end_of_chunk
        {
            return Err(Error::config(
                dir.join("flamingo.json"),
                format!(
                    "tokens {:?} do not match the tokenizer's <image> = {} and <|endofchunk|> = {}",
                    manifest.tokens,
                    tokenizer.media_token_id(),
                    tokenizer.end_of_chunk_token_id()
                ),
            ));
        }
        let model = Flamingo::load(&manifest.load_spec(&dir)?, &Device::Cpu)?;
        Ok(Self {
            model: Arc::new(model),
            tokenizer,
            manifest,
            dir,
        })
    }

    /// `(B, T_img, 1, 3, S, S)` pixel values of RGB8 images of the model's size.
    pub fn pixel_values(&self, rows: &[Vec<&[u8]>]) -> Result<Tensor> {
        pixel_values(rows, &self.manifest.preprocess_config())
    }

    /// Greedy captions (post-processed as the reference's evaluation does) for a batch of
    /// requests with the same number of demos each.
    pub fn caption(&self, requests: &[CaptionRequest]) -> Result<Vec<String>> {
        caption_batch(
            &self.model,
            &self.tokenizer,
            &self.manifest.preprocess_config(),
            requests,
        )
    }
}

/// `(B, T_img, 1, 3, S, S)` pixel values of RGB8 images (each `S × S × 3` bytes).
pub fn pixel_values(rows: &[Vec<&[u8]>], cfg: &PreprocessConfig) -> Result<Tensor> {
    let s = cfg.size;
    let t = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || t == 0 || rows.iter().any(|r| r.len() != t) {
        crate::invalid_input!("every row needs the same, non-zero number of images");
    }
    let mut data = Vec::with_capacity(rows.len() * t * 3 * s * s);
    for img in rows.iter().flatten() {
        if img.len() != s * s * 3 {
            crate::invalid_input!(
                "an image has {} bytes; this model takes {s}×{s} RGB images ({} bytes)",
                img.len(),
                s * s * 3
            );
        }
        data.extend(preprocess_raw(img, s, s, 3, cfg)?);
    }
    Ok(Tensor::from_vec(
        data,
        (rows.len(), t, 1, 3, s, s),
        &Device::Cpu,
    )?)
}

/// Greedy captioning with the reference's format: demos `"<image>Output:{caption}<|endofchunk|>"`
/// joined by `"\n"`, then `"<image>Output:"`; the new tokens are decoded without special
/// tokens and cut at the next `"Output"` (`postprocess_caption`).
pub fn caption_batch(
    model: &Arc<Flamingo>,
    tokenizer: &FlamingoTokenizer,
    cfg: &PreprocessConfig,
    requests: &[CaptionRequest],
) -> Result<Vec<String>> {
    let prompts: Vec<String> = requests
        .iter()
        .map(|r| {
            let demos: Vec<&str> = r.demos.iter().map(|(_, c)| c.as_str()).collect();
            caption_few_shot(&demos, false)
        })
        .collect();
    let rows: Vec<Vec<&[u8]>> = requests
        .iter()
        .map(|r| {
            r.demos
                .iter()
                .map(|(img, _)| *img)
                .chain(std::iter::once(r.image))
                .collect()
        })
        .collect();
    let vision_x = pixel_values(&rows, cfg)?;
    let batch = tokenizer.encode_batch(&prompts, PaddingSide::Left, None, false)?;
    let gen = GenerationConfig {
        max_new_tokens: 8,
        ..GenerationConfig::default()
    };
    let session = GenerationSession::start(
        model.clone(),
        &vision_x,
        batch.input_ids,
        Some(batch.attention_mask),
        gen,
    )?;
    let result = session.run_to_end(&AtomicBool::new(false))?;
    result
        .new_tokens
        .iter()
        .map(|ids| Ok(postprocess_caption(&tokenizer.decode(ids, true)?)))
        .collect()
}

/// Exact-match accuracy after [`normalize_caption`].
pub fn exact_match(predictions: &[String], references: &[String]) -> f64 {
    let hits = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| normalize_caption(p) == normalize_caption(r))
        .count();
    hits as f64 / references.len().max(1) as f64
}
