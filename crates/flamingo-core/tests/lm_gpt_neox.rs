//! Behaviour of the GPT-NeoX decoder on the golden tiny GPT-NeoX (`shared/golden/gpt_neox/lm`:
//! HF `GPTNeoXForCausalLM`, 4 layers, 4 heads of 16, 25% rotary, parallel residual, untied
//! `embed_out`, vocab 96, random weights; made by `shared/golden/tools/make_golden.py` with
//! transformers 5.17, config in the transformers-5 form). Parity of the whole Flamingo forward
//! with the reference's logits is tested in `golden_forward.rs`; here: cache, padding (for the
//! parallel and the sequential residual), config forms, errors, head naming, vocab resize.

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
        "/../../../shared/golden/gpt_neox"
    ))
    .to_path_buf()
}

fn lm_dir() -> PathBuf {
    golden_dir().join("lm")
}

fn golden_weights() -> Weights {
    let src = SafetensorsFiles::open(&[lm_dir().join("model.safetensors")])
        .expect("golden gpt_neox weights open");
    Weights::new(Arc::new(src), DType::F32, &Device::Cpu)
}

fn golden_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(lm_dir().join("model.safetensors"), &Device::Cpu)
        .expect("golden gpt_neox weights load")
}

fn golden_config() -> serde_json::Value {
    let text = std::fs::read_to_string(lm_dir().join("config.json")).expect("golden config");
    serde_json::from_str(&text).expect("golden config is JSON")
}

fn load(dir: &Path, weights: &Weights, opts: &LmLoadOptions) -> Box<dyn CausalLm> {
    load_lm(dir, weights, opts).expect("gpt_neox loads")
}

