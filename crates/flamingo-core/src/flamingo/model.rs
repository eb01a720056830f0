//! The composed Flamingo model (OpenFlamingo flamingo.py + flamingo_lm.py): CLIP patch
//! tokens → Perceiver resampler → gated cross-attention before the planned LM layers.
//!
//! Media conditioning is explicit state passed into every forward (`MediaConditioning`,
//! `TextTimes`), not fields toggled on the layers from outside as the reference's
//! `condition_*` calls do (the source of its issue #308).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use crate::flamingo::cross_attn::{GatedCrossAttentionBlock, MediaKv};
use crate::flamingo::perceiver::PerceiverResampler;
use crate::io::checkpoint::FlamingoCheckpoint;
use crate::io::{hf, MemoryTensors, Overlay, TensorSource, Weights};
use crate::lm::{self, AttentionContext, CausalLm, KvCache, LmFamily, LmLoadOptions};
use crate::vision::clip::{ClipVision, ClipVisionConfig, VisionOptions};
use crate::{Error, Result};

/// Everything needed to build a model from files. The layer plan is decided by the caller
/// (the TypeScript composition API), not here.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// HF CLIP folder (`config.json` + weights); `CLIPVisionModel` or `CLIPModel`.
    pub vision_dir: PathBuf,
    /// HF causal-LM folder (`config.json` + weights).
    pub lm_dir: PathBuf,
    /// OpenFlamingo weights (`checkpoint.pt` or `.safetensors`); `None`: fresh initialisation.
    pub checkpoint: Option<PathBuf>,
    /// Id of `<image>`.
    pub media_token_id: u32,
    /// Id of `<|endofchunk|>`.
    pub end_of_chunk_token_id: u32,
    /// LM layer indices that get a gated cross-attention block before them.
    pub cross_attn_layers: Vec<usize>,
    /// Expected decoder-layers path (e.g. `transformer.blocks`); checked against the LM.
    pub decoder_layers_path: Option<String>,
    pub perceiver: PerceiverConfig,
    pub cross_attn: CrossAttnConfig,
    /// Apply the vision tower's post-layernorm to every token (open_clip ≥ 2.23 behaviour).
    /// Off by default: the released checkpoints were trained on pre-LN tokens (spec §5.1).
    pub vision_post_layernorm: bool,
    /// Resize the LM vocabulary to this many rows (`len(tokenizer)`).
    pub vocab_size: Option<usize>,
    /// Error on unexpected checkpoint keys too (missing Flamingo keys always error).
    pub strict: bool,
    /// Seed for fresh initialisation when there is no checkpoint.
    pub init_seed: u64,
}

/// What loading found in the checkpoint, for the user to inspect.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// LM weights taken from the checkpoint instead of the LM's own files.
    pub lm_overrides: Vec<String>,
    /// Checkpoint keys recognised and deliberately skipped (buffers, aliases, LM blocks).
    pub ignored: Vec<String>,
    /// Checkpoint keys that fit nothing (an error in strict mode).
    pub unexpected: Vec<String>,
    /// No checkpoint: the perceiver and cross-attention were freshly initialised.
    pub fresh_init: bool,
}

/// Sizes and the layer plan, for `info` displays.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    pub family: LmFamily,
    pub model_type: String,
    pub lm_layers: usize,
    pub cross_attn_layers: Vec<usize>,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub vision_layers: usize,
    pub vision_hidden_size: usize,
    pub image_size: usize,
    pub parameters_total: u64,
    /// Perceiver, cross-attention and the input embedding (whose rows the reference masks).
    pub parameters_trainable: u64,
}

/// One forward pass's inputs.
#[derive(Clone, Debug)]
pub struct ForwardInput {
    /// `(B, T_img, F, 3, H, W)` f32, CLIP-normalised.
    pub vision_x: Tensor,
    /// `(B, T)` token ids (u32 or i64).
    pub lang_x: Tensor,
    /// `(B, T)`: 1 for tokens, 0 for padding; all ones when `None`.
    pub attention_mask: Option<Tensor>,
    /// `(B, T)` i64 targets, −100 ignored; shifted inside (HF convention).
    pub labels: Option<Tensor>,
    /// Keep the reference's behaviour for rows with more `<image>` tokens than images
    /// (uniform attention over all images) instead of an error.
    pub allow_excess_media_tokens: bool,
}

