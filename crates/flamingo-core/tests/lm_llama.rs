//! Behaviour of the LLaMA decoder on the golden tiny LLaMA (`shared/golden/llama/lm`:
//! HF `LlamaForCausalLM`, 4 layers, 4 heads over 2 kv heads, head_dim 16, vocab 96, random
//! weights; made by `shared/golden/tools/make_golden.py` with transformers 5.17, config in the
//! transformers-4 form). Parity of the whole Flamingo forward with the reference's logits is
//! tested in `golden_forward.rs`; here: cache, padding, config forms, errors, vocab resize.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use flamingo_core::io::{SafetensorsFiles, Weights};
use flamingo_core::lm::{load_lm, AttentionContext, CausalLm, KvCache, LmLoadOptions};
use flamingo_core::Error;

const TOL: f32 = 1e-4;

fn golden_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden/llama"
    ))
    .to_path_buf()
}

fn lm_dir() -> PathBuf {
    golden_dir().join("lm")
}

fn golden_weights() -> Weights {
    let src = SafetensorsFiles::open(&[lm_dir().join("model.safetensors")])
        .expect("golden llama weights open");
    Weights::new(Arc::new(src), DType::F32, &Device::Cpu)
}

fn golden_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(lm_dir().join("model.safetensors"), &Device::Cpu)
        .expect("golden llama weights load")
}

fn golden_config() -> serde_json::Value {
    let text = std::fs::read_to_string(lm_dir().join("config.json")).expect("golden config");
    serde_json::from_str(&text).expect("golden config is JSON")
}

fn load(dir: &Path, weights: &Weights, opts: &LmLoadOptions) -> Box<dyn CausalLm> {
    load_lm(dir, weights, opts).expect("llama loads")
}

/// A scratch folder holding only `config.json`.
fn config_dir(name: &str, cfg: &serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lm_llama_{}_{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).expect("serialise config"),
    )
    .expect("write config");
    dir
}

