//! Helpers for the training tests: the golden tiny models (../shared/golden, made by
//! shared/golden/tools/make_golden.py with GOLDEN_SEED=2000) loaded as a user loads them,
//! and deterministic training batches built from their inputs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use flamingo_core::lm::AttentionContext;
use flamingo_core::train::{MicroBatch, TrainConfig, Trainer, WeightedInput};

pub const FAMILIES: [&str; 4] = ["llama", "opt", "gpt_neox", "mpt"];
pub const EOC: u32 = 93;
pub const MEDIA: u32 = 94;

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
}

pub fn golden(family: &str) -> HashMap<String, Tensor> {
    let path = golden_dir().join(family).join("golden.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn meta(family: &str) -> serde_json::Value {
    let path = golden_dir().join(family).join("meta.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The fixture's model with its reference checkpoint (or another one).
pub fn spec(family: &str, checkpoint: Option<PathBuf>) -> LoadSpec {
    let meta = meta(family);
    let dir = golden_dir().join(family);
    let n = meta["cross_attn_every_n_layers"].as_u64().unwrap() as usize;
    let lm_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lm/config.json")).unwrap())
            .unwrap();
    let layers = lm_cfg
        .get("num_hidden_layers")
        .or_else(|| lm_cfg.get("n_layers"))
        .and_then(|v| v.as_u64())
        .unwrap() as usize;
    LoadSpec {
        vision_dir: dir.join("vision"),
        lm_dir: dir.join("lm"),
        checkpoint: Some(checkpoint.unwrap_or_else(|| dir.join("checkpoint.pt"))),
        media_token_id: MEDIA,
        end_of_chunk_token_id: EOC,
        cross_attn_layers: (0..layers).filter(|i| (i + 1) % n == 0).collect(),
        decoder_layers_path: Some(
            meta["decoder_layers_attr_name"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        perceiver: PerceiverConfig::default(),
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: None,
        strict: true,
        init_seed: 0,
    }
}

pub fn load(family: &str) -> Flamingo {
    Flamingo::load(&spec(family, None), &Device::Cpu).unwrap_or_else(|e| panic!("{family}: {e}"))
}

pub fn trainer(family: &str, cfg: TrainConfig) -> Trainer {
    Trainer::new(load(family), cfg).unwrap_or_else(|e| panic!("{family}: {e}"))
}

/// The golden forward's inputs (two rows, two images each, labels as the reference made).
pub fn golden_input(g: &HashMap<String, Tensor>) -> ForwardInput {
    ForwardInput {
        vision_x: g["vision_x"].clone(),
        lang_x: g["lang_x"].clone(),
        attention_mask: Some(g["attention_mask"].clone()),
        labels: Some(g["labels"].clone()),
        allow_excess_media_tokens: false,
    }
}

/// Deterministic variations of the golden batch: scaled images, and every `variant`-th
/// target masked, so consecutive steps see different data.
pub fn batch(g: &HashMap<String, Tensor>, variant: usize) -> ForwardInput {
    let mut input = golden_input(g);
    let scale = 1.0 - 0.1 * (variant % 5) as f64;
    input.vision_x = (&input.vision_x * scale).unwrap();
    let mut labels: Vec<Vec<i64>> = input.labels.unwrap().to_vec2().unwrap();
    for row in labels.iter_mut() {
        for (j, l) in row.iter_mut().enumerate() {
            if variant > 0 && j % (variant % 3 + 2) == 0 {
                *l = -100;
            }
        }
    }
    input.labels = Some(Tensor::new(labels, &Device::Cpu).unwrap());
    input
}

/// Every label ignored: the reference's loss is NaN for such a batch.
pub fn all_masked(g: &HashMap<String, Tensor>) -> ForwardInput {
    let mut input = golden_input(g);
    let dims = input.labels.unwrap().dims().to_vec();
    input.labels = Some(
        Tensor::from_vec(
            vec![-100i64; dims[0] * dims[1]],
            (dims[0], dims[1]),
            &Device::Cpu,
        )
        .unwrap(),
    );
    input
}

/// One micro-batch with a LAION-like part (×0.2) and an MMC4-like part (×1.0).
pub fn two_part(g: &HashMap<String, Tensor>, step: usize) -> MicroBatch {
    MicroBatch::new(vec![
        WeightedInput::new(batch(g, 2 * step), 0.2, "laion"),
        WeightedInput::new(batch(g, 2 * step + 1), 1.0, "mmc4"),
    ])
}

pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The LM alone (no cross-attention) on fixed ids: a fingerprint of every frozen LM weight
/// on the path from the embedding to the head.
pub fn lm_only_logits(model: &Flamingo) -> Tensor {
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 90).collect();
    let ids_t = Tensor::from_vec(ids, (1, 12), &Device::Cpu).unwrap();
    let ctx = AttentionContext::new(&[vec![1; 12]], 0, DType::F32, &Device::Cpu).unwrap();
    let lm = model.lm();
    let mut h = lm.embed(&ids_t, &ctx).unwrap();
    for i in 0..lm.info().num_layers {
        h = lm.layer(i, &h, &ctx, None).unwrap();
    }
    lm.head(&h).unwrap()
}