#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// `(B, T, V)` f32.
    pub logits: Tensor,
    /// Mean shifted cross-entropy over labels ≠ −100 (a scalar tensor), when labels were given.
    pub loss: Option<Tensor>,
}

/// Per-layer media keys/values for one batch of images, computed once and reused by every
/// forward over the same images (the prompt, and each decode step).
pub struct MediaConditioning {
    pub(crate) per_layer: Vec<Option<MediaKv>>,
    /// Images per row (`T_img`).
    pub num_media: usize,
    pub batch: usize,
}

/// Which image each text token attends to.
#[derive(Clone, Debug)]
pub enum TextTimes {
    /// A prompt: the inclusive running count of `<image>` tokens (the `<image>` token itself
    /// attends to its own image; tokens before the first image attend to none).
    Prompt,
    /// Decode steps after a prompt: every new token attends to the last image of its row's
    /// prompt, i.e. `text_time` = that row's `<image>` count (spec §4.4).
    AfterPrompt(Vec<u32>),
}

/// Embedding rows that train (the reference masks the gradient to `<image>` and
/// `<|endofchunk|>`): their values live here and shadow the LM's frozen table, in the input
/// lookup and — for tied embeddings — in the output head.
#[derive(Clone, Debug)]
pub struct TrainableRows {
    pub ids: Vec<u32>,
    /// `(ids.len(), D)`; a `Var`'s tensor while training.
    pub rows: Tensor,
}

pub struct Flamingo {
    vision: ClipVision,
    perceiver: PerceiverResampler,
    perceiver_cfg: PerceiverConfig,
    cross_attn_cfg: CrossAttnConfig,
    /// The bridge's tensors under their OpenFlamingo checkpoint names.
    bridge: HashMap<String, Tensor>,
    trainable_rows: Option<TrainableRows>,
    lm: Box<dyn CausalLm>,
    /// Indexed by LM layer; `Some` where the plan puts a block.
    cross_attn: Vec<Option<GatedCrossAttentionBlock>>,
    cross_attn_layers: Vec<usize>,
    media_token_id: u32,
    end_of_chunk_token_id: u32,
    report: LoadReport,
    summary: ModelSummary,
    device: Device,
}

fn lm_family_of(cfg_path: &Path, raw: &serde_json::Value) -> Result<(LmFamily, String)> {
    let model_type = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config(cfg_path, "missing \"model_type\""))?
        .to_string();
    let family = match model_type.as_str() {
        "llama" => LmFamily::Llama,
        "opt" => LmFamily::Opt,
        "gpt_neox" => LmFamily::GptNeox,
        "mpt" | "mosaic_gpt" => LmFamily::Mpt,
        "gptj" => LmFamily::GptJ,
        other => {
            return Err(Error::UnsupportedModel {
                model_type: other.to_string(),
                path: cfg_path.to_path_buf(),
                supported: lm::SUPPORTED_MODEL_TYPES.to_string(),
            })
        }
    };
    Ok((family, model_type))
}

