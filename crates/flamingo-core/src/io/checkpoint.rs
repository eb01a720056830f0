//! OpenFlamingo checkpoints (`checkpoint.pt` as the reference trainer saves and the hub
//! releases ship it, or a safetensors conversion), split into the parts a model loads:
//! Perceiver weights, one gated cross-attention block per LM layer index, and LM weights that
//! override the pretrained LM's (embeddings, tied aliases). Follows the key layout of
//! openflamingo-spec §8.1 and the trainer's filter (§7.7).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::io::hf::open_weights_file;
use crate::io::{MemoryTensors, TensorSource};
use crate::{Error, Result};

/// The tensors of one `GatedCrossAttentionBlock` (spec §3.5, §8.1), relative to the block.
pub const CROSS_ATTN_BLOCK_KEYS: [&str; 11] = [
    "attn_gate",
    "ff_gate",
    "attn.norm.weight",
    "attn.norm.bias",
    "attn.to_q.weight",
    "attn.to_kv.weight",
    "attn.to_out.weight",
    "ff.0.weight",
    "ff.0.bias",
    "ff.1.weight",
    "ff.3.weight",
];

/// The tensors of a `PerceiverResampler` of `depth` layers (spec §3.3), without the
/// `perceiver.` prefix, in module order.
pub fn perceiver_keys(depth: usize) -> Vec<String> {
    let mut keys = vec!["latents".to_string()];
    for i in 0..depth {
        for k in [
            "0.norm_media.weight",
            "0.norm_media.bias",
            "0.norm_latents.weight",
            "0.norm_latents.bias",
            "0.to_q.weight",
            "0.to_kv.weight",
            "0.to_out.weight",
            "1.0.weight",
            "1.0.bias",
            "1.1.weight",
            "1.3.weight",
        ] {
            keys.push(format!("layers.{i}.{k}"));
        }
    }
    keys.push("norm.weight".to_string());
    keys.push("norm.bias".to_string());
    keys
}

/// The Flamingo weights of a checkpoint, split by destination. Tensors are f32 on the CPU.
pub struct FlamingoCheckpoint {
    /// `perceiver.*` tensors, keys without the `perceiver.` prefix.
    pub perceiver: MemoryTensors,
    /// One entry per LM layer index that has a gated cross-attention block, keys relative to
    /// the block (`attn.to_q.weight`, `attn_gate`, …).
    pub cross_attn: BTreeMap<usize, MemoryTensors>,
    /// `lang_encoder.<rest>` keys that are LM weights (embeddings, tied aliases, positions),
    /// with `lang_encoder.` stripped: HF LM key names.
    pub lm_overrides: MemoryTensors,
    /// Keys that were recognised and deliberately ignored (old_decoder_blocks, decoder_layer,
    /// buffers like attention.bias / masked_bias / rotary_emb.inv_freq, vision_encoder.*,
    /// alias spellings that duplicate a block already read).
    pub ignored: Vec<String>,
    /// Keys that fit nothing above (reported; an error in strict mode).
    pub unexpected: Vec<String>,
    /// The LM's decoder layer list, e.g. `transformer.blocks`, as passed to `from_source`.
    pub decoder_layers_path: String,
    /// Where the weights came from, for messages.
    pub source: String,
}

/// What a checkpoint key is, after `module.` is stripped.
enum Slot {
    Perceiver(String),
    /// `lang_encoder.<path>.<i>.gated_cross_attn_layer.<rest>`: the canonical spelling.
    CrossAttn(usize, String),
    /// `lang_encoder.gated_cross_attn_layers.<i>.<rest>`: the same parameter, registered a
    /// second time by `init_flamingo_layers` (spec §2.5).
    CrossAttnAlias(usize, String),
    Lm(String),
    Ignored,
    Unexpected,
}

/// Buffers a state dict carries but no model loads: causal-mask caches and RoPE frequencies
/// that the LM recomputes (GPT-NeoX `attention.bias`/`masked_bias`, GPT-J `attn.bias`, …).
fn is_buffer(name: &str) -> bool {
    let last_two: Vec<&str> = name.rsplit('.').take(2).collect();
    matches!(
        last_two.as_slice(),
        ["inv_freq", ..] | ["masked_bias", ..] | ["bias", "attention" | "attn"]
    )
}

