//! From a record to model inputs: image decoding and preprocessing, the training texts,
//! tokenization, label masking (spec §7.1–7.2), and the padded batch.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::rng::{Purpose, SplitMix64};
use crate::data::source::{DatasetIndex, DocImage, Record};
use crate::data::{DataConfig, DataKind, DataPosition, Skip, SkipReason, TooManyImages};
use crate::flamingo::model::ForwardInput;
use crate::image::{hflip_chw, preprocess_bytes, PreprocessConfig};
use crate::text::prompts::{
    check_interleaved_row, interleaved_labels, laion_text, mmc4_text, pair_labels,
    InterleavedRejection,
};
use crate::text::tokenizer::{BatchOptions, FlamingoTokenizer, PaddingSide};
use crate::Result;

/// A collated batch, ready for `Trainer::step` (through [`Batch::to_forward_input`]).
#[derive(Clone, Debug)]
pub struct Batch {
    pub kind: DataKind,
    /// `(B, T_img, 1, 3, S, S)` f32, CLIP-normalised; zero slots pad documents.
    pub vision_x: Vec<f32>,
    pub vision_shape: [usize; 6],
    /// `(B, T)` token ids, right-padded with the pad id.
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// `(B, T)` targets, −100 where ignored (unshifted, the HF convention).
    pub labels: Vec<i64>,
    pub rows: usize,
    pub seq_len: usize,
    /// Where each row came from (`train.jsonl:12`, `shard.tar:000001`).
    pub keys: Vec<String>,
    /// Whether each row's images were flipped.
    pub flipped: Vec<bool>,
    /// Real (non-padding) images per row.
    pub num_images: Vec<usize>,
    /// The epoch the rows were drawn in.
    pub epoch: u64,
    /// The loader's position after this batch: resuming there continues with the next one.
    pub position: DataPosition,
    pub media_token_id: u32,
    pub end_of_chunk_token_id: u32,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The image side `S`.
    pub fn image_size(&self) -> usize {
        self.vision_shape[5]
    }

    /// Tensors on `device`: vision_x f32, ids and mask u32, labels i64.
    pub fn to_forward_input(&self, device: &Device) -> Result<ForwardInput> {
        let shape = (self.rows, self.seq_len);
        Ok(ForwardInput {
            vision_x: Tensor::from_slice(&self.vision_x, &self.vision_shape[..], device)?,
            lang_x: Tensor::from_slice(&self.input_ids, shape, device)?,
            attention_mask: Some(Tensor::from_slice(&self.attention_mask, shape, device)?),
            labels: Some(Tensor::from_slice(&self.labels, shape, device)?),
            allow_excess_media_tokens: false,
        })
    }
}

/// One usable sample, before batching.
pub(crate) enum Prepared {
    Pair {
        text: String,
        pixels: Vec<f32>,
    },
    Document {
        ids: Vec<u32>,
        mask: Vec<u32>,
        labels: Vec<i64>,
        /// The kept images, already flipped when `flipped`.
        images: Vec<Vec<f32>>,
        flipped: bool,
    },
}

/// Everything needed to turn samples into batches; shared by the decoding threads.
pub(crate) struct Collator {
    pub cfg: DataConfig,
    pub index: Arc<DatasetIndex>,
    pub tokenizer: FlamingoTokenizer,
    pub preprocess: PreprocessConfig,
}

impl Collator {
    pub fn new(cfg: DataConfig, index: Arc<DatasetIndex>, tokenizer: FlamingoTokenizer) -> Self {
        let preprocess = PreprocessConfig {
            size: cfg.image_size,
            apply_exif_orientation: cfg.apply_exif_orientation,
            ..PreprocessConfig::default()
        };
        Self {
            cfg,
            index,
            tokenizer,
            preprocess,
        }
    }

    fn decode(
        &self,
        record_image: &crate::data::source::ImageLoc,
    ) -> std::result::Result<Vec<f32>, Skip> {
        let bytes = self.index.image_bytes(record_image)?;
        preprocess_bytes(&bytes, &self.preprocess)
            .map_err(|e| Skip::new(SkipReason::UnreadableImage, e.to_string()))
    }

    /// Reads, checks and preprocesses sample `sample`, the `position`-th of epoch `epoch`.
    pub fn prepare(
        &self,
        sample: usize,
        epoch: u64,
        position: u64,
    ) -> std::result::Result<Prepared, Skip> {
        match self.index.record(sample, self.cfg.kind)? {
            Record::Pair { image, caption } => {
                if caption.trim().is_empty() {
                    return Err(Skip::new(SkipReason::EmptyText, "the caption is empty"));
                }
                let pixels = self.decode(&image)?;
                Ok(Prepared::Pair {
                    text: laion_text(&caption, self.tokenizer.eos_token()),
                    pixels,
                })
            }
            Record::Document { texts, images } => {
                self.prepare_document(texts, images, epoch, position)
            }
        }
    }