impl Flamingo {
    pub fn load(spec: &LoadSpec, device: &Device) -> Result<Self> {
        let dtype = DType::F32;

        // Vision tower.
        let vision_cfg_path = spec.vision_dir.join("config.json");
        let vision_cfg = ClipVisionConfig::from_hf_json(
            &vision_cfg_path,
            &lm::config::read_json(&vision_cfg_path)?,
        )?;
        let vision_w = Weights::new(hf::open_weights_dir(&spec.vision_dir)?, dtype, device);
        let vision = ClipVision::load(
            &vision_cfg,
            &vision_w,
            &VisionOptions {
                apply_post_layernorm: spec.vision_post_layernorm,
            },
        )?;
        let vis_dim = vision_cfg.hidden_size;

        // The LM's family fixes where its decoder layers live, which the checkpoint's key
        // names depend on.
        let lm_cfg_path = spec.lm_dir.join("config.json");
        let lm_raw = lm::config::read_json(&lm_cfg_path)?;
        let (family, _) = lm_family_of(&lm_cfg_path, &lm_raw)?;
        let layers_path = family.decoder_layers_path();
        if let Some(expected) = &spec.decoder_layers_path {
            if expected != layers_path {
                return Err(Error::config(
                    &lm_cfg_path,
                    format!(
                        "the decoder layers of this {family:?} model live at \"{layers_path}\", not \"{expected}\""
                    ),
                ));
            }
        }

        let checkpoint = match &spec.checkpoint {
            Some(path) => Some(FlamingoCheckpoint::open(path, layers_path)?),
            None => None,
        };
        let mut report = LoadReport {
            fresh_init: checkpoint.is_none(),
            ..Default::default()
        };

        // LM, with the checkpoint's LM tensors (embeddings, tied aliases) applied over its
        // own weights after the vocabulary resize, as `load_state_dict(strict=False)` does.
        let lm_base = hf::open_weights_dir(&spec.lm_dir)?;
        let lm_source: Arc<dyn TensorSource> = match &checkpoint {
            Some(ck) => {
                let overrides = select_lm_overrides(
                    &ck.lm_overrides,
                    lm_base.as_ref(),
                    spec.vocab_size,
                    &mut report,
                )?;
                Arc::new(Overlay {
                    base: lm_base,
                    overrides: Arc::new(overrides),
                })
            }
            None => lm_base,
        };
        let lm_w = Weights::new(lm_source, dtype, device);
        let lm = lm::load_lm_from_config(
            &lm_cfg_path,
            &lm_raw,
            &lm_w,
            &LmLoadOptions {
                vocab_size: spec.vocab_size,
            },
        )?;
        let info = lm.info().clone();

        let mut plan = spec.cross_attn_layers.clone();
        plan.sort_unstable();
        plan.dedup();
        if let Some(&bad) = plan.iter().find(|&&i| i >= info.num_layers) {
            return Err(Error::InvalidInput(format!(
                "cross-attention layer {bad} does not exist: the LM has {} decoder layers (0..{})",
                info.num_layers,
                info.num_layers - 1
            )));
        }

        // Perceiver and cross-attention: from the checkpoint, or freshly initialised.
        let (perceiver_w, block_ws) = match &checkpoint {
            Some(ck) => {
                ck.validate(&plan, spec.perceiver.depth, spec.strict)?;
                report.ignored = ck.ignored.clone();
                report.unexpected = ck.unexpected.clone();
                let perceiver_w = Weights::new(Arc::new(ck.perceiver.clone()), dtype, device);
                let blocks: HashMap<usize, Weights> = plan
                    .iter()
                    .map(|&i| {
                        let t = ck.cross_attn.get(&i).cloned().unwrap_or_default();
                        (i, Weights::new(Arc::new(t), dtype, device))
                    })
                    .collect();
                (perceiver_w, blocks)
            }
            None => {
                let perceiver_w = Weights::from_tensors(
                    PerceiverResampler::init_tensors(
                        vis_dim,
                        &spec.perceiver,
                        spec.init_seed,
                        device,
                    )?,
                    dtype,
                    device,
                );
                let blocks = plan
                    .iter()
                    .map(|&i| {
                        let seed = spec.init_seed.wrapping_add(1 + i as u64);
                        let t = GatedCrossAttentionBlock::init_tensors(
                            info.hidden_size,
                            vis_dim,
                            &spec.cross_attn,
                            seed,
                            device,
                        )?;
                        Ok((i, Weights::from_tensors(t, dtype, device)))
                    })
                    .collect::<Result<HashMap<_, _>>>()?;
                (perceiver_w, blocks)
            }
        };
        let mut bridge = HashMap::new();
        for key in perceiver_w.source().keys() {
            bridge.insert(format!("perceiver.{key}"), perceiver_w.source().load(&key)?);
        }
        for (&i, w) in &block_ws {
            for key in w.source().keys() {
                bridge.insert(block_key(layers_path, i, &key), w.source().load(&key)?);
            }
        }
        let perceiver = PerceiverResampler::load(&perceiver_w, vis_dim, &spec.perceiver)?;
        let mut cross_attn: Vec<Option<GatedCrossAttentionBlock>> =
            (0..info.num_layers).map(|_| None).collect();
        let mut bridge_params = perceiver_w.loaded_elements();
        for &i in &plan {
            let w = &block_ws[&i];
            cross_attn[i] = Some(GatedCrossAttentionBlock::load(
                w,
                info.hidden_size,
                vis_dim,
                &spec.cross_attn,
            )?);
            bridge_params += w.loaded_elements();
        }

        let embedding_params = lm.input_embeddings().elem_count() as u64;
        let summary = ModelSummary {
            family: info.family,
            model_type: info.model_type.clone(),
            lm_layers: info.num_layers,
            cross_attn_layers: plan.clone(),
            hidden_size: info.hidden_size,
            vocab_size: info.vocab_size,
            vision_layers: vision_cfg.num_hidden_layers,
            vision_hidden_size: vis_dim,
            image_size: vision_cfg.image_size,
            parameters_total: vision_w.loaded_elements() + lm_w.loaded_elements() + bridge_params,
            parameters_trainable: bridge_params + embedding_params,
        };

        Ok(Self {
            vision,
            perceiver,
            perceiver_cfg: spec.perceiver.clone(),
            cross_attn_cfg: spec.cross_attn.clone(),
            bridge,
            trainable_rows: None,
            lm,
            cross_attn,
            cross_attn_layers: plan,
            media_token_id: spec.media_token_id,
            end_of_chunk_token_id: spec.end_of_chunk_token_id,
            report,
            summary,
            device: device.clone(),
        })
    }