/// `<i>.<rest>` -> (i, rest).
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn classify(key: &str, layers_prefix: &str) -> Slot {
    if let Some(rest) = key.strip_prefix("perceiver.") {
        return Slot::Perceiver(rest.to_string());
    }
    if key.starts_with("vision_encoder.") {
        // Frozen CLIP weights come from their own pretrained files (spec §8.1).
        return Slot::Ignored;
    }
    let Some(lm_key) = key.strip_prefix("lang_encoder.") else {
        return Slot::Unexpected;
    };
    if let Some(rest) = lm_key.strip_prefix("gated_cross_attn_layers.") {
        return match split_index(rest) {
            Some((i, r)) => Slot::CrossAttnAlias(i, r.to_string()),
            None => Slot::Unexpected,
        };
    }
    if lm_key.starts_with("old_decoder_blocks.") {
        // The LM's own layers under a second name (spec §2.5): the LM loads them from its files.
        return Slot::Ignored;
    }
    if let Some((i, tail)) = lm_key.strip_prefix(layers_prefix).and_then(split_index) {
        if let Some(r) = tail.strip_prefix("gated_cross_attn_layer.") {
            return Slot::CrossAttn(i, r.to_string());
        }
        if tail.starts_with("decoder_layer.") {
            return Slot::Ignored;
        }
    } else if lm_key.contains(".gated_cross_attn_layer.") {
        // A cross-attention block under another layer path: the caller's path is wrong, or
        // the checkpoint is for another LM. `validate` says which.
        return Slot::Unexpected;
    } else if lm_key.contains(".decoder_layer.") {
        return Slot::Ignored;
    }
    if is_buffer(lm_key) {
        return Slot::Ignored;
    }
    Slot::Lm(lm_key.to_string())
}

fn load_f32(src: &dyn TensorSource, key: &str) -> Result<Tensor> {
    let t = src.load(key)?;
    Ok(if t.dtype() == DType::F32 {
        t
    } else {
        t.to_dtype(DType::F32)?
    })
}