    fn prepare_document(
        &self,
        texts: Vec<String>,
        images: Vec<DocImage>,
        epoch: u64,
        position: u64,
    ) -> std::result::Result<Prepared, Skip> {
        let cfg = &self.cfg;
        if texts.iter().all(|t| t.trim().is_empty()) {
            return Err(Skip::new(SkipReason::EmptyText, "every text is empty"));
        }
        // Similarity filter, then the size filter (which needs the bytes), then one image
        // per sentence: the most similar, the earliest on a tie.
        let mut kept: Vec<(DocImage, Arc<Vec<u8>>)> = Vec::new();
        for image in images {
            if image.sim.is_some_and(|s| s < cfg.sim_threshold) {
                continue;
            }
            let bytes = self.index.image_bytes(&image.loc)?;
            if cfg
                .min_image_kb
                .is_some_and(|kb| bytes.len() as u64 / 1000 <= kb)
            {
                continue;
            }
            match kept.iter_mut().find(|(k, _)| k.sentence == image.sentence) {
                Some(slot) => {
                    if image.sim.unwrap_or(f64::NEG_INFINITY)
                        > slot.0.sim.unwrap_or(f64::NEG_INFINITY)
                    {
                        *slot = (image, bytes);
                    }
                }
                None => kept.push((image, bytes)),
            }
        }
        kept.sort_by_key(|(image, _)| image.sentence);
        if kept.is_empty() {
            return Err(Skip::new(
                SkipReason::NoImages,
                "no image left after the similarity and size filters",
            ));
        }
        if kept.len() > cfg.max_images {
            match cfg.too_many_images {
                TooManyImages::Skip => {
                    return Err(Skip::new(
                        SkipReason::TooManyImages,
                        format!(
                            "{} images, more than maxImages = {}",
                            kept.len(),
                            cfg.max_images
                        ),
                    ))
                }
                TooManyImages::Truncate => kept.truncate(cfg.max_images),
            }
        }
        let sentences: Vec<usize> = kept.iter().map(|(image, _)| image.sentence).collect();
        let text = mmc4_text(&texts, &sentences, self.tokenizer.eos_token())
            .map_err(|e| Skip::new(SkipReason::InvalidRecord, e.to_string()))?;
        let enc = self
            .tokenizer
            .encode_batch_with(
                &[text],
                &BatchOptions {
                    padding_side: Some(PaddingSide::Right),
                    truncation: true,
                    max_length: Some(cfg.max_length),
                    pad_to_max_length: true,
                    add_special_tokens: true,
                },
            )
            .map_err(|e| Skip::new(SkipReason::InvalidRecord, e.to_string()))?;
        let ids = enc.input_ids.into_iter().next().unwrap_or_default();
        let mask = enc.attention_mask.into_iter().next().unwrap_or_default();
        let media = self.tokenizer.media_token_id();
        // `check_interleaved_row` rejects a single image when its draw is <= 0.5 (the
        // reference's `random.random() <= 0.5`); scaling the draw gives probability p.
        let p = cfg.single_image_drop_probability;
        let draw = (p > 0.0).then(|| {
            SplitMix64::for_draw(cfg.seed, Purpose::SingleImage, epoch, position).next_f64() * 0.5
                / p
        });
        check_interleaved_row(&ids, media, cfg.min_images, draw).map_err(|r| match r {
            InterleavedRejection::TooFewImages { found, min } => Skip::new(
                SkipReason::TooFewImages,
                format!(
                    "{found} <image> tokens after truncation to {} tokens, fewer than {min}",
                    cfg.max_length
                ),
            ),
            InterleavedRejection::SingleImage => Skip::new(
                SkipReason::SingleImage,
                "a single-image document (dropped at random, as the reference does)",
            ),
            InterleavedRejection::SingleImageAtEnd => Skip::new(
                SkipReason::SingleImageAtEnd,
                "the only <image> is the last token: nothing to learn from",
            ),
        })?;
        let labels = interleaved_labels(
            &ids,
            self.tokenizer.pad_token_id(),
            media,
            self.tokenizer.end_of_chunk_token_id(),
        );
        let flipped = self.flip_draw(epoch, position);
        let mut decoded = Vec::with_capacity(kept.len());
        for (image, bytes) in &kept {
            let mut pixels = preprocess_bytes(bytes, &self.preprocess).map_err(|e| {
                Skip::new(
                    SkipReason::UnreadableImage,
                    format!("{}: {e}", describe(&image.loc)),
                )
            })?;
            if flipped {
                hflip_chw(&mut pixels, cfg.image_size);
            }
            decoded.push(pixels);
        }
        Ok(Prepared::Document {
            ids,
            mask,
            labels,
            images: decoded,
            flipped,
        })
    }