    /// The perceiver and cross-attention tensors under their OpenFlamingo checkpoint names
    /// (`perceiver.*`, `lang_encoder.<layers>.<i>.gated_cross_attn_layer.*`).
    pub fn bridge_tensors(&self) -> &HashMap<String, Tensor> {
        &self.bridge
    }

    /// Rebuilds the perceiver and cross-attention blocks from `tensors` (checkpoint names, as
    /// `bridge_tensors` returns them). Passing `Var` tensors makes the bridge trainable.
    pub fn set_bridge_tensors(&mut self, tensors: HashMap<String, Tensor>) -> Result<()> {
        let layers_path = self.lm.info().family.decoder_layers_path();
        let vis_dim = self.vision.config().hidden_size;
        let dim = self.lm.info().hidden_size;
        let sub = |prefix: &str| -> HashMap<String, Tensor> {
            tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(prefix)
                        .map(|rest| (rest.to_string(), t.clone()))
                })
                .collect()
        };
        let perceiver = PerceiverResampler::load(
            &Weights::from_tensors(sub("perceiver."), DType::F32, &self.device),
            vis_dim,
            &self.perceiver_cfg,
        )?;
        let mut blocks: Vec<Option<GatedCrossAttentionBlock>> =
            (0..self.cross_attn.len()).map(|_| None).collect();
        for &i in &self.cross_attn_layers {
            let w = Weights::from_tensors(
                sub(&block_key(layers_path, i, "")),
                DType::F32,
                &self.device,
            );
            blocks[i] = Some(GatedCrossAttentionBlock::load(
                &w,
                dim,
                vis_dim,
                &self.cross_attn_cfg,
            )?);
        }
        self.perceiver = perceiver;
        self.cross_attn = blocks;
        self.bridge = tensors;
        Ok(())
    }

    /// Makes the embedding rows `rows.ids` use `rows.rows` instead of the LM's table (`None`
    /// restores the table).
    pub fn set_trainable_rows(&mut self, rows: Option<TrainableRows>) -> Result<()> {
        if let Some(r) = &rows {
            let d = self.lm.input_embeddings().dim(1)?;
            if r.rows.dims() != [r.ids.len(), d] {
                return Err(Error::InvalidInput(format!(
                    "trainable embedding rows must have shape [{}, {d}], got {:?}",
                    r.ids.len(),
                    r.rows.dims()
                )));
            }
            if let Some(bad) = r
                .ids
                .iter()
                .find(|&&i| i as usize >= self.lm.info().vocab_size)
            {
                return Err(Error::InvalidInput(format!(
                    "embedding row {bad} is outside the vocabulary"
                )));
            }
        }
        self.trainable_rows = rows;
        Ok(())
    }

    pub fn trainable_rows(&self) -> Option<&TrainableRows> {
        self.trainable_rows.as_ref()
    }

    /// `(B, T, k)` one-hot of which trainable row each token is, and `(k, D)` row deltas.
    fn row_overrides(&self, ids: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some(tr) = &self.trainable_rows else {
            return Ok(None);
        };
        let idx = Tensor::from_slice(&tr.ids, tr.ids.len(), &self.device)?;
        let frozen = self.lm.input_embeddings().index_select(&idx, 0)?;
        let delta = (&tr.rows - frozen)?;
        let ids_col = ids.unsqueeze(2)?.to_dtype(DType::U32)?;
        let which = ids_col
            .broadcast_eq(&idx.reshape((1, 1, tr.ids.len()))?)?
            .to_dtype(DType::F32)?;
        Ok(Some((which, delta)))
    }

    pub fn summary(&self) -> &ModelSummary {
        &self.summary
    }
    pub fn report(&self) -> &LoadReport {
        &self.report
    }
    pub fn lm(&self) -> &dyn CausalLm {
        self.lm.as_ref()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn media_token_id(&self) -> u32 {
        self.media_token_id
    }
    pub fn end_of_chunk_token_id(&self) -> u32 {
        self.end_of_chunk_token_id
    }
    pub fn cross_attn_layers(&self) -> &[usize] {
        &self.cross_attn_layers
    }

    /// Checks `vision_x` is `(B, T_img, F=1, C, H, W)` with the tower's channels and size.
    fn check_vision_x(&self, vision_x: &Tensor) -> Result<(usize, usize)> {
        let dims = vision_x.dims();
        let cfg = self.vision.config();
        if dims.len() != 6 {
            return Err(Error::InvalidInput(format!(
                "visionX must have rank 6 (batch, images, frames, channels, height, width), got shape {dims:?}"
            )));
        }
        let (b, t, f, c, h, w) = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]);
        if f != 1 {
            return Err(Error::InvalidInput(format!(
                "visionX has {f} frames per image; only single-frame media are supported (as in the reference)"
            )));
        }
        if c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            return Err(Error::InvalidInput(format!(
                "visionX images are {c}×{h}×{w}, but the vision tower expects {}×{}×{} (channels×height×width)",
                cfg.num_channels, cfg.image_size, cfg.image_size
            )));
        }
        if b == 0 || t == 0 {
            return Err(Error::InvalidInput(format!(
                "visionX is empty (shape {dims:?})"
            )));
        }
        Ok((b, t))
    }

    /// CLIP patch tokens `(B, T_img, F, P, Dv)` for `vision_x` `(B, T_img, F, 3, H, W)`.
    pub fn vision_tokens(&self, vision_x: &Tensor) -> Result<Tensor> {
        let (b, t) = self.check_vision_x(vision_x)?;
        let cfg = self.vision.config();
        let pixels = vision_x.to_dtype(DType::F32)?.reshape((
            b * t,
            cfg.num_channels,
            cfg.image_size,
            cfg.image_size,
        ))?;
        let tokens = self.vision.forward(&pixels)?;
        let (_, p, d) = tokens.dims3()?;
        Ok(tokens.reshape((b, t, 1, p, d))?)
    }

    /// Vision tower and Perceiver: `(B, T_img, F, 3, H, W)` → `(B, T_img, latents, Dv)`.
    pub fn encode_vision(&self, vision_x: &Tensor) -> Result<Tensor> {
        let tokens = self.vision_tokens(vision_x)?;
        self.perceiver.forward(&tokens)
    }

    /// Cross-attention keys/values of `media` `(B, T_img, latents, Dv)` for every block.
    pub fn condition(&self, media: &Tensor) -> Result<MediaConditioning> {
        let (batch, num_media, _, _) = media.dims4()?;
        let per_layer = self
            .cross_attn
            .iter()
            .map(|b| b.as_ref().map(|b| b.media_kv(media)).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(MediaConditioning {
            per_layer,
            num_media,
            batch,
        })
    }

    /// The inclusive running count of `<image>` tokens in each row.
    pub fn prompt_text_times(&self, ids: &[Vec<u32>]) -> Vec<Vec<u32>> {
        ids.iter()
            .map(|row| {
                let mut n = 0u32;
                row.iter()
                    .map(|&t| {
                        n += (t == self.media_token_id) as u32;
                        n
                    })
                    .collect()
            })
            .collect()
    }

    /// The LM stack with cross-attention: `ids` `(B, T)` new tokens, `attention_mask` rows
    /// covering cached + new tokens. Returns logits `(B, T, V)`.
    pub fn forward_tokens(
        &self,
        ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        media: &MediaConditioning,
        text_times: &TextTimes,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map(|r| r.len()).unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(Error::InvalidInput("langX is empty".into()));
        }
        if ids.iter().any(|r| r.len() != t) {
            return Err(Error::InvalidInput(
                "langX rows have different lengths".into(),
            ));
        }
        if media.batch != b {
            return Err(Error::InvalidInput(format!(
                "langX has {b} rows but the media batch has {}",
                media.batch
            )));
        }
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        if attention_mask.len() != b || attention_mask.iter().any(|r| r.len() != past + t) {
            return Err(Error::InvalidInput(format!(
                "attentionMask must be {b} rows of {} (cached + new tokens)",
                past + t
            )));
        }
        let vocab = self.lm.info().vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if let Some(max) = self.lm.info().max_positions {
            let longest = attention_mask
                .iter()
                .map(|r| r.iter().filter(|&&m| m != 0).count())
                .max()
                .unwrap_or(0);
            if longest > max {
                return Err(Error::InvalidInput(format!(
                    "the sequence has {longest} tokens but the model supports at most {max} positions"
                )));
            }
        }

        let times: Vec<u32> = match text_times {
            TextTimes::Prompt => self.prompt_text_times(ids).into_iter().flatten().collect(),
            TextTimes::AfterPrompt(per_row) => {
                if per_row.len() != b {
                    return Err(Error::InvalidInput(
                        "one image count per row is required".into(),
                    ));
                }
                per_row
                    .iter()
                    .flat_map(|&n| std::iter::repeat_n(n, t))
                    .collect()
            }
        };
        let text_time = Tensor::from_vec(times, (b, t), &self.device)?;

        let ctx = AttentionContext::new(attention_mask, past, DType::F32, &self.device)?;
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids_t = Tensor::from_vec(flat, (b, t), &self.device)?;
        let mut h = self.lm.embed(&ids_t, &ctx)?;
        let overrides = self.row_overrides(&ids_t)?;
        if let Some((which, delta)) = &overrides {
            let delta_hidden = self.lm.project_embedding_delta(delta)?;
            h = (h + which.broadcast_matmul(&delta_hidden)?)?;
        }
        for i in 0..self.lm.info().num_layers {
            if let (Some(block), Some(kv)) = (&self.cross_attn[i], &media.per_layer[i]) {
                h = block.forward(&h, kv, &text_time)?;
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = self.lm.layer(i, &h, &ctx, layer_cache)?;
        }
        let logits = self.lm.head(&h)?;
        match (&overrides, &self.trainable_rows) {
            // Tied head: the trainable rows are also output-projection rows.
            (Some((_, delta)), Some(tr)) if self.lm.info().output_embedding_key.is_none() => {
                let hf = self.lm.final_hidden(&h)?;
                let extra = hf.broadcast_matmul(&delta.t()?)?; // (B, T, k)
                let vocab = logits.dim(2)?;
                let mut onehot = vec![0f32; tr.ids.len() * vocab];
                for (j, &id) in tr.ids.iter().enumerate() {
                    onehot[j * vocab + id as usize] = 1.0;
                }
                let onehot = Tensor::from_vec(onehot, (tr.ids.len(), vocab), &self.device)?;
                Ok((logits + extra.broadcast_matmul(&onehot)?)?)
            }
            _ => Ok(logits),
        }
    }

    /// The reference's `Flamingo.forward`: encode the images, run the LM with cross-attention
    /// over the whole sequence, and the shifted cross-entropy when labels are given.
    pub fn forward(&self, input: &ForwardInput) -> Result<ForwardOutput> {
        let (b_img, num_media) = self.check_vision_x(&input.vision_x)?;
        let ids = tensor_rows_u32(&input.lang_x, "langX")?;
        let b = ids.len();
        if b != b_img {
            return Err(Error::InvalidInput(format!(
                "visionX has {b_img} samples but langX has {b} rows"
            )));
        }
        let t = ids[0].len();
        let mask = match &input.attention_mask {
            Some(m) => {
                let rows = tensor_rows_u32(m, "attentionMask")?;
                if rows.len() != b || rows[0].len() != t {
                    return Err(Error::InvalidInput(format!(
                        "attentionMask must have the shape of langX [{b}, {t}]"
                    )));
                }
                rows
            }
            None => vec![vec![1; t]; b],
        };
        if !input.allow_excess_media_tokens {
            for (row, times) in self.prompt_text_times(&ids).iter().enumerate() {
                let n = times.last().copied().unwrap_or(0) as usize;
                if n > num_media {
                    return Err(Error::InvalidInput(format!(
                        "row {row} of langX has {n} <image> tokens but only {num_media} images were supplied per sample (visionX dimension 1); pass allowExcessMediaTokens to keep the reference's behaviour (the extra tokens attend uniformly to all images)"
                    )));
                }
            }
        }
        let media = self.encode_vision(&input.vision_x)?;
        let cond = self.condition(&media)?;
        let logits = self.forward_tokens(&ids, &mask, &cond, &TextTimes::Prompt, None)?;
        let loss = match &input.labels {
            Some(labels) => Some(shifted_cross_entropy(&logits, labels)?),
            None => None,
        };
        Ok(ForwardOutput { logits, loss })
    }
}