fn bit_identical(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

impl FlamingoCheckpoint {
    /// `decoder_layers_path` e.g. "transformer.blocks". Accepts a pickle or safetensors file
    /// (by content), both alias spellings `lang_encoder.<path>.<i>.gated_cross_attn_layer.X` and
    /// `lang_encoder.gated_cross_attn_layers.<i>.X` (if both present they must agree; the first
    /// is used), an optional `model_state_dict` wrapper and `module.` prefix.
    pub fn open(path: &Path, decoder_layers_path: &str) -> Result<Self> {
        let src = open_weights_file(path)?;
        Self::from_source(src.as_ref(), decoder_layers_path)
    }

    pub fn from_source(src: &dyn TensorSource, decoder_layers_path: &str) -> Result<Self> {
        let layers_path = decoder_layers_path.trim_matches('.');
        if layers_path.is_empty() {
            return Err(Error::InvalidInput(
                "decoder_layers_path is empty; expected the LM's layer list, e.g. \"model.layers\""
                    .into(),
            ));
        }
        let layers_prefix = format!("{layers_path}.");
        let describe = src.describe();

        let mut keys = src.keys();
        keys.sort();
        // `module.x` (DDP) names the same weight as `x`; when both exist the plain one wins.
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut ignored = Vec::new();
        for k in &keys {
            if !k.starts_with("module.") {
                by_name.insert(k.clone(), k.clone());
            }
        }
        for k in &keys {
            if let Some(stripped) = k.strip_prefix("module.") {
                if by_name.contains_key(stripped) {
                    ignored.push(k.clone());
                } else {
                    by_name.insert(stripped.to_string(), k.clone());
                }
            }
        }

        let mut perceiver = HashMap::new();
        let mut blocks: BTreeMap<usize, HashMap<String, Tensor>> = BTreeMap::new();
        let mut aliases: Vec<(usize, String, String)> = Vec::new();
        let mut lm = HashMap::new();
        let mut unexpected = Vec::new();
        for (name, stored) in &by_name {
            match classify(name, &layers_prefix) {
                Slot::Perceiver(k) => {
                    perceiver.insert(k, load_f32(src, stored)?);
                }
                Slot::CrossAttn(i, k) => {
                    blocks
                        .entry(i)
                        .or_default()
                        .insert(k, load_f32(src, stored)?);
                }
                Slot::CrossAttnAlias(i, k) => aliases.push((i, k, stored.clone())),
                Slot::Lm(k) => {
                    lm.insert(k, load_f32(src, stored)?);
                }
                Slot::Ignored => ignored.push(stored.clone()),
                Slot::Unexpected => unexpected.push(stored.clone()),
            }
        }
        // Aliases fill in blocks the canonical spelling lacks; where both exist they are the
        // same parameter, so a difference means the file was edited inconsistently.
        for (i, k, stored) in aliases {
            let t = load_f32(src, &stored)?;
            let block = blocks.entry(i).or_default();
            match block.get(&k) {
                Some(canonical) => {
                    if !bit_identical(canonical, &t)? {
                        return Err(Error::Checkpoint(format!(
                            "{describe}: {stored} and lang_encoder.{layers_path}.{i}.gated_cross_attn_layer.{k} \
                             name the same parameter but hold different values; remove one of them"
                        )));
                    }
                    ignored.push(stored);
                }
                None => {
                    block.insert(k, t);
                }
            }
        }

        Ok(Self {
            perceiver: MemoryTensors::new(format!("perceiver weights of {describe}"), perceiver),
            cross_attn: blocks
                .into_iter()
                .map(|(i, t)| {
                    let name = format!("cross-attention block of layer {i} in {describe}");
                    (i, MemoryTensors::new(name, t))
                })
                .collect(),
            lm_overrides: MemoryTensors::new(format!("LM weights of {describe}"), lm),
            ignored,
            unexpected,
            decoder_layers_path: layers_path.to_string(),
            source: describe,
        })
    }

    /// The checkpoint name of a cross-attention tensor, e.g.
    /// `lang_encoder.transformer.blocks.3.gated_cross_attn_layer.attn_gate`.
    pub fn cross_attn_key(&self, layer: usize, key: &str) -> String {
        format!(
            "lang_encoder.{}.{layer}.gated_cross_attn_layer.{key}",
            self.decoder_layers_path
        )
    }

    /// Checks that every expected Flamingo key is present for the given layer plan and
    /// perceiver depth: an `Error::Checkpoint` names how many are missing and the first few.
    /// In `strict` mode also errors on `unexpected` keys, on cross-attention blocks at layers
    /// not in the plan, and on perceiver or block tensors the modules do not have.
    pub fn validate(
        &self,
        cross_attn_layers: &[usize],
        perceiver_depth: usize,
        strict: bool,
    ) -> Result<()> {
        let mut missing = Vec::new();
        let expected_perceiver = perceiver_keys(perceiver_depth);
        for k in &expected_perceiver {
            if !self.perceiver.contains(k) {
                missing.push(format!("perceiver.{k}"));
            }
        }
        for &i in cross_attn_layers {
            let block = self.cross_attn.get(&i);
            for k in CROSS_ATTN_BLOCK_KEYS {
                if !block.is_some_and(|b| b.contains(k)) {
                    missing.push(self.cross_attn_key(i, k));
                }
            }
        }
        if !missing.is_empty() {
            let mut msg = format!(
                "checkpoint {} is missing {} key{} the model needs, first: {}",
                self.source,
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                missing[0]
            );
            if missing.len() > 1 {
                let more: Vec<&str> = missing[1..].iter().take(4).map(String::as_str).collect();
                msg += &format!("; then {}", more.join(", "));
                if missing.len() > 5 {
                    msg += ", …";
                }
            }
            if let Some(k) = self
                .unexpected
                .iter()
                .find(|k| k.contains(".gated_cross_attn_layer."))
            {
                msg += &format!(
                    " (it does hold cross-attention weights under another layer path, e.g. {k}: \
                     is the decoder layers path \"{}\" right for this LM?)",
                    self.decoder_layers_path
                );
            }
            return Err(Error::Checkpoint(msg));
        }
        if !strict {
            return Ok(());
        }

        let mut extra: Vec<String> = self.unexpected.clone();
        let known: std::collections::HashSet<&str> =
            expected_perceiver.iter().map(String::as_str).collect();
        let mut perceiver_extra: Vec<String> = self
            .perceiver
            .keys()
            .into_iter()
            .filter(|k| !known.contains(k.as_str()))
            .map(|k| format!("perceiver.{k}"))
            .collect();
        perceiver_extra.sort();
        extra.extend(perceiver_extra);
        for (&i, block) in &self.cross_attn {
            let mut keys = block.keys();
            keys.sort();
            if !cross_attn_layers.contains(&i) {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} has a cross-attention block at LM layer {i}, but the layer plan puts them at {:?} \
                     (check cross_attn_every_n_layers)",
                    self.source, cross_attn_layers
                )));
            }
            extra.extend(
                keys.into_iter()
                    .filter(|k| !CROSS_ATTN_BLOCK_KEYS.contains(&k.as_str()))
                    .map(|k| self.cross_attn_key(i, &k)),
            );
        }
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(5).map(String::as_str).collect();
            return Err(Error::Checkpoint(format!(
                "checkpoint {} has {} unexpected key{} (strict mode): {}{}",
                self.source,
                extra.len(),
                if extra.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if extra.len() > 5 { ", …" } else { "" }
            )));
        }
        Ok(())
    }
}
