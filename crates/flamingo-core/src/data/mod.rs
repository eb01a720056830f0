//! Training data: the reference trainer's two datasets (open_flamingo/train/data.py, spec
//! §7.1–7.2) read from local files, shuffled deterministically, and collated into the
//! padded, labelled batches `train::Trainer` steps on.
//!
//! # Sources
//! - **JSONL manifests**: one JSON object per line (blank lines ignored); image paths are
//!   relative to the manifest's folder (absolute paths work too).
//! - **webdataset `.tar` shards** (the reference's format): members grouped into samples by
//!   key, the path up to the first `.` of the file name (`000001.jpg` + `000001.txt`).
//!
//! # Record shapes
//! `kind: Pairs` (LAION-like image–caption pairs):
//! - manifest line: `{"image": "imgs/a.png", "caption": "a red square"}` (`"text"` is
//!   accepted for `"caption"`);
//! - shard sample: an image member (`.jpg`, `.png`, `.jpeg`, `.webp`, `.gif` or `.bmp`, in
//!   that order of preference) and the caption in `.txt`, or in a `.json`'s `"caption"`.
//!
//! `kind: Documents` (interleaved, MMC4-like):
//! - `{"images": ["a.png", null, "b.png"], "texts": ["s0", "s1", "s2"]}`: `images[i]` is
//!   placed right before `texts[i]` (`null`, or a shorter `images`, for a text without one);
//! - MMC4's own shape: `{"text_list": [...], "image_info": [{"image_name": "a.jpg",
//!   "matched_text_index": 0, "matched_sim": 0.31}, ...]}`; `"image_base64"` instead of
//!   `"image_name"` (the reference's shards) carries the image inline, and an entry with
//!   neither is ignored, as the reference ignores images it has no bytes for.
//! - in a shard, the document is the sample's `.json`; `image_name`s are members of the
//!   same shard (looked up by full name, then beside the `.json`).
//!
//! # What a document becomes (`preprocess_interleaved`)
//! Images whose `matched_sim` is under `sim_threshold` (release: 0.24) are dropped, and so
//! are images of `min_image_kb` KB or less when that is set (the reference: `len(bytes) //
//! 1000 <= 10`). Each sentence keeps one image (the reference's one-to-one assignment; with
//! only `matched_text_index` to go on, the most similar image wins). Images are then
//! ordered by sentence, so the k-th `<image>` token sees the k-th image (the reference keeps
//! the images in file order, which mismatches them when the file order differs from the
//! sentence order). The text is `text::prompts::mmc4_text`, tokenized with right padding to
//! `max_length` (256), and the images are zero-padded to `max_images` (6).
//!
//! # Skipped samples
//! A sample that cannot be used is skipped and counted by [`SkipReason`]: a bad record, a
//! missing or undecodable image, an empty caption, more images than `max_images` (unless
//! `too_many_images` is `Truncate`, the reference's behaviour), no image left, and the
//! reference's rejection rules for tokenized documents (`check_interleaved_row`).
//!
//! # Order and resuming
//! Every epoch visits all samples in a permutation drawn from `(seed, epoch)`. Random
//! decisions — the horizontal flip (the reference's `RandomHorizontalFlip(0.5)`, one draw
//! per pair batch as its batched `preprocess_image` makes, one per document) and the 50%
//! rejection of single-image documents — are drawn from `(seed, epoch, sample index)`, so
//! a [`DataPosition`] (epoch and index) restores the exact stream: no RNG state is saved.

mod collate;
mod loader;
pub mod rng;
mod source;
pub mod tar;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use collate::Batch;
pub use loader::{DataLoader, DataPosition};
pub use source::{base64_decode, DatasetIndex};

use crate::{Error, Result};

/// The two datasets of the reference trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataKind {
    /// Image–caption pairs (LAION): `<image>{caption}<|endofchunk|>{eos}`, one image each.
    Pairs,
    /// Interleaved documents (MMC4): several images among sentences.
    Documents,
}

impl DataKind {
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Pairs => "pairs",
            DataKind::Documents => "documents",
        }
    }
}

/// What to do with a document that has more images than `max_images`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TooManyImages {
    /// Skip it, counted as [`SkipReason::TooManyImages`].
    Skip,
    /// Keep the first `max_images` images (by sentence) and drop the rest: the reference.
    Truncate,
}