    /// `RandomHorizontalFlip(p)`: one draw keyed by the epoch position (a document's own,
    /// or a pair batch's first sample's).
    pub fn flip_draw(&self, epoch: u64, position: u64) -> bool {
        let p = self.cfg.flip_probability;
        p > 0.0
            && SplitMix64::for_draw(self.cfg.seed, Purpose::Flip, epoch, position).next_f64() < p
    }

    /// Pads and stacks prepared samples into a batch.
    pub fn assemble(
        &self,
        samples: Vec<(String, Prepared)>,
        epoch: u64,
        first_position: u64,
        position: DataPosition,
    ) -> Result<Batch> {
        let rows = samples.len();
        let size = self.cfg.image_size;
        let image_len = 3 * size * size;
        let media = self.tokenizer.media_token_id();
        let pad = self.tokenizer.pad_token_id();
        let mut keys = Vec::with_capacity(rows);
        match self.cfg.kind {
            DataKind::Pairs => {
                // One flip decision for the whole batch: the reference flips the batched
                // image tensor with one `RandomHorizontalFlip` call.
                let flip = self.flip_draw(epoch, first_position);
                let mut texts = Vec::with_capacity(rows);
                let mut vision_x = Vec::with_capacity(rows * image_len);
                for (key, prepared) in samples {
                    let Prepared::Pair { text, mut pixels } = prepared else {
                        unreachable!("a pairs loader prepares pairs");
                    };
                    if flip {
                        hflip_chw(&mut pixels, size);
                    }
                    vision_x.extend_from_slice(&pixels);
                    texts.push(text);
                    keys.push(key);
                }
                let enc = self.tokenizer.encode_batch_with(
                    &texts,
                    &BatchOptions {
                        padding_side: Some(PaddingSide::Right),
                        truncation: true,
                        max_length: Some(self.cfg.max_length),
                        pad_to_max_length: false,
                        add_special_tokens: true,
                    },
                )?;
                let seq_len = enc.seq_len();
                let labels = enc
                    .input_ids
                    .iter()
                    .flat_map(|row| pair_labels(row, pad, media))
                    .collect();
                Ok(Batch {
                    kind: DataKind::Pairs,
                    vision_x,
                    vision_shape: [rows, 1, 1, 3, size, size],
                    input_ids: enc.input_ids.concat(),
                    attention_mask: enc.attention_mask.concat(),
                    labels,
                    rows,
                    seq_len,
                    keys,
                    flipped: vec![flip; rows],
                    num_images: vec![1; rows],
                    epoch,
                    position,
                    media_token_id: media,
                    end_of_chunk_token_id: self.tokenizer.end_of_chunk_token_id(),
                })
            }
            DataKind::Documents => {
                let slots = self.cfg.max_images;
                let seq_len = self.cfg.max_length;
                let mut vision_x = vec![0f32; rows * slots * image_len];
                let mut input_ids = Vec::with_capacity(rows * seq_len);
                let mut attention_mask = Vec::with_capacity(rows * seq_len);
                let mut labels = Vec::with_capacity(rows * seq_len);
                let mut flips = Vec::with_capacity(rows);
                let mut num_images = Vec::with_capacity(rows);
                for (r, (key, prepared)) in samples.into_iter().enumerate() {
                    let Prepared::Document {
                        ids,
                        mask,
                        labels: row_labels,
                        images,
                        flipped,
                    } = prepared
                    else {
                        unreachable!("a documents loader prepares documents");
                    };
                    for (i, pixels) in images.iter().enumerate() {
                        let at = (r * slots + i) * image_len;
                        vision_x[at..at + image_len].copy_from_slice(pixels);
                    }
                    input_ids.extend_from_slice(&ids);
                    attention_mask.extend_from_slice(&mask);
                    labels.extend_from_slice(&row_labels);
                    flips.push(flipped);
                    num_images.push(images.len());
                    keys.push(key);
                }
                Ok(Batch {
                    kind: DataKind::Documents,
                    vision_x,
                    vision_shape: [rows, slots, 1, 3, size, size],
                    input_ids,
                    attention_mask,
                    labels,
                    rows,
                    seq_len,
                    keys,
                    flipped: flips,
                    num_images,
                    epoch,
                    position,
                    media_token_id: media,
                    end_of_chunk_token_id: self.tokenizer.end_of_chunk_token_id(),
                })
            }
        }
    }
}

fn describe(loc: &crate::data::source::ImageLoc) -> String {
    use crate::data::source::ImageLoc;
    match loc {
        ImageLoc::File(p) => p.display().to_string(),
        ImageLoc::Member { name, .. } => name.clone(),
        ImageLoc::Inline(_) => "inline image".into(),
    }
}
