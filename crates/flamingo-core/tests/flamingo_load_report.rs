//! What a non-strict load reports: checkpoint keys the model has no place for are listed in
//! `report().unexpected`, as the reference's `load_state_dict(strict=False)` lists them,
//! instead of vanishing. Fixture: the golden llama checkpoint (shared/golden/llama, made by
//! tools/make_golden.py with GOLDEN_SEED=2000): 4 LM layers, a block before every one, a
//! depth-6 perceiver.

mod common;

use candle_core::Device;
use common::*;
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, LoadSpec};

fn llama_spec(cross_attn_layers: Vec<usize>, perceiver_depth: usize, strict: bool) -> LoadSpec {
    let dir = golden_dir().join("llama");
    LoadSpec {
        vision_dir: dir.join("vision"),
        lm_dir: dir.join("lm"),
        checkpoint: Some(dir.join("checkpoint.pt")),
        media_token_id: 94,
        end_of_chunk_token_id: 93,
        cross_attn_layers,
        decoder_layers_path: Some("model.layers".to_string()),
        perceiver: PerceiverConfig {
            depth: perceiver_depth,
            ..PerceiverConfig::default()
        },
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: None,
        strict,
        init_seed: 0,
    }
}

/// The golden checkpoint's keys (from meta.json) that start with `prefix`.
fn checkpoint_keys_with(prefix: &str) -> Vec<String> {
    meta("llama")["checkpoint_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .filter(|k| k.starts_with(prefix))
        .collect()
}

#[test]
fn non_strict_load_lists_the_blocks_outside_the_layer_plan_as_unexpected() {
    let model = Flamingo::load(&llama_spec(vec![1, 3], 6, false), &Device::Cpu).unwrap();
    let mut want = checkpoint_keys_with("lang_encoder.model.layers.0.gated_cross_attn_layer.");
    want.extend(checkpoint_keys_with(
        "lang_encoder.model.layers.2.gated_cross_attn_layer.",
    ));
    assert_eq!(want.len(), 22, "11 keys per block");
    let mut got = model.report().unexpected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(model.cross_attn_layers(), &[1, 3]);
}

#[test]
fn non_strict_load_lists_perceiver_layers_beyond_its_depth_as_unexpected() {
    let model = Flamingo::load(&llama_spec(vec![0, 1, 2, 3], 4, false), &Device::Cpu).unwrap();
    let mut want = checkpoint_keys_with("perceiver.layers.4.");
    want.extend(checkpoint_keys_with("perceiver.layers.5."));
    assert_eq!(want.len(), 22);
    let mut got = model.report().unexpected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_load_that_uses_every_bridge_key_reports_nothing_unexpected() {
    let model = Flamingo::load(&llama_spec(vec![0, 1, 2, 3], 6, false), &Device::Cpu).unwrap();
    assert_eq!(model.report().unexpected, Vec::<String>::new());
}

#[test]
fn strict_load_refuses_blocks_outside_the_layer_plan_naming_the_layer_and_the_plan() {
    let err = Flamingo::load(&llama_spec(vec![1, 3], 6, true), &Device::Cpu)
        .err()
        .expect("strict load must refuse a block at layer 0");
    let msg = err.to_string();
    assert!(
        msg.contains("cross-attention block at LM layer 0")
            && msg.contains("[1, 3]")
            && msg.contains("cross_attn_every_n_layers"),
        "{msg}"
    );
}