/// Loader settings. The defaults are the reference trainer's for each kind
/// (see [`DataConfig::new`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataConfig {
    pub kind: DataKind,
    pub manifests: Vec<PathBuf>,
    pub shards: Vec<PathBuf>,
    pub batch_size: usize,
    pub seed: u64,
    /// Visit samples in a fresh permutation each epoch. Default true.
    pub shuffle: bool,
    /// Epochs to run; `None`: forever.
    pub epochs: Option<u64>,
    /// Drop an epoch's last, incomplete batch (the reference batches with `partial=False`).
    pub drop_last: bool,
    /// Token cap: pairs 32 (padding to the longest row), documents 256 (padding to it).
    pub max_length: usize,
    /// Image slots per document; fewer images are zero-padded. Reference: 6.
    pub max_images: usize,
    /// Fewer `<image>` tokens than this after truncation rejects a document. Reference: 1.
    pub min_images: usize,
    pub too_many_images: TooManyImages,
    /// MMC4 `matched_sim` below this drops the image. Release: 0.24.
    pub sim_threshold: f64,
    /// Drop document images of this many KB or less (`len(bytes) // 1000 <= min_image_kb`);
    /// the reference uses 10 for web images. `None`: keep every size.
    pub min_image_kb: Option<u64>,
    /// Probability of rejecting a single-image document. Reference: 0.5.
    pub single_image_drop_probability: f64,
    /// Probability of a horizontal flip. Reference: 0.5.
    pub flip_probability: f64,
    /// Side of the square model input (the vision tower's `image_size`). Default 224.
    pub image_size: usize,
    /// Rotate images per their EXIF orientation (the reference does not). Default false.
    pub apply_exif_orientation: bool,
    /// Threads decoding images for one batch. Default: the available cores, at most 4.
    pub workers: usize,
}

impl DataConfig {
    /// The reference's settings for `kind`, reading nothing yet.
    pub fn new(kind: DataKind) -> Self {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(1);
        Self {
            kind,
            manifests: Vec::new(),
            shards: Vec::new(),
            batch_size: match kind {
                DataKind::Pairs => 64,
                DataKind::Documents => 32,
            },
            seed: 42,
            shuffle: true,
            epochs: Some(1),
            drop_last: true,
            max_length: match kind {
                DataKind::Pairs => 32,
                DataKind::Documents => 256,
            },
            max_images: 6,
            min_images: 1,
            too_many_images: TooManyImages::Skip,
            sim_threshold: 0.24,
            min_image_kb: None,
            single_image_drop_probability: 0.5,
            flip_probability: 0.5,
            image_size: 224,
            apply_exif_orientation: false,
            workers,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("data loader: {m}")));
        if self.batch_size == 0 {
            return bad("batchSize must be at least 1".into());
        }
        if self.max_length < 2 {
            return bad(format!(
                "maxLength must be at least 2, got {}",
                self.max_length
            ));
        }
        if self.kind == DataKind::Documents && self.max_images == 0 {
            return bad("maxImages must be at least 1".into());
        }
        if self.min_images > self.max_images {
            return bad(format!(
                "minImages ({}) exceeds maxImages ({})",
                self.min_images, self.max_images
            ));
        }
        for (name, p) in [
            (
                "singleImageDropProbability",
                self.single_image_drop_probability,
            ),
            ("flipProbability", self.flip_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1], got {p}"));
            }
        }
        if !self.sim_threshold.is_finite() {
            return bad(format!(
                "simThreshold must be finite, got {}",
                self.sim_threshold
            ));
        }
        if self.image_size == 0 {
            return bad("imageSize must be at least 1".into());
        }
        if self.epochs == Some(0) {
            return bad("epochs must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a sample was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SkipReason {
    /// Not valid JSON, or required fields missing or of the wrong type.
    InvalidRecord,
    /// An image file (or shard member) does not exist.
    MissingImage,
    /// An image could not be read or decoded.
    UnreadableImage,
    /// The caption (or every text of a document) is empty.
    EmptyText,
    /// A document has more images than `max_images`.
    TooManyImages,
    /// No image is left after the similarity and size filters.
    NoImages,
    /// Fewer than `min_images` `<image>` tokens survived truncation.
    TooFewImages,
    /// A single-image document, rejected with `single_image_drop_probability`.
    SingleImage,
    /// A single-image document whose only `<image>` is its last token.
    SingleImageAtEnd,
}

/// A skipped sample: the reason and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub reason: SkipReason,
    pub detail: String,
}

impl Skip {
    pub fn new(reason: SkipReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Skipped samples so far, by reason, with the first few messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkipStats {
    pub counts: BTreeMap<SkipReason, u64>,
    /// `"<location>: <reason>: <detail>"` of the first [`SkipStats::MAX_EXAMPLES`] skips.
    pub examples: Vec<String>,
}

impl SkipStats {
    pub const MAX_EXAMPLES: usize = 8;

    pub fn record(&mut self, location: &str, skip: &Skip) {
        *self.counts.entry(skip.reason).or_default() += 1;
        if self.examples.len() < Self::MAX_EXAMPLES {
            let reason = serde_json::to_value(skip.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.examples
                .push(format!("{location}: {reason}: {}", skip.detail));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn count(&self, reason: SkipReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }
}