/// A scratch folder holding only `config.json`.
fn config_dir(name: &str, cfg: &serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lm_gpt_neox_{}_{name}", std::process::id()));
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

/// The golden config rewritten for RedPajama-INCITE-3B's layout: full rotary, sequential
/// residual (same weights, a different network).
fn sequential_config() -> serde_json::Value {
    let mut cfg = golden_config();
    cfg["use_parallel_residual"] = serde_json::json!(false);
    cfg["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(1.0);
    cfg
}

fn check_cache_and_padding(lm: &dyn CausalLm, label: &str) {
    let rows = golden_ids();
    let mask = ones(&rows);
    let full = forward(lm, &rows, &mask);
    assert_eq!(full.dims(), &[2, 14, 96]);
    let (cached, cache) = forward_cached(lm, &rows, &mask, 5);
    let d = max_abs_diff(&full, &cached);
    println!("gpt_neox {label} cached vs full: max |Δlogit| = {d:.3e}");
    assert!(
        d <= TOL,
        "{label}: cached decoding differs from recompute by {d}"
    );
    let (k, _) = cache.layers[3].kv.as_ref().expect("layer 3 cached");
    assert_eq!(k.dims(), &[2, 4, 14, 16]);

    // Row 0: three pads then 11 real tokens; row 1: 14 real tokens.
    let real: Vec<u32> = rows[0][..11].to_vec();
    let mut padded = vec![95u32; 3];
    padded.extend_from_slice(&real);
    let batch = vec![padded, rows[1].clone()];
    let mut pmask = ones(&batch);
    pmask[0][..3].fill(0);
    let batched = forward(lm, &batch, &pmask);
    let alone = forward(
        lm,
        std::slice::from_ref(&real),
        &ones(std::slice::from_ref(&real)),
    );
    let d = max_abs_diff(
        &batched.get(0).unwrap().narrow(0, 3, 11).unwrap(),
        &alone.get(0).unwrap(),
    );
    println!("gpt_neox {label} left-padded vs unpadded: max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{label}: left padding changes the logits by {d}");
    assert!(max_abs_diff(&batched.get(1).unwrap(), &full.get(1).unwrap()) <= TOL);
    // Cached decoding of the padded batch, on every real token.
    let (cached, _) = forward_cached(lm, &batch, &pmask, 6);
    let d0 = max_abs_diff(
        &batched.get(0).unwrap().narrow(0, 3, 11).unwrap(),
        &cached.get(0).unwrap().narrow(0, 3, 11).unwrap(),
    );
    let d1 = max_abs_diff(&batched.get(1).unwrap(), &cached.get(1).unwrap());
    assert!(
        d0.max(d1) <= TOL,
        "{label}: cached decoding with left padding differs by {d0}, {d1}"
    );
}

#[test]
fn cached_decoding_and_left_padding_match_recompute_with_parallel_residual() {
    let lm = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    check_cache_and_padding(lm.as_ref(), "parallel/25% rotary");
}

#[test]
fn cached_decoding_and_left_padding_match_recompute_with_sequential_residual() {
    let weights = golden_weights();
    let seq = load(
        &config_dir("sequential", &sequential_config()),
        &weights,
        &LmLoadOptions::default(),
    );
    check_cache_and_padding(seq.as_ref(), "sequential/full rotary");

    // It is a different network from the golden (parallel) one on the same weights.
    let rows = golden_ids();
    let par = load(&lm_dir(), &weights, &LmLoadOptions::default());
    let d = max_abs_diff(
        &forward(seq.as_ref(), &rows, &ones(&rows)),
        &forward(par.as_ref(), &rows, &ones(&rows)),
    );
    assert!(
        d > 1e-3,
        "use_parallel_residual=false must change the logits"
    );
    // Only the residual layout changed: not the rotary width.
    let mut only_seq = golden_config();
    only_seq["use_parallel_residual"] = serde_json::json!(false);
    let only = load(
        &config_dir("only_seq", &only_seq),
        &weights,
        &LmLoadOptions::default(),
    );
    assert!(
        max_abs_diff(
            &forward(only.as_ref(), &rows, &ones(&rows)),
            &forward(par.as_ref(), &rows, &ones(&rows)),
        ) > 1e-3
    );
}

#[test]
fn transformers_4_and_5_config_forms_build_the_same_model() {
    let weights = golden_weights();
    let rows = golden_ids();
    let mask = ones(&rows);
    let v5 = golden_config();
    let mut t4 = v5.clone();
    let obj = t4.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    obj.remove("dtype");
    obj.insert("torch_dtype".into(), serde_json::json!("float32"));
    // transformers ≤ 4.44 spelling…
    let mut old = t4.clone();
    old["rotary_pct"] = serde_json::json!(0.25);
    old["rotary_emb_base"] = serde_json::json!(10000);
    // …and the later transformers-4 spelling.
    let mut later = t4.clone();
    later["partial_rotary_factor"] = serde_json::json!(0.25);
    later["rope_theta"] = serde_json::json!(10000.0);

    let reference = forward(
        load(&lm_dir(), &weights, &LmLoadOptions::default()).as_ref(),
        &rows,
        &mask,
    );
    for (name, cfg) in [("old", &old), ("later", &later)] {
        let other = forward(
            load(&config_dir(name, cfg), &weights, &LmLoadOptions::default()).as_ref(),
            &rows,
            &mask,
        );
        assert_eq!(max_abs_diff(&reference, &other), 0.0, "{name} form differs");
    }
    // The rotary fraction is really read: 50% instead of 25% is another model.
    let mut half = old.clone();
    half["rotary_pct"] = serde_json::json!(0.5);
    let other = forward(
        load(
            &config_dir("half", &half),
            &weights,
            &LmLoadOptions::default(),
        )
        .as_ref(),
        &rows,
        &mask,
    );
    assert!(max_abs_diff(&reference, &other) > 1e-3);
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
    missing
        .as_object_mut()
        .unwrap()
        .remove("num_attention_heads");
    let e = config_error(&missing, "missing");
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert!(e.to_string().contains("num_attention_heads"), "{e}");

    let mut wrong_type = golden_config();
    wrong_type["use_parallel_residual"] = serde_json::json!("yes");
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

    let mut heads = golden_config();
    heads["num_attention_heads"] = serde_json::json!(5);
    let e = config_error(&heads, "heads");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("divisible"),
        "{e}"
    );

    // 16 · 0.1 = 1.6 → a rotary width of 1, which cannot be split into halves.
    let mut odd = golden_config();
    odd["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(0.1);
    let e = config_error(&odd, "odd_rotary");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("rotary"),
        "{e}"
    );
}

#[test]
fn a_weight_with_the_wrong_shape_is_a_weights_error_naming_the_key() {
    let mut tensors = golden_tensors();
    let key = "gpt_neox.layers.2.attention.query_key_value.weight";
    tensors.insert(
        key.to_string(),
        Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let weights = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let e = match load_lm(&lm_dir(), &weights, &LmLoadOptions::default()) {
        Ok(_) => panic!("wrong shape accepted"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Weights(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(key) && msg.contains("[64, 64]") && msg.contains("[192, 64]"),
        "{msg}"
    );

    let mut cfg = golden_config();
    cfg["vocab_size"] = serde_json::json!(100);
    let e = config_error(&cfg, "vocab");
    assert!(matches!(e, Error::Weights(_)), "{e}");
    assert!(e.to_string().contains("gpt_neox.embed_in.weight"), "{e}");
}

#[test]
fn buffers_in_the_weights_are_ignored_and_the_head_may_be_named_lm_head() {
    let base = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    assert_eq!(base.info().input_embedding_key, "gpt_neox.embed_in.weight");
    assert_eq!(
        base.info().output_embedding_key.as_deref(),
        Some("embed_out.weight")
    );

    let mut tensors = golden_tensors();
    let head = tensors
        .remove("embed_out.weight")
        .expect("golden has embed_out");
    tensors.insert("lm_head.weight".into(), head);
    // Old exports carry the causal-mask buffers and the rotary frequencies.
    let dev = &Device::Cpu;
    for i in 0..4 {
        let p = format!("gpt_neox.layers.{i}.attention");
        tensors.insert(
            format!("{p}.bias"),
            Tensor::ones((1, 1, 256, 256), DType::U8, dev).unwrap(),
        );
        tensors.insert(
            format!("{p}.masked_bias"),
            Tensor::new(-1e9f32, dev).unwrap(),
        );
        tensors.insert(
            format!("{p}.rotary_emb.inv_freq"),
            Tensor::ones(2, DType::F32, dev).unwrap(),
        );
    }
    let weights = Weights::from_tensors(tensors, DType::F32, dev);
    let lm = load(&lm_dir(), &weights, &LmLoadOptions::default());
    assert_eq!(
        lm.info().output_embedding_key.as_deref(),
        Some("lm_head.weight")
    );
    let rows = golden_ids();
    let d = max_abs_diff(
        &forward(lm.as_ref(), &rows, &ones(&rows)),
        &forward(base.as_ref(), &rows, &ones(&rows)),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn vocab_resize_applies_to_embed_in_and_the_untied_embed_out() {
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
    // Ids beyond the shrunk vocabulary are rejected as bad input.
    let ctx = AttentionContext::unpadded(1, 1, DType::F32, &Device::Cpu).unwrap();
    let e = small.embed(&ids_tensor(&[vec![95]]), &ctx).unwrap_err();
    assert!(
        matches!(e, Error::InvalidInput(_)) && e.to_string().contains("95"),
        "{e}"
    );

    let big = load(
        &lm_dir(),
        &weights,
        &LmLoadOptions {
            vocab_size: Some(99),
        },
    );
    assert_eq!(big.info().vocab_size, 99);
    assert_eq!(big.input_embeddings().dims(), &[99, 64]);
    let g = forward(big.as_ref(), &rows, &mask);
    assert_eq!(g.dims(), &[2, 14, 99]);
    assert!(max_abs_diff(&g.narrow(2, 0, 96).unwrap(), &base) < 1e-5);
    // The new head rows are the mean head row, so their three logits coincide.
    let new = g.narrow(2, 96, 3).unwrap();
    let spread = max_abs_diff(&new.narrow(2, 0, 1).unwrap(), &new.narrow(2, 2, 1).unwrap());
    assert!(spread < 1e-6);
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
fn gradients_flow_through_the_partial_rotary_decoder_to_its_input_hidden_states() {
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
    // The loss is evaluated on tracked inputs only: candle's fused LayerNorm has no f64 kernel.
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
    println!("gpt_neox directional derivative: analytic {analytic:.9e}, numeric {numeric:.9e}");
    assert!(analytic.abs() > 1e-3);
    // ~1.5e-7 relative remains: candle's GELU-erf backward rounds 1/√(2π) to 0.398942.
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
        println!("gpt_neox {dtype:?} vs f32: max |Δlogit| = {d:.3e}");
        assert!(d < 0.1, "{dtype:?} drifts by {d}");
    }
}

#[test]
fn a_reordered_cache_decodes_the_reordered_rows() {
    let lm = load(&lm_dir(), &golden_weights(), &LmLoadOptions::default());
    let d = check_cache_reorder(lm.as_ref(), &golden_ids(), 6);
    println!("gpt_neox reordered cache vs recompute: max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "decoding after a cache reorder differs by {d}");
}