/// The checkpoint name of cross-attention tensor `key` of the block before LM layer `i`.
pub fn block_key(layers_path: &str, i: usize, key: &str) -> String {
    format!("lang_encoder.{layers_path}.{i}.gated_cross_attn_layer.{key}")
}

/// Reads a `(B, T)` integer tensor into rows.
pub fn tensor_rows_u32(t: &Tensor, name: &str) -> Result<Vec<Vec<u32>>> {
    let dims = t.dims();
    if dims.len() != 2 || dims[0] == 0 || dims[1] == 0 {
        return Err(Error::InvalidInput(format!(
            "{name} must have shape [batch, tokens] with both > 0, got {dims:?}"
        )));
    }
    let rows: Vec<Vec<i64>> = t.to_dtype(DType::I64)?.to_vec2()?;
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| {
                    u32::try_from(v).map_err(|_| {
                        Error::InvalidInput(format!(
                            "{name} holds {v}, which is not a valid token id"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

/// HF's causal-LM loss: logits at `t` predict labels at `t+1`; labels −100 are ignored; the
/// mean over the rest. Differentiable (log-softmax, gather and sums only).
pub fn shifted_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if labels.dims() != [b, t] {
        return Err(Error::InvalidInput(format!(
            "labels must have the shape of langX [{b}, {t}], got {:?}",
            labels.dims()
        )));
    }
    if t < 2 {
        return Err(Error::InvalidInput(
            "a loss needs at least two tokens per row".into(),
        ));
    }
    let labels = labels.to_dtype(DType::I64)?;
    let targets = labels.narrow(1, 1, t - 1)?.flatten_all()?;
    let valid = targets.ge(0i64)?;
    let count = valid.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        return Err(Error::InvalidInput(
            "every label is -100: the loss is undefined (the reference would produce NaN)".into(),
        ));
    }
    let max_label = targets.max(0)?.to_scalar::<i64>()?;
    if max_label >= v as i64 {
        return Err(Error::InvalidInput(format!(
            "label {max_label} is outside the vocabulary (size {v})"
        )));
    }
    let safe_targets = valid
        .where_cond(&targets, &targets.zeros_like()?)?
        .to_dtype(DType::U32)?;
    let logits = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs
        .gather(&safe_targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let picked = (picked * valid.to_dtype(DType::F32)?)?;
    Ok((picked.sum_all()?.neg()? / count as f64)?)
}

/// Picks the checkpoint's LM tensors that apply over the LM's own files: same shape, or the
/// rows the vocabulary resize will produce. A tensor the LM has with another shape is an
/// error, as in the reference (`load_state_dict` raises on size mismatches even when not strict).
fn select_lm_overrides(
    overrides: &MemoryTensors,
    base: &dyn TensorSource,
    vocab_size: Option<usize>,
    report: &mut LoadReport,
) -> Result<MemoryTensors> {
    let mut selected = MemoryTensors::new("checkpoint LM weights", HashMap::new());
    let mut keys: Vec<_> = overrides.tensors().keys().cloned().collect();
    keys.sort();
    for key in keys {
        let t = overrides.tensors()[&key].clone();
        let applies = match base.shape(&key) {
            None => true,
            Some(base_shape) => {
                let shape = t.dims();
                let after_resize = vocab_size.is_some_and(|v| {
                    shape.first() == Some(&v)
                        && shape.len() == base_shape.len()
                        && shape[1..] == base_shape[1..]
                });
                if shape != base_shape.as_slice() && !after_resize {
                    return Err(Error::Checkpoint(format!(
                        "checkpoint tensor lang_encoder.{key} has shape {shape:?} but the LM's {key} has shape {base_shape:?} (is this checkpoint for another LM or tokenizer?)"
                    )));
                }
                // The LM loaders read the file's row count and resize after loading. For a
                // shrink (the releases: 50432 → 50280) hand them the checkpoint's rows followed
                // by the file's own surplus rows, which the resize then drops: the result is
                // exactly the checkpoint's matrix, as the reference's resize-then-load gives.
                if shape[0] < base_shape[0] && shape[1..] == base_shape[1..] {
                    let surplus = base
                        .load(&key)?
                        .narrow(0, shape[0], base_shape[0] - shape[0])?
                        .to_dtype(t.dtype())?;
                    let padded = Tensor::cat(&[&t, &surplus], 0)?;
                    report.lm_overrides.push(key.clone());
                    selected.insert(key, padded);
                    continue;
                }
                true
            }
        };
        if applies {
            report.lm_overrides.push(key.clone());
            selected.insert(key, t);
        }
    }
    Ok(selected)
}

impl MediaConditioning {
    /// Selects rows of the batch (`rows[i]` = the source row of new row `i`): repeats each
    /// sample per beam or per returned sequence, and follows beam reordering.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let idx = Tensor::from_slice(rows, rows.len(), self.device()?)?;
        let per_layer = self
            .per_layer
            .iter()
            .map(|kv| {
                kv.as_ref()
                    .map(|kv| -> Result<MediaKv> {
                        Ok(MediaKv {
                            k: kv.k.index_select(&idx, 0)?,
                            v: kv.v.index_select(&idx, 0)?,
                            num_media: kv.num_media,
                            latents_per_media: kv.latents_per_media,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            per_layer,
            num_media: self.num_media,
            batch: rows.len(),
        })
    }

    fn device(&self) -> Result<&Device> {
        Ok(self
            .per_layer
            .iter()
            .flatten()
            .next()
            .map(|kv| kv.k.device())
            .unwrap_or(&Device::Cpu))
    }
}
