//! GPT-J (`lm::gptj`) against HF transformers' `GPTJForCausalLM`: the fixture in
//! tests/fixtures/gptj was written by scripts/dev/make_lm_fixtures.py (seed 4242, torch 2.12
//! CPU, transformers 5.17, float32): a tiny random model (n_embd 64, 4 heads, rotary_dim 8 of
//! head 16, 2 layers, vocab 96) with every parameter perturbed off its init, its config.json
//! in the GPT-2 style names EleutherAI/gpt-j-6B ships, and the reference logits. The
//! composition tests pair it with the golden fixtures' tiny CLIP tower (../shared/golden).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use flamingo_core::generate::{GenerationConfig, GenerationSession};
use flamingo_core::io::{SafetensorsFiles, Weights};
use flamingo_core::lm::{self, AttentionContext, CausalLm, KvCache, LmFamily, LmLoadOptions};
use flamingo_core::Error;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gptj")
}

fn weights(dir: &Path) -> Weights {
    let files = SafetensorsFiles::open(&[dir.join("model.safetensors")]).unwrap();
    Weights::new(Arc::new(files), DType::F32, &Device::Cpu)
}

fn load_with(dir: &Path, opts: &LmLoadOptions) -> Box<dyn CausalLm> {
    lm::load_lm(dir, &weights(dir), opts).unwrap_or_else(|e| panic!("loading GPT-J: {e}"))
}

