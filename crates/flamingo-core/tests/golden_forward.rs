//! Forward-pass parity with the reference OpenFlamingo (open_flamingo 2.0.1, PyTorch 2.11,
//! transformers 5.17, CPU f32) on the tiny fixtures in ../shared/golden, made by
//! shared/golden/tools/make_golden.py with GOLDEN_SEED=2000.

mod common;

use candle_core::{DType, Device};
use common::*;
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};

fn spec(family: &str, with_checkpoint: bool) -> LoadSpec {
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
        checkpoint: with_checkpoint.then(|| dir.join("checkpoint.pt")),
        media_token_id: 94,
        end_of_chunk_token_id: 93,
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

#[test]
fn logits_and_loss_match_the_reference_for_every_family() {
    for family in FAMILIES {
        let g = golden(family);
        let model = Flamingo::load(&spec(family, true), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let out = model
            .forward(&ForwardInput {
                vision_x: g["vision_x"].clone(),
                lang_x: g["lang_x"].clone(),
                attention_mask: Some(g["attention_mask"].clone()),
                labels: Some(g["labels"].clone()),
                allow_excess_media_tokens: false,
            })
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let logits_err = max_abs_diff(&out.logits, &g["logits"]);
        let loss = out.loss.unwrap().to_scalar::<f32>().unwrap();
        let ref_loss = g["loss"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let loss_rel = ((loss - ref_loss) / ref_loss).abs();
        println!("{family}: logits max abs err {logits_err:.3e}, loss rel err {loss_rel:.3e}");
        assert!(
            logits_err <= 1e-4,
            "{family}: logits max abs error {logits_err}"
        );
        assert!(
            loss_rel <= 1e-5,
            "{family}: loss {loss} vs reference {ref_loss}"
        );
    }
}

#[test]
fn vision_tokens_and_perceiver_match_the_reference() {
    for family in FAMILIES {
        let g = golden(family);
        let model = Flamingo::load(&spec(family, true), &Device::Cpu).unwrap();
        let tokens = model.vision_tokens(&g["vision_x"]).unwrap();
        let media = model.encode_vision(&g["vision_x"]).unwrap();
        let e1 = max_abs_diff(&tokens, &g["vision_tokens"]);
        let e2 = max_abs_diff(&media, &g["perceiver_out"]);
        println!("{family}: vision tokens err {e1:.3e}, perceiver err {e2:.3e}");
        assert!(e1 <= 1e-5 && e2 <= 1e-5, "{family}: {e1} {e2}");
    }
}

#[test]
fn fresh_bridge_with_zero_gates_is_exactly_the_language_model() {
    for family in FAMILIES {
        let g = golden(family);
        let fresh = Flamingo::load(&spec(family, false), &Device::Cpu).unwrap();
        let mut plain_spec = spec(family, false);
        plain_spec.cross_attn_layers.clear();
        let plain = Flamingo::load(&plain_spec, &Device::Cpu).unwrap();
        let input = ForwardInput {
            vision_x: g["vision_x"].clone(),
            lang_x: g["lang_x"].clone(),
            attention_mask: None,
            labels: None,
            allow_excess_media_tokens: false,
        };
        let a = fresh.forward(&input).unwrap().logits;
        let b = plain.forward(&input).unwrap().logits;
        let err = max_abs_diff(&a, &b);
        assert!(
            err <= 1e-6,
            "{family}: zero-gate model differs from the LM by {err}"
        );
    }
}