/// The golden `lang_x` rows (2 × 14; ids < 96, including `<image>` and `<|endofchunk|>`).
fn golden_ids() -> Vec<Vec<u32>> {
    let g = candle_core::safetensors::load(golden_dir().join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors");
    let ids = g["lang_x"].to_dtype(DType::U32).expect("ids as u32");
    ids.to_vec2::<u32>().expect("2-d ids")
}

fn ids_tensor(rows: &[Vec<u32>]) -> Tensor {
    Tensor::new(rows.to_vec(), &Device::Cpu).expect("ids tensor")
}

/// embed → every layer → head, without a cache.
fn forward(lm: &dyn CausalLm, rows: &[Vec<u32>], mask: &[Vec<u32>]) -> Tensor {
    let ctx = AttentionContext::new(mask, 0, DType::F32, &Device::Cpu).expect("ctx");
    let mut h = lm.embed(&ids_tensor(rows), &ctx).expect("embed");
    for i in 0..lm.info().num_layers {
        h = lm.layer(i, &h, &ctx, None).expect("layer");
    }
    lm.head(&h).expect("head")
}

/// Prefill on `prefix` tokens, then one token at a time; logits of every position.
fn forward_cached(
    lm: &dyn CausalLm,
    rows: &[Vec<u32>],
    mask: &[Vec<u32>],
    prefix: usize,
) -> (Tensor, KvCache) {
    let n = lm.info().num_layers;
    let mut cache = KvCache::new(n);
    let total = rows[0].len();
    let mut outs = Vec::new();
    let mut start = 0;
    while start < total {
        let end = if start == 0 { prefix } else { start + 1 };
        let step: Vec<Vec<u32>> = rows.iter().map(|r| r[start..end].to_vec()).collect();
        let seen: Vec<Vec<u32>> = mask.iter().map(|m| m[..end].to_vec()).collect();
        let ctx = AttentionContext::new(&seen, start, DType::F32, &Device::Cpu).expect("ctx");
        assert_eq!(cache.seq_len(), start);
        let mut h = lm.embed(&ids_tensor(&step), &ctx).expect("embed");
        for (i, layer_kv) in cache.layers.iter_mut().enumerate() {
            h = lm.layer(i, &h, &ctx, Some(layer_kv)).expect("layer");
        }
        outs.push(lm.head(&h).expect("head"));
        start = end;
    }
    (Tensor::cat(&outs, 1).expect("cat steps"), cache)
}

/// Prefill both rows, swap them in the cache (as beam search reorders beams), then decode
/// the swapped rows' remaining tokens: the logits are those of the swapped full sequences.
/// (Regression: a prefill once cached transposed, non-contiguous K/V views, and
/// `KvCache::reorder`'s `index_select` refused them — beam search failed on its first step.)
fn check_cache_reorder(lm: &dyn CausalLm, rows: &[Vec<u32>], prefix: usize) -> f32 {
    let dev = &Device::Cpu;
    let swapped = vec![rows[1].clone(), rows[0].clone()];
    let full = forward(lm, &swapped, &ones(&swapped));
    let mut cache = KvCache::new(lm.info().num_layers);
    let prompt: Vec<Vec<u32>> = rows.iter().map(|r| r[..prefix].to_vec()).collect();
    let ctx = AttentionContext::new(&ones(&prompt), 0, DType::F32, dev).unwrap();
    let mut h = lm.embed(&ids_tensor(&prompt), &ctx).unwrap();
    for (i, kv) in cache.layers.iter_mut().enumerate() {
        h = lm.layer(i, &h, &ctx, Some(kv)).unwrap();
    }
    cache
        .reorder(&Tensor::new(&[1u32, 0], dev).unwrap())
        .unwrap();
    let mut worst = 0f32;
    for t in prefix..rows[0].len() {
        let step: Vec<Vec<u32>> = swapped.iter().map(|r| vec![r[t]]).collect();
        let ctx = AttentionContext::new(
            &ones(&swapped.iter().map(|r| r[..=t].to_vec()).collect::<Vec<_>>()),
            t,
            DType::F32,
            dev,
        )
        .unwrap();
        let mut h = lm.embed(&ids_tensor(&step), &ctx).unwrap();
        for (i, kv) in cache.layers.iter_mut().enumerate() {
            h = lm.layer(i, &h, &ctx, Some(kv)).unwrap();
        }
        let logits = lm.head(&h).unwrap();
        worst = worst.max(max_abs_diff(&logits, &full.narrow(1, t, 1).unwrap()));
    }
    worst
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

fn ones(rows: &[Vec<u32>]) -> Vec<Vec<u32>> {
    rows.iter().map(|r| vec![1; r.len()]).collect()
}

#[test]
fn cached_decoding_matches_full_recompute_on_the_golden_llama() {
    let lm = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    let rows = golden_ids();
    let mask = ones(&rows);
    let full = forward(lm.as_ref(), &rows, &mask);
    assert_eq!(full.dims(), &[2, 14, 96]);
    let (cached, cache) = forward_cached(lm.as_ref(), &rows, &mask, 5);
    let d = max_abs_diff(&full, &cached);
    println!("llama cached vs full: max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "cached decoding differs from recompute by {d}");
    // GQA: the cache holds the 2 kv heads, not the 4 query heads.
    let (k, v) = cache.layers[0].kv.as_ref().expect("layer 0 cached");
    assert_eq!(k.dims(), &[2, 2, 14, 16]);
    assert_eq!(v.dims(), &[2, 2, 14, 16]);
}

#[test]
fn left_padded_row_gives_the_logits_of_the_unpadded_row() {
    let lm = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    let rows = golden_ids();
    let real: Vec<u32> = rows[0][..11].to_vec();
    // Row 0: three pads then 11 real tokens; row 1: 14 real tokens.
    let mut padded = vec![95u32; 3];
    padded.extend_from_slice(&real);
    let batch = vec![padded, rows[1].clone()];
    let mut mask = ones(&batch);
    mask[0][..3].fill(0);
    let batched = forward(lm.as_ref(), &batch, &mask);
    let alone = forward(
        lm.as_ref(),
        std::slice::from_ref(&real),
        &ones(std::slice::from_ref(&real)),
    );
    let d = max_abs_diff(
        &batched.get(0).unwrap().narrow(0, 3, 11).unwrap(),
        &alone.get(0).unwrap(),
    );
    println!("llama left-padded vs unpadded: max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "left padding changes the logits by {d}");
    // The unpadded neighbour is unaffected by sharing a batch with a padded row.
    let alone1 = forward(lm.as_ref(), &[rows[1].clone()], &ones(&[rows[1].clone()]));
    assert!(max_abs_diff(&batched.get(1).unwrap(), &alone1.get(0).unwrap()) <= TOL);
    // Cached decoding over the padded batch agrees with its full recompute on every real
    // token (pad queries see no key at all; their outputs are meaningless either way).
    let (cached, _) = forward_cached(lm.as_ref(), &batch, &mask, 6);
    let d0 = max_abs_diff(
        &batched.get(0).unwrap().narrow(0, 3, 11).unwrap(),
        &cached.get(0).unwrap().narrow(0, 3, 11).unwrap(),
    );
    let d1 = max_abs_diff(&batched.get(1).unwrap(), &cached.get(1).unwrap());
    assert!(
        d0.max(d1) <= TOL,
        "cached decoding with left padding differs by {d0}, {d1}"
    );
}

#[test]
fn transformers_4_and_5_config_forms_build_the_same_model() {
    let weights = golden_weights();
    let rows = golden_ids();
    let mask = ones(&rows);
    // A non-default base, so that a form whose theta is not read would show.
    let mut v4 = golden_config();
    v4["rope_theta"] = serde_json::json!(500.0);
    let mut v5 = v4.clone();
    let obj = v5.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_type": "default", "rope_theta": 500.0}),
    );
    obj.insert("dtype".into(), serde_json::json!("float32"));
    obj.remove("torch_dtype");
    let a = forward(
        load(&config_dir("v4", &v4), &weights, &LmLoadOptions::default()).as_ref(),
        &rows,
        &mask,
    );
    let b = forward(
        load(&config_dir("v5", &v5), &weights, &LmLoadOptions::default()).as_ref(),
        &rows,
        &mask,
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let base = forward(
        load(&lm_dir(), &weights, &LmLoadOptions::default()).as_ref(),
        &rows,
        &mask,
    );
    assert!(
        max_abs_diff(&a, &base) > 1e-3,
        "rope_theta 500 vs 10000 must change the logits"
    );
}

#[test]
fn linear_rope_scaling_is_read_from_both_config_forms() {
    let weights = golden_weights();
    let rows = golden_ids();
    let mask = ones(&rows);
    let mut v4 = golden_config();
    v4["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    let mut v5 = golden_config();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5["rope_parameters"] =
        serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0});
    let a = forward(
        load(
            &config_dir("lin4", &v4),
            &weights,
            &LmLoadOptions::default(),
        )
        .as_ref(),
        &rows,
        &mask,
    );
    let b = forward(
        load(
            &config_dir("lin5", &v5),
            &weights,
            &LmLoadOptions::default(),
        )
        .as_ref(),
        &rows,
        &mask,
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let base = forward(
        load(&lm_dir(), &weights, &LmLoadOptions::default()).as_ref(),
        &rows,
        &mask,
    );
    assert!(max_abs_diff(&a, &base) > 1e-3);
}

fn config_error(cfg: &serde_json::Value, name: &str) -> Error {
    match load_lm(
        &config_dir(name, cfg),
        &golden_weights(),
        &LmLoadOptions::default(),
    ) {
        Ok(_) => panic!("config {name} should be rejected"),
        Err(e) => e,
    }
}

#[test]
fn malformed_configs_are_config_errors() {
    let mut missing = golden_config();
    missing.as_object_mut().unwrap().remove("hidden_size");
    let e = config_error(&missing, "missing");
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert!(e.to_string().contains("hidden_size"), "{e}");

    let mut wrong_type = golden_config();
    wrong_type["num_attention_heads"] = serde_json::json!("four");
    assert!(matches!(
        config_error(&wrong_type, "type"),
        Error::Config { .. }
    ));

    let mut act = golden_config();
    act["hidden_act"] = serde_json::json!("mystery_act");
    let e = config_error(&act, "act");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("mystery_act"),
        "{e}"
    );

    let mut gqa = golden_config();
    gqa["num_key_value_heads"] = serde_json::json!(3);
    let e = config_error(&gqa, "gqa");
    assert!(matches!(e, Error::Config { .. }), "{e}");

    let mut indivisible = golden_config();
    indivisible.as_object_mut().unwrap().remove("head_dim");
    indivisible["num_attention_heads"] = serde_json::json!(3);
    indivisible["num_key_value_heads"] = serde_json::json!(3);
    let e = config_error(&indivisible, "indivisible");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("divisible"),
        "{e}"
    );

    let mut scaling = golden_config();
    scaling["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    let e = config_error(&scaling, "yarn");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("yarn"),
        "{e}"
    );
}

#[test]
fn a_weight_with_the_wrong_shape_is_a_weights_error_naming_the_key() {
    let mut tensors = golden_tensors();
    let key = "model.layers.1.self_attn.k_proj.weight";
    tensors.insert(
        key.to_string(),
        Tensor::zeros((48, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let weights = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let e = match load_lm(&lm_dir(), &weights, &LmLoadOptions::default()) {
        Ok(_) => panic!("wrong shape accepted"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Weights(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(key) && msg.contains("[48, 64]") && msg.contains("[32, 64]"),
        "{msg}"
    );

    // A config that disagrees with the weights names the first mismatching key.
    let mut cfg = golden_config();
    cfg["intermediate_size"] = serde_json::json!(128);
    let e = config_error(&cfg, "intermediate");
    assert!(matches!(e, Error::Weights(_)), "{e}");
    assert!(
        e.to_string()
            .contains("model.layers.0.mlp.gate_proj.weight"),
        "{e}"
    );
}

#[test]
fn vocab_resize_shrinks_to_the_first_rows_and_grows_with_the_mean_row() {
    let weights = golden_weights();
    let rows = golden_ids();
    let mask = ones(&rows);
    let base_lm = load(&lm_dir(), &weights, &LmLoadOptions::default());
    let base = forward(base_lm.as_ref(), &rows, &mask);

    let small = load(
        &lm_dir(),
        &weights,
        &LmLoadOptions {
            vocab_size: Some(95),
        },
    );
    assert_eq!(small.info().vocab_size, 95);
    let s = forward(small.as_ref(), &rows, &mask);
    assert_eq!(s.dims(), &[2, 14, 95]);
    assert_eq!(max_abs_diff(&s, &base.narrow(2, 0, 95).unwrap()), 0.0);

    let big = load(
        &lm_dir(),
        &weights,
        &LmLoadOptions {
            vocab_size: Some(100),
        },
    );
    assert_eq!(big.info().vocab_size, 100);
    let emb = big.input_embeddings();
    assert_eq!(emb.dims(), &[100, 64]);
    let mean = base_lm.input_embeddings().mean_keepdim(0).unwrap();
    for r in 96..100 {
        assert!(max_abs_diff(&emb.narrow(0, r, 1).unwrap(), &mean) < 1e-6);
    }
    let g = forward(big.as_ref(), &rows, &mask);
    assert_eq!(g.dims(), &[2, 14, 100]);
    assert!(max_abs_diff(&g.narrow(2, 0, 96).unwrap(), &base) < 1e-5);
}

#[test]
fn tied_embeddings_need_no_lm_head_and_project_with_the_input_embedding() {
    let mut tensors = golden_tensors();
    tensors.remove("lm_head.weight");
    let weights = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut cfg = golden_config();
    cfg["tie_word_embeddings"] = serde_json::json!(true);
    let lm = load(
        &config_dir("tied", &cfg),
        &weights,
        &LmLoadOptions::default(),
    );
    assert_eq!(lm.info().output_embedding_key, None);
    assert_eq!(lm.info().input_embedding_key, "model.embed_tokens.weight");
    let rows = golden_ids();
    let logits = forward(lm.as_ref(), &rows, &ones(&rows));
    assert_eq!(logits.dims(), &[2, 14, 96]);
    // The head is exactly the final hidden states times the input embedding (what the
    // composition relies on to give tied trainable rows their output-side gradient).
    let h = Tensor::randn(0f32, 1.0, (1, 3, 64), &Device::Cpu).unwrap();
    let via_final = lm
        .final_hidden(&h)
        .unwrap()
        .broadcast_matmul(&lm.input_embeddings().t().unwrap())
        .unwrap();
    assert!(max_abs_diff(&lm.head(&h).unwrap(), &via_final) < 1e-5);

    let untied = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    assert_eq!(
        untied.info().output_embedding_key.as_deref(),
        Some("lm_head.weight")
    );
}

/// A fixed pseudo-random vector (sin of a scaled ramp): reproducible, unlike `randn`.
fn wave(dims: &[usize], freq: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let ramp = Tensor::arange(0u32, n as u32, &Device::Cpu).and_then(|t| t.to_dtype(DType::F64));
    (ramp.expect("ramp") * freq)
        .and_then(|t| t.sin())
        .and_then(|t| t.reshape(dims))
        .expect("wave")
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().expect("scalar")
}

#[test]
fn gradients_flow_through_the_decoder_to_its_input_hidden_states() {
    // f64, so that a central finite difference is a sharp check of the analytic gradient
    // (norms, softmax and rotary take their differentiable forms when tracked).
    let dev = &Device::Cpu;
    let lm = load(
        &lm_dir(),
        &golden_weights().with_dtype(DType::F64),
        &LmLoadOptions::default(),
    );
    let rows = golden_ids();
    let ctx = AttentionContext::new(&ones(&rows), 0, DType::F64, dev).unwrap();
    let h0 = lm.embed(&ids_tensor(&rows), &ctx).unwrap();
    let readout = wave(&[2, 14, 96], 0.731);
    // The loss is evaluated on tracked inputs only: candle's fused RMSNorm has no f64 kernel.
    let loss = |h: &Tensor| -> (Tensor, candle_core::Var) {
        let var = candle_core::Var::from_tensor(h).unwrap();
        let mut h = var.as_tensor().clone();
        for i in 0..lm.info().num_layers {
            h = lm.layer(i, &h, &ctx, None).unwrap();
        }
        let l = (lm.head(&h).unwrap() * &readout)
            .unwrap()
            .sum_all()
            .unwrap();
        (l, var)
    };
    let (l, var) = loss(&h0);
    let grads = l.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("input hidden states get a gradient");
    // A unit-norm direction keeps the finite difference's third-order error small.
    let dir = wave(h0.dims(), 1.917);
    let dir = (&dir / scalar(&dir.sqr().unwrap().sum_all().unwrap()).sqrt()).unwrap();
    let analytic = scalar(&(g * &dir).unwrap().sum_all().unwrap());
    let eps = 1e-4;
    let at = |sign: f64| scalar(&loss(&(&h0 + (&dir * (sign * eps)).unwrap()).unwrap()).0);
    let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
    println!("llama directional derivative: analytic {analytic:.9e}, numeric {numeric:.9e}");
    assert!(analytic.abs() > 1e-3);
    assert!((analytic - numeric).abs() <= 1e-6 * analytic.abs().max(1.0));
}

#[test]
fn half_precision_weights_run_and_stay_close_to_f32() {
    let rows = golden_ids();
    let f32_logits = forward(
        load(&lm_dir(), &golden_weights(), &LmLoadOptions::default()).as_ref(),
        &rows,
        &ones(&rows),
    );
    for dtype in [DType::BF16, DType::F16] {
        let lm = load(
            &lm_dir(),
            &golden_weights().with_dtype(dtype),
            &LmLoadOptions::default(),
        );
        let ctx = AttentionContext::new(&ones(&rows), 0, dtype, &Device::Cpu).unwrap();
        let mut h = lm.embed(&ids_tensor(&rows), &ctx).unwrap();
        for i in 0..4 {
            h = lm.layer(i, &h, &ctx, None).unwrap();
        }
        let logits = lm.head(&h).unwrap().to_dtype(DType::F32).unwrap();
        let d = max_abs_diff(&logits, &f32_logits);
        println!("llama {dtype:?} vs f32: max |Δlogit| = {d:.3e}");
        assert!(d < 0.1, "{dtype:?} drifts by {d}");
    }
}

#[test]
fn a_reordered_cache_decodes_the_reordered_rows() {
    let lm = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    let d = check_cache_reorder(lm.as_ref(), &golden_ids(), 6);
    println!("llama reordered cache vs recompute: max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "decoding after a cache reorder differs by {d}");
}