fn load() -> Box<dyn CausalLm> {
    load_with(&fixture(), &LmLoadOptions::default())
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

fn ids_tensor(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

/// The whole stack without a cache: embed, every layer, head.
fn forward(
    lm: &dyn CausalLm,
    ids: &[Vec<u32>],
    mask: &[Vec<u32>],
    past: usize,
    mut cache: Option<&mut KvCache>,
) -> Tensor {
    let ctx = AttentionContext::new(mask, past, DType::F32, &Device::Cpu).unwrap();
    let mut h = lm.embed(&ids_tensor(ids), &ctx).unwrap();
    for i in 0..lm.info().num_layers {
        let c = cache.as_deref_mut().map(|c| &mut c.layers[i]);
        h = lm.layer(i, &h, &ctx, c).unwrap();
    }
    lm.head(&h).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
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

#[test]
fn logits_match_transformers_gptj() {
    let lm = load();
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let mask = rows(&e["attention_mask"]);
    let logits = forward(lm.as_ref(), &ids, &mask, 0, None);
    let err = max_abs_diff(&logits, &e["logits"]);
    println!("gptj logits max abs err {err:.3e}");
    assert!(err <= 1e-5, "max abs error {err}");
}

#[test]
fn left_padded_logits_match_transformers_gptj_with_mask_derived_positions() {
    let lm = load();
    let e = expected();
    let ids = rows(&e["padded_input_ids"]);
    let mask = rows(&e["padded_attention_mask"]);
    let logits = forward(lm.as_ref(), &ids, &mask, 0, None);
    // Only real tokens: what the reference computes for a pad query is not defined behaviour.
    let mut worst = 0f32;
    for (r, m) in mask.iter().enumerate() {
        for (t, &real) in m.iter().enumerate() {
            if real == 1 {
                let ours = logits.get(r).unwrap().get(t).unwrap();
                let theirs = e["padded_logits"].get(r).unwrap().get(t).unwrap();
                worst = worst.max(max_abs_diff(&ours, &theirs));
            }
        }
    }
    println!("gptj padded logits max abs err {worst:.3e}");
    assert!(worst <= 1e-5, "max abs error {worst}");
}

#[test]
fn a_left_padded_row_gives_the_logits_of_the_same_row_unpadded() {
    let lm = load();
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let pad = 3;
    let real = &ids[0][..ids[0].len() - pad];
    let mut padded = vec![95u32; pad];
    padded.extend_from_slice(real);
    let mut mask = vec![0u32; pad];
    mask.extend(std::iter::repeat_n(1, real.len()));
    let batch = forward(
        lm.as_ref(),
        &[padded, ids[1].clone()],
        &[mask, vec![1; ids[1].len()]],
        0,
        None,
    );
    let alone = forward(
        lm.as_ref(),
        &[real.to_vec()],
        &[vec![1; real.len()]],
        0,
        None,
    );
    let err = max_abs_diff(
        &batch.get(0).unwrap().narrow(0, pad, real.len()).unwrap(),
        &alone.get(0).unwrap(),
    );
    println!("padded vs unpadded max abs err {err:.3e}");
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn cached_prefill_and_single_token_steps_equal_a_full_recompute() {
    let lm = load();
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let (b, t) = (ids.len(), ids[0].len());
    let full = forward(lm.as_ref(), &ids, &vec![vec![1; t]; b], 0, None);

    let prefix = 5;
    let mut cache = KvCache::new(lm.info().num_layers);
    let head: Vec<Vec<u32>> = ids.iter().map(|r| r[..prefix].to_vec()).collect();
    let mut parts = vec![forward(
        lm.as_ref(),
        &head,
        &vec![vec![1; prefix]; b],
        0,
        Some(&mut cache),
    )];
    for step in prefix..t {
        let next: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[step]]).collect();
        parts.push(forward(
            lm.as_ref(),
            &next,
            &vec![vec![1; step + 1]; b],
            step,
            Some(&mut cache),
        ));
    }
    assert_eq!(cache.seq_len(), t);
    let cached = Tensor::cat(&parts, 1).unwrap();
    let err = max_abs_diff(&cached, &full);
    println!("cached vs full max abs err {err:.3e}");
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn info_names_the_gptj_keys_and_the_decoder_layers_path() {
    let lm = load();
    let info = lm.info();
    assert_eq!(info.family, LmFamily::GptJ);
    assert_eq!(info.family.decoder_layers_path(), "transformer.h");
    assert_eq!(info.model_type, "gptj");
    assert_eq!(
        (info.hidden_size, info.num_layers, info.vocab_size),
        (64, 2, 96)
    );
    assert_eq!(info.max_positions, Some(64));
    assert_eq!(info.input_embedding_key, "transformer.wte.weight");
    assert_eq!(info.output_embedding_key.as_deref(), Some("lm_head.weight"));
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_vocabulary_resize_shrinks_embedding_head_and_bias_together() {
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let mask = rows(&e["attention_mask"]);
    let small = load_with(
        &fixture(),
        &LmLoadOptions {
            vocab_size: Some(90),
        },
    );
    assert_eq!(small.info().vocab_size, 90);
    assert_eq!(small.input_embeddings().dims(), &[90, 64]);
    let ids: Vec<Vec<u32>> = ids
        .iter()
        .map(|r| r.iter().map(|&t| t.min(89)).collect())
        .collect();
    let reference = forward(load().as_ref(), &ids, &mask, 0, None);
    let logits = forward(small.as_ref(), &ids, &mask, 0, None);
    assert_eq!(logits.dims(), &[2, 12, 90]);
    assert!(max_abs_diff(&logits, &reference.narrow(2, 0, 90).unwrap()) <= 1e-6);

    let grown = load_with(
        &fixture(),
        &LmLoadOptions {
            vocab_size: Some(100),
        },
    );
    let logits = forward(grown.as_ref(), &ids, &mask, 0, None);
    assert_eq!(logits.dims(), &[2, 12, 100]);
    // New rows are the mean row of the old ones (matrix and bias), so the new logits are
    // the mean of the old logits.
    let mean = reference.mean_keepdim(2).unwrap();
    let extra = logits.narrow(2, 96, 4).unwrap();
    let err = max_abs_diff(&extra, &mean.broadcast_as((2, 12, 4)).unwrap());
    assert!(err <= 1e-4, "appended rows are not the mean rows ({err})");
}

#[test]
fn config_errors_are_actionable() {
    let dir = tempdir("gptj-config");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let w = weights(&fixture());
    let try_cfg = |cfg: serde_json::Value| {
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        match lm::load_lm(&dir, &w, &LmLoadOptions::default()) {
            Ok(_) => panic!("loaded a bad config: {cfg}"),
            Err(e) => e,
        }
    };

    let mut cfg = base.clone();
    cfg.as_object_mut().unwrap().remove("n_embd");
    let err = try_cfg(cfg);
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("n_embd"), "{err}");

    let mut cfg = base.clone();
    cfg["rotary_dim"] = serde_json::json!(32);
    let err = try_cfg(cfg);
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("rotary_dim"),
        "{err}"
    );

    let mut cfg = base.clone();
    cfg["n_head"] = serde_json::json!(5);
    let err = try_cfg(cfg);
    assert!(matches!(err, Error::Config { .. }), "{err}");

    let mut cfg = base.clone();
    cfg["activation_function"] = serde_json::json!("swiglu");
    let err = try_cfg(cfg);
    assert!(err.to_string().contains("swiglu"), "{err}");

    // A weight whose shape disagrees with the config names the key.
    let mut cfg = base.clone();
    cfg["n_inner"] = serde_json::json!(128);
    let err = try_cfg(cfg);
    assert!(matches!(err, Error::Weights(_)), "{err}");
    assert!(
        err.to_string().contains("transformer.h.0.mlp.fc_in.weight"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hf_attribute_map_spellings_parse_to_the_same_model() {
    let dir = tempdir("gptj-spelling");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let mut cfg = base.as_object().unwrap().clone();
    for (old, new) in [
        ("n_embd", "hidden_size"),
        ("n_layer", "num_hidden_layers"),
        ("n_head", "num_attention_heads"),
        ("n_positions", "max_position_embeddings"),
    ] {
        let v = cfg.remove(old).unwrap();
        cfg.insert(new.to_string(), v);
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::Value::Object(cfg).to_string(),
    )
    .unwrap();
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let mask = rows(&e["attention_mask"]);
    let lm = lm::load_lm(&dir, &weights(&fixture()), &LmLoadOptions::default()).unwrap();
    let logits = forward(lm.as_ref(), &ids, &mask, 0, None);
    assert!(max_abs_diff(&logits, &e["logits"]) <= 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The golden fixtures' tiny CLIP tower (hub layout), used as the vision side of a GPT-J
/// Flamingo: OpenFlamingo's decoder-layers table lists `gptj` → `transformer.h` (spec §2.4).
fn golden_vision_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/llama/vision")
}

fn gptj_flamingo_spec(layers_path: &str) -> LoadSpec {
    LoadSpec {
        vision_dir: golden_vision_dir(),
        lm_dir: fixture(),
        checkpoint: None,
        media_token_id: 94,
        end_of_chunk_token_id: 93,
        cross_attn_layers: vec![0, 1],
        decoder_layers_path: Some(layers_path.to_string()),
        perceiver: PerceiverConfig::default(),
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: None,
        strict: true,
        init_seed: 7,
    }
}

#[test]
fn gptj_composes_with_gated_cross_attention_before_its_transformer_h_layers() {
    let mut model = Flamingo::load(&gptj_flamingo_spec("transformer.h"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.summary().family, LmFamily::GptJ);
    assert_eq!(model.cross_attn_layers(), &[0, 1]);
    assert!(model
        .bridge_tensors()
        .contains_key("lang_encoder.transformer.h.1.gated_cross_attn_layer.attn_gate"));

    // <image> text <|endofchunk|> <image> text, over two 32×32 images.
    let ids = vec![94u32, 5, 6, 7, 8, 93, 94, 9, 10, 11];
    let t = ids.len();
    let lang_x = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu).unwrap();
    let vision_x = Tensor::arange(0u32, 2 * 3 * 32 * 32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(0.01, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 2, 1, 3, 32, 32))
        .unwrap();
    let run = |model: &Flamingo| {
        model
            .forward(&ForwardInput {
                vision_x: vision_x.clone(),
                lang_x: lang_x.clone(),
                attention_mask: None,
                labels: None,
                allow_excess_media_tokens: false,
            })
            .unwrap()
            .logits
    };

    // Fresh blocks have zero gates (the reference's init): the LM's own logits come out.
    let lm_only = forward(
        load().as_ref(),
        std::slice::from_ref(&ids),
        &[vec![1; t]],
        0,
        None,
    );
    let err = max_abs_diff(&run(&model), &lm_only);
    assert!(
        err <= 1e-5,
        "zero-gate Flamingo differs from GPT-J alone ({err})"
    );

    // Open the gates: the images now reach the text through the blocks.
    let mut bridge = model.bridge_tensors().clone();
    for (k, v) in bridge.iter_mut() {
        if k.ends_with("attn_gate") || k.ends_with("ff_gate") {
            *v = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        }
    }
    model.set_bridge_tensors(bridge).unwrap();
    let gated = run(&model);
    assert!(max_abs_diff(&gated, &lm_only) > 1e-3);

    // KV-cached greedy decoding through the composition equals recomputing the sequence.
    let model = Arc::new(model);
    let steps = 5;
    let result = GenerationSession::start(
        model.clone(),
        &vision_x,
        vec![ids.clone()],
        None,
        GenerationConfig {
            max_new_tokens: steps,
            min_new_tokens: steps,
            ..Default::default()
        },
    )
    .unwrap()
    .run_to_end(&AtomicBool::new(false))
    .unwrap();
    let mut seq = ids.clone();
    for &next in &result.new_tokens[0] {
        let lang_x = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
        let logits = model
            .forward(&ForwardInput {
                vision_x: vision_x.clone(),
                lang_x,
                attention_mask: None,
                labels: None,
                allow_excess_media_tokens: false,
            })
            .unwrap()
            .logits;
        let last: Vec<f32> = logits
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        // Generation bans <|endofchunk|> before min_new_tokens, and <image>.
        let best = last
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 93 && *i != 94)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        assert_eq!(
            next, best,
            "cached step differs from a recompute after {seq:?}"
        );
        seq.push(next);
    }
}

#[test]
fn a_gptj_flamingo_names_transformer_h_when_another_layers_path_is_expected() {
    let err = match Flamingo::load(&gptj_flamingo_spec("model.layers"), &Device::Cpu) {
        Ok(_) => panic!("accepted a wrong decoder layers path"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("transformer.h"), "{err}");
}

#[test]
fn half_precision_weights_run_and_stay_close_to_f32() {
    // bf16/f16 weights: the reference computes attention scores and softmax in f32 whatever
    // the weights' dtype; the rest runs in the weights' dtype.
    let e = expected();
    let ids = rows(&e["input_ids"]);
    let mask = rows(&e["attention_mask"]);
    let reference = &e["logits"];
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let dir = fixture();
        let w = weights(&dir).with_dtype(dtype);
        let lm = lm::load_lm(&dir, &w, &LmLoadOptions::default()).unwrap();
        assert_eq!(lm.input_embeddings().dtype(), dtype);
        let ctx = AttentionContext::new(&mask, 0, DType::F32, &Device::Cpu).unwrap();
        let mut h = lm.embed(&ids_tensor(&ids), &ctx).unwrap();
        for i in 0..lm.info().num_layers {
            h = lm.layer(i, &h, &ctx, None).unwrap();
        }
        let logits = lm.head(&h).unwrap().to_dtype(DType::F32).unwrap();
        let err = max_abs_diff(&logits, reference);
        println!("{dtype:?}: max abs err {err:.3e} (logits up to {scale:.2})");
        assert!(err <= 0.02 * scale, "{dtype:?}: {err}");
    }
}
