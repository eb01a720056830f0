//! MPT decoder behaviour on the golden tiny MPT (`shared/golden/mpt/lm`: HF `MptForCausalLM`
//! with ALiBi, no biases, tied head, written by `shared/golden/tools/make_golden.py` with
//! transformers 5.17, seed 2000), and on tiny MosaicGPT models (model_type "mosaic_gpt",
//! OpenFlamingo-3B's MPT-1B layout) built here from the golden weights under MosaicGPT's key
//! names, with and without QK-LayerNorm and biases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use flamingo_core::io::{SafetensorsFiles, Weights};
use flamingo_core::lm::{
    load_lm, load_lm_from_config, AttentionContext, CausalLm, KvCache, LmLoadOptions,
};
use flamingo_core::Error;

const TOL: f32 = 1e-4;
const PAD: u32 = 95;

fn golden() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden/mpt"
    ))
}

fn golden_weights() -> Weights {
    let files = SafetensorsFiles::open(&[golden().join("lm/model.safetensors")]).unwrap();
    Weights::new(Arc::new(files), DType::F32, &Device::Cpu)
}

fn golden_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden().join("lm/model.safetensors"), &Device::Cpu).unwrap()
}

fn golden_config() -> serde_json::Value {
    let text = std::fs::read_to_string(golden().join("lm/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_golden(opts: &LmLoadOptions) -> Box<dyn CausalLm> {
    load_lm(&golden().join("lm"), &golden_weights(), opts).unwrap()
}

fn load(cfg: &serde_json::Value, tensors: HashMap<String, Tensor>) -> Box<dyn CausalLm> {
    let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    load_lm_from_config(Path::new("config.json"), cfg, &w, &Default::default()).unwrap()
}

/// The golden `lang_x` rows (2 × 14 token ids).
fn golden_ids() -> Vec<Vec<u32>> {
    let g =
        candle_core::safetensors::load(golden().join("golden.safetensors"), &Device::Cpu).unwrap();
    g["lang_x"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
}

/// embed → every layer → head for `ids` (the `T` new tokens), `mask` covering past + new.
fn run(
    lm: &dyn CausalLm,
    ids: &[Vec<u32>],
    mask: &[Vec<u32>],
    mut cache: Option<&mut KvCache>,
) -> flamingo_core::Result<Tensor> {
    let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
    let ctx = AttentionContext::new(mask, past, DType::F32, &Device::Cpu)?;
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (ids.len(), ids[0].len()), &Device::Cpu)?;
    let mut h = lm.embed(&ids, &ctx)?;
    for i in 0..lm.info().num_layers {
        let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
        h = lm.layer(i, &h, &ctx, layer_cache)?;
    }
    lm.head(&h)
}

fn ones(b: usize, t: usize) -> Vec<Vec<u32>> {
    vec![vec![1; t]; b]
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

/// Full recompute vs. prefill of `prefix` tokens then one token at a time through a KV cache.
fn cached_decoding_error(lm: &dyn CausalLm, ids: &[Vec<u32>], prefix: usize) -> f32 {
    let (b, t) = (ids.len(), ids[0].len());
    let full = run(lm, ids, &ones(b, t), None).unwrap();
    let mut cache = KvCache::new(lm.info().num_layers);
    let head: Vec<Vec<u32>> = ids.iter().map(|r| r[..prefix].to_vec()).collect();
    let pre = run(lm, &head, &ones(b, prefix), Some(&mut cache)).unwrap();
    let mut worst = max_abs_diff(&pre, &full.narrow(1, 0, prefix).unwrap());
    for p in prefix..t {
        let step: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[p]]).collect();
        let logits = run(lm, &step, &ones(b, p + 1), Some(&mut cache)).unwrap();
        worst = worst.max(max_abs_diff(&logits, &full.narrow(1, p, 1).unwrap()));
    }
    assert_eq!(cache.seq_len(), t);
    worst
}

/// Row 0 of `ids` left-padded by `pad` tokens next to an unpadded row 1, prefilled with
/// `prefix` real tokens and then decoded token by token through the cache, against row 0
/// run alone without padding or cache. Returns the worst difference over its real tokens.
fn left_padding_error(lm: &dyn CausalLm, ids: &[Vec<u32>], pad: usize, prefix: usize) -> f32 {
    let t = ids[0].len() - pad;
    let alone = run(lm, &[ids[0][..t].to_vec()], &ones(1, t), None).unwrap();
    let padded_row: Vec<u32> = std::iter::repeat_n(PAD, pad)
        .chain(ids[0][..t].iter().copied())
        .collect();
    let mask_row: Vec<u32> = std::iter::repeat_n(0, pad)
        .chain(std::iter::repeat_n(1, t))
        .collect();
    let rows = [padded_row, ids[1].clone()];
    let masks = [mask_row, vec![1; pad + t]];

    let mut cache = KvCache::new(lm.info().num_layers);
    let n = pad + prefix;
    let head: Vec<Vec<u32>> = rows.iter().map(|r| r[..n].to_vec()).collect();
    let head_mask: Vec<Vec<u32>> = masks.iter().map(|r| r[..n].to_vec()).collect();
    let pre = run(lm, &head, &head_mask, Some(&mut cache)).unwrap();
    let mut worst = max_abs_diff(
        &pre.narrow(0, 0, 1).unwrap().narrow(1, pad, prefix).unwrap(),
        &alone.narrow(1, 0, prefix).unwrap(),
    );
    for p in n..pad + t {
        let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[p]]).collect();
        let step_mask: Vec<Vec<u32>> = masks.iter().map(|r| r[..=p].to_vec()).collect();
        let logits = run(lm, &step, &step_mask, Some(&mut cache)).unwrap();
        worst = worst.max(max_abs_diff(
            &logits.narrow(0, 0, 1).unwrap(),
            &alone.narrow(1, p - pad, 1).unwrap(),
        ));
    }
    worst
}

#[test]
fn cached_decoding_matches_full_recompute_on_golden_mpt() {
    // ALiBi over absolute key indices: each cached step must see the same biases as the
    // full pass.
    let lm = load_golden(&LmLoadOptions::default());
    let err = cached_decoding_error(lm.as_ref(), &golden_ids(), 5);
    println!("golden mpt: cached vs full max abs diff {err:.3e}");
    assert!(err <= TOL, "cached decoding differs by {err}");
}

#[test]
fn left_padded_row_gives_the_logits_of_the_unpadded_row() {
    let lm = load_golden(&LmLoadOptions::default());
    let err = left_padding_error(lm.as_ref(), &golden_ids(), 4, 6);
    println!("golden mpt: left-padded (cached) vs unpadded max abs diff {err:.3e}");
    assert!(err <= TOL, "left padding changes the logits by {err}");
}

#[test]
fn info_describes_the_golden_mpt() {
    let lm = load_golden(&LmLoadOptions::default());
    let info = lm.info();
    assert_eq!(info.model_type, "mpt");
    assert_eq!(info.hidden_size, 64);
    assert_eq!(info.num_layers, 4);
    assert_eq!(info.vocab_size, 96);
    // ALiBi: no position table to run past (`learned_pos_emb` is ignored, as transformers does).
    assert_eq!(info.max_positions, None);
    assert_eq!(info.input_embedding_key, "transformer.wte.weight");
    assert_eq!(info.output_embedding_key, None);
}

#[test]
fn golden_mpt_ffn_is_four_times_d_model_whatever_expansion_ratio_says() {
    // The golden config says expansion_ratio 2 and its weights are 256 = 4·64 wide, because
    // transformers' MptMLP hard-codes 4. A config that matches its weights loads the same.
    let mut cfg = golden_config();
    cfg["expansion_ratio"] = 4.into();
    let a = load(&cfg, golden_tensors());
    let b = load_golden(&LmLoadOptions::default());
    let ids = golden_ids();
    let diff = max_abs_diff(
        &run(a.as_ref(), &ids, &ones(2, 14), None).unwrap(),
        &run(b.as_ref(), &ids, &ones(2, 14), None).unwrap(),
    );
    assert_eq!(diff, 0.0);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-lm-mpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn transformers_4_and_5_config_forms_load_the_same_model() {
    // The golden config is transformers-5 style (`dtype`). transformers 4 wrote `torch_dtype`,
    // and MptConfig's attribute_map lets a config name the sizes generically.
    let v5 = golden_config();
    let mut v4 = v5.clone();
    let o = v4.as_object_mut().unwrap();
    let dtype = o.remove("dtype").unwrap();
    o.insert("torch_dtype".into(), dtype);
    for (mpt, generic) in [
        ("d_model", "hidden_size"),
        ("n_heads", "num_attention_heads"),
        ("n_layers", "num_hidden_layers"),
    ] {
        let v = o.remove(mpt).unwrap();
        o.insert(generic.into(), v);
    }
    o.insert("transformers_version".into(), "4.33.0".into());

    let ids = golden_ids();
    let mut outs = Vec::new();
    for (name, cfg) in [("v4", v4), ("v5", v5)] {
        let dir = temp_dir(name);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .unwrap();
        let lm = load_lm(&dir, &golden_weights(), &Default::default()).unwrap();
        assert_eq!(lm.info().hidden_size, 64);
        outs.push(run(lm.as_ref(), &ids, &ones(2, 14), None).unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0);
}

fn expect_config_error(cfg: &serde_json::Value, what: &str) {
    match load_lm_from_config(
        Path::new("bad/config.json"),
        cfg,
        &golden_weights(),
        &Default::default(),
    ) {
        Err(e @ Error::Config { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(what),
                "message {msg:?} should mention {what:?}"
            );
        }
        Err(e) => panic!("expected a config error mentioning {what}, got {e}"),
        Ok(_) => panic!("expected a config error mentioning {what}, got a model"),
    }
}

#[test]
fn missing_or_unsupported_config_fields_are_config_errors() {
    let mut cfg = golden_config();
    cfg.as_object_mut().unwrap().remove("d_model");
    expect_config_error(&cfg, "d_model");

    let mut cfg = golden_config();
    cfg["n_heads"] = 5.into();
    expect_config_error(&cfg, "divisible");

    let mut cfg = golden_config();
    cfg["attn_config"]["attn_type"] = "grouped_query_attention".into();
    expect_config_error(&cfg, "grouped_query_attention");

    let mut cfg = golden_config();
    cfg["attn_config"]["rope"] = true.into();
    expect_config_error(&cfg, "rope");

    let mut cfg = golden_config();
    cfg["logit_scale"] = "sqrt_d_model".into();
    expect_config_error(&cfg, "logit_scale");

    let mut cfg = golden_config();
    cfg["model_type"] = "mosaic_gpt".into();
    cfg.as_object_mut().unwrap().remove("vocab_size");
    expect_config_error(&cfg, "vocab_size");
}

#[test]
fn a_weight_with_the_wrong_shape_is_a_weights_error_naming_the_key() {
    let mut tensors = golden_tensors();
    let key = "transformer.blocks.2.attn.Wqkv.weight";
    tensors.insert(
        key.into(),
        Tensor::zeros((190, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    match load_lm_from_config(
        Path::new("config.json"),
        &golden_config(),
        &w,
        &Default::default(),
    ) {
        Err(Error::Weights(msg)) => {
            assert!(msg.contains(key), "{msg}");
            assert!(
                msg.contains("[190, 64]") && msg.contains("[192, 64]"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a weights error, got {e}"),
        Ok(_) => panic!("expected a weights error, got a model"),
    }
}

#[test]
fn out_of_range_token_ids_are_invalid_input() {
    let lm = load_golden(&LmLoadOptions {
        vocab_size: Some(94),
    });
    match run(lm.as_ref(), &[vec![3, 94]], &ones(1, 2), None) {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("94"), "{msg}"),
        other => panic!(
            "expected invalid input, got {:?}",
            other.map(|t| t.shape().clone())
        ),
    }
}

#[test]
fn vocab_resize_shrinks_the_tied_head_and_grows_it_with_mean_rows() {
    let ids = golden_ids();
    let full = run(
        load_golden(&Default::default()).as_ref(),
        &ids,
        &ones(2, 14),
        None,
    )
    .unwrap();
    let small = load_golden(&LmLoadOptions {
        vocab_size: Some(95),
    });
    let logits = run(small.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert_eq!(logits.dims(), &[2, 14, 95]);
    assert_eq!(
        max_abs_diff(&logits, &full.narrow(D::Minus1, 0, 95).unwrap()),
        0.0
    );

    let big = load_golden(&LmLoadOptions {
        vocab_size: Some(99),
    });
    assert_eq!(big.info().vocab_size, 99);
    let logits = run(big.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert_eq!(logits.dims(), &[2, 14, 99]);
    assert!(max_abs_diff(&logits.narrow(D::Minus1, 0, 96).unwrap(), &full) < 1e-6);
    let mean = big
        .input_embeddings()
        .narrow(0, 0, 96)
        .unwrap()
        .mean_keepdim(0)
        .unwrap();
    assert!(max_abs_diff(&big.input_embeddings().narrow(0, 98, 1).unwrap(), &mean) < 1e-7);
}

// ---- MosaicGPT (model_type "mosaic_gpt") ----

/// Renames the golden MPT's keys to MosaicGPT's (`norm_1` → `ln_1`, `ffn.up_proj` →
/// `mlp.mlp_up`, `norm_f` → `ln_f`, …).
fn mosaic_tensors_from_golden() -> HashMap<String, Tensor> {
    golden_tensors()
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".norm_1.", ".ln_1.")
                .replace(".norm_2.", ".ln_2.")
                .replace(".ffn.up_proj.", ".mlp.mlp_up.")
                .replace(".ffn.down_proj.", ".mlp.mlp_down.")
                .replace("transformer.norm_f.", "transformer.ln_f.");
            (k, v)
        })
        .collect()
}

/// MPT-1B's config shape (`mosaicml/mpt-1b-redpajama-200b`), sized like the golden model.
fn mosaic_config(qk_ln: bool, no_bias: bool, alibi: bool) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["MosaicGPT"],
        "model_type": "mosaic_gpt",
        "d_model": 64,
        "n_heads": 4,
        "n_layers": 4,
        "mlp_ratio": 4,
        "max_seq_len": 32,
        "vocab_size": 96,
        "alibi": alibi,
        "alibi_bias_max": 8,
        "attn_qk_ln": qk_ln,
        "attn_clip_qkv": null,
        "softmax_scale": null,
        "attn_impl": "torch",
        "low_precision_layernorm": true,
        "no_bias": no_bias,
        "logit_scale": null,
        "embedding_fraction": 1.0,
        "use_cache": false
    })
}

/// Deterministic small values of a given shape (no RNG dependency).
fn wiggle(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as u64 + 1) * 2654435761 + seed * 40503) % 10007;
            ((x as f64 / 10007.0 - 0.5) * 2.0 * scale) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Adds QK-LayerNorm weights (`attn.q_ln`, `attn.k_ln`, with biases when `bias`).
fn add_qk_ln(t: &mut HashMap<String, Tensor>, bias: bool, seed: u64) {
    for i in 0..4 {
        for (j, n) in ["q_ln", "k_ln"].iter().enumerate() {
            let p = format!("transformer.blocks.{i}.attn.{n}");
            let s = seed + 10 * i + j as u64;
            t.insert(
                format!("{p}.weight"),
                (wiggle(&[64], s, 0.3) + 1.0).unwrap(),
            );
            if bias {
                t.insert(format!("{p}.bias"), wiggle(&[64], s + 100, 0.1));
            }
        }
    }
}

/// Adds the biases `no_bias: false` implies: every Linear and every LayerNorm.
fn add_biases(t: &mut HashMap<String, Tensor>) {
    let mut seed = 500;
    let mut add = |t: &mut HashMap<String, Tensor>, key: String, n: usize| {
        seed += 1;
        t.insert(key, wiggle(&[n], seed, 0.05));
    };
    for i in 0..4 {
        let p = format!("transformer.blocks.{i}");
        add(t, format!("{p}.ln_1.bias"), 64);
        add(t, format!("{p}.ln_2.bias"), 64);
        add(t, format!("{p}.attn.Wqkv.bias"), 192);
        add(t, format!("{p}.attn.out_proj.bias"), 64);
        add(t, format!("{p}.mlp.mlp_up.bias"), 256);
        add(t, format!("{p}.mlp.mlp_down.bias"), 64);
    }
    add(t, "transformer.ln_f.bias".into(), 64);
}

#[test]
fn mosaic_gpt_spelling_of_the_golden_weights_computes_what_hf_mpt_computes() {
    // Same weights under MosaicGPT's names and config fields: with power-of-two heads both
    // spellings' ALiBi slopes agree, so the logits must be identical.
    let hf = load_golden(&Default::default());
    let mosaic = load(
        &mosaic_config(false, true, true),
        mosaic_tensors_from_golden(),
    );
    assert_eq!(mosaic.info().model_type, "mosaic_gpt");
    assert_eq!(mosaic.info().input_embedding_key, "transformer.wte.weight");
    assert_eq!(mosaic.info().max_positions, None);
    let ids = golden_ids();
    let diff = max_abs_diff(
        &run(hf.as_ref(), &ids, &ones(2, 14), None).unwrap(),
        &run(mosaic.as_ref(), &ids, &ones(2, 14), None).unwrap(),
    );
    assert_eq!(diff, 0.0);
}

#[test]
fn mosaic_gpt_with_qk_layernorm_decodes_consistently_and_pads_cleanly() {
    for no_bias in [true, false] {
        let mut t = mosaic_tensors_from_golden();
        add_qk_ln(&mut t, !no_bias, 1);
        if !no_bias {
            add_biases(&mut t);
        }
        let lm = load(&mosaic_config(true, no_bias, true), t);
        let err = cached_decoding_error(lm.as_ref(), &golden_ids(), 4);
        println!("mosaic_gpt qk_ln no_bias={no_bias}: cached vs full max abs diff {err:.3e}");
        assert!(err <= TOL, "cached decoding differs by {err}");
        let err = left_padding_error(lm.as_ref(), &golden_ids(), 3, 5);
        println!("mosaic_gpt qk_ln no_bias={no_bias}: left-padded vs unpadded {err:.3e}");
        assert!(err <= TOL, "left padding changes the logits by {err}");
    }
}

#[test]
fn mosaic_gpt_applies_q_ln_and_k_ln() {
    let ids = golden_ids();
    let logits = |t: HashMap<String, Tensor>| {
        let lm = load(&mosaic_config(true, true, true), t);
        run(lm.as_ref(), &ids, &ones(2, 14), None).unwrap()
    };
    let mut base = mosaic_tensors_from_golden();
    add_qk_ln(&mut base, false, 1);
    let reference = logits(base.clone());

    // Without QK-LN the same weights give other logits.
    let plain = load(
        &mosaic_config(false, true, true),
        mosaic_tensors_from_golden(),
    );
    let plain = run(plain.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert!(max_abs_diff(&reference, &plain) > 1e-3);

    for which in ["q_ln", "k_ln"] {
        let mut t = base.clone();
        let key = format!("transformer.blocks.1.attn.{which}.weight");
        let scaled = (t[&key].clone() * 1.5).unwrap();
        t.insert(key, scaled);
        let diff = max_abs_diff(&logits(t), &reference);
        assert!(
            diff > 1e-4,
            "changing {which} left the logits unchanged ({diff})"
        );
    }
}

#[test]
fn mosaic_gpt_with_biases_names_a_missing_layernorm_bias() {
    // `no_bias: false` means every Linear and LayerNorm has a bias: a missing one is named.
    let mut t = mosaic_tensors_from_golden();
    add_biases(&mut t);
    t.remove("transformer.blocks.3.ln_2.bias");
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let cfg = mosaic_config(false, false, true);
    match load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()) {
        Err(Error::Weights(msg)) => {
            assert!(msg.contains("transformer.blocks.3.ln_2.bias"), "{msg}")
        }
        Err(e) => panic!("expected a weights error, got {e}"),
        Ok(_) => panic!("expected a weights error, got a model"),
    }
}

#[test]
fn mosaic_gpt_without_alibi_uses_learned_positions() {
    let mut t = mosaic_tensors_from_golden();
    t.insert("transformer.wpe.weight".into(), wiggle(&[32, 64], 7, 0.5));
    let lm = load(&mosaic_config(false, true, false), t.clone());
    assert_eq!(lm.info().max_positions, Some(32));
    let err = cached_decoding_error(lm.as_ref(), &golden_ids(), 5);
    assert!(err <= TOL, "cached decoding differs by {err}");
    let err = left_padding_error(lm.as_ref(), &golden_ids(), 3, 5);
    assert!(err <= TOL, "left padding changes the logits by {err}");
    // The position table matters: another one changes the logits.
    t.insert("transformer.wpe.weight".into(), wiggle(&[32, 64], 8, 0.5));
    let other = load(&mosaic_config(false, true, false), t);
    let ids = golden_ids();
    assert!(
        max_abs_diff(
            &run(lm.as_ref(), &ids, &ones(2, 14), None).unwrap(),
            &run(other.as_ref(), &ids, &ones(2, 14), None).unwrap()
        ) > 1e-3
    );
}

#[test]
fn mosaic_gpt_logit_scale_and_clip_qkv_are_applied() {
    let ids = golden_ids();
    let base = load(
        &mosaic_config(false, true, true),
        mosaic_tensors_from_golden(),
    );
    let base = run(base.as_ref(), &ids, &ones(2, 14), None).unwrap();

    let mut cfg = mosaic_config(false, true, true);
    cfg["logit_scale"] = "inv_sqrt_d_model".into();
    let scaled = load(&cfg, mosaic_tensors_from_golden());
    let scaled = run(scaled.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert!(max_abs_diff(&scaled, &(&base * 0.125).unwrap()) < 1e-6);

    let mut cfg = mosaic_config(false, true, true);
    cfg["attn_clip_qkv"] = 0.01.into();
    let clipped = load(&cfg, mosaic_tensors_from_golden());
    let clipped = run(clipped.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert!(max_abs_diff(&clipped, &base) > 1e-3);
}

/// `Σ logits · r` for fixed weights `r`, from hidden states `h` entering layer 0.
fn weighted_logit_sum(lm: &dyn CausalLm, h: &Tensor, ctx: &AttentionContext, r: &Tensor) -> Tensor {
    let mut h = h.clone();
    for i in 0..lm.info().num_layers {
        h = lm.layer(i, &h, ctx, None).unwrap();
    }
    (lm.head(&h).unwrap() * r).unwrap().sum_all().unwrap()
}

/// Backprop through every decoder layer and the head (as the gradient must flow from the
/// loss back to cross-attention blocks and trainable embeddings) against central finite
/// differences, in f64, on a left-padded batch.
fn decoder_gradient_error(lm: &dyn CausalLm, ids: &[Vec<u32>], pad_id: u32) -> f64 {
    let dev = Device::Cpu;
    let t = ids[0].len();
    let mut rows = ids.to_vec();
    rows[0][0] = pad_id;
    rows[0][1] = pad_id;
    let mut mask = ones(2, t);
    mask[0][0] = 0;
    mask[0][1] = 0;
    let ctx = AttentionContext::new(&mask, 0, DType::F64, &dev).unwrap();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let ids_t = Tensor::from_vec(flat, (2, t), &dev).unwrap();
    let h0 = lm.embed(&ids_t, &ctx).unwrap();
    let d = h0.dim(2).unwrap();
    let vocab = lm.info().vocab_size;
    // Zero weight on the pad positions: a fully masked query row attends with scores
    // `-1e30 + s`, where rounding erases `s`, so finite differences see a constant there
    // while backprop (rightly) differentiates `s`.
    let r: Vec<f64> = (0..2 * t * vocab)
        .map(|i| {
            let (row, pos) = (i / (t * vocab), i / vocab % t);
            if row == 0 && pos < 2 {
                0.0
            } else {
                ((i * 7919 % 1009) as f64 / 1009.0) - 0.5
            }
        })
        .collect();
    let r = Tensor::from_vec(r, (2, t, vocab), &dev).unwrap();

    let var = candle_core::Var::from_tensor(&h0).unwrap();
    let grads = weighted_logit_sum(lm, var.as_tensor(), &ctx, &r)
        .backward()
        .unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("no gradient reached the input hidden states");
    let g = g.to_vec3::<f64>().unwrap();
    let base = h0.to_vec3::<f64>().unwrap();
    let eps = 1e-5;
    let mut worst: f64 = 0.0;
    // Real tokens of both rows, early and late positions, a few channels each.
    for &(b, p) in &[(0usize, 2usize), (0, t - 1), (1, 0), (1, t / 2), (1, t - 1)] {
        for &c in &[0usize, d / 3, d - 1] {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[b][p][c] += delta;
                let flat: Vec<f64> = x.into_iter().flatten().flatten().collect();
                // Tracked, so the norms take the same (unfused) path as the backward pass;
                // candle's fused layer_norm has no f64 kernel.
                let x = candle_core::Var::from_vec(flat, (2, t, d), &dev).unwrap();
                weighted_logit_sum(lm, x.as_tensor(), &ctx, &r)
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let err = (fd - g[b][p][c]).abs() / fd.abs().max(1.0);
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn gradients_flow_through_every_layer_and_match_finite_differences() {
    let files = SafetensorsFiles::open(&[golden().join("lm/model.safetensors")]).unwrap();
    let w = Weights::new(Arc::new(files), DType::F64, &Device::Cpu);
    let lm = load_lm(&golden().join("lm"), &w, &Default::default()).unwrap();
    let err = decoder_gradient_error(lm.as_ref(), &golden_ids(), PAD);
    println!("golden mpt: backprop vs finite differences, worst relative error {err:.3e}");
    // Not tighter: candle's gelu_erf backward rounds 1/sqrt(2*pi) to 0.398942 (~1e-6
    // relative); a real defect (a cut or misrouted gradient) shows up as O(1e-1).
    assert!(
        err < 1e-4,
        "gradient differs from finite differences by {err}"
    );

    // MPT-1B's QK-LayerNorm and clip_qkv sit on the attention path.
    let mut t = mosaic_tensors_from_golden();
    add_qk_ln(&mut t, false, 3);
    let mut cfg = mosaic_config(true, true, true);
    cfg["attn_clip_qkv"] = 0.5.into();
    let w = Weights::from_tensors(t, DType::F64, &Device::Cpu);
    let lm = load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    let err = decoder_gradient_error(lm.as_ref(), &golden_ids(), PAD);
    println!("mosaic_gpt qk_ln: backprop vs finite differences {err:.3e}");
    assert!(
        err < 1e-4,
        "QK-LN gradient differs from finite differences by {err}"
    );
}

#[test]
fn half_precision_weights_stay_close_to_f32_and_finite_under_left_padding() {
    // The mask arrives in f32 (as the composition builds it) and must be converted without
    // turning fully masked pad rows into NaNs (f16 has no room for -1e30).
    let mut ids = golden_ids();
    ids[0][..3].fill(PAD);
    let mut mask = ones(2, 14);
    mask[0][..3].fill(0);
    let reference = run(load_golden(&Default::default()).as_ref(), &ids, &mask, None).unwrap();
    for (dtype, tol) in [(DType::F16, 2e-2f32), (DType::BF16, 1e-1)] {
        let files = SafetensorsFiles::open(&[golden().join("lm/model.safetensors")]).unwrap();
        let w = Weights::new(Arc::new(files), dtype, &Device::Cpu);
        let lm = load_lm(&golden().join("lm"), &w, &Default::default()).unwrap();
        let logits = run(lm.as_ref(), &ids, &mask, None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let finite = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            finite.iter().all(|x| x.is_finite()),
            "{dtype:?}: non-finite logits"
        );
        let real = |t: &Tensor| {
            Tensor::cat(
                &[
                    &t.narrow(0, 0, 1).unwrap().narrow(1, 3, 11).unwrap(),
                    &t.narrow(0, 1, 1).unwrap().narrow(1, 3, 11).unwrap(),
                ],
                0,
            )
            .unwrap()
        };
        let err = max_abs_diff(&real(&logits), &real(&reference));
        println!("{dtype:?} vs f32 logits: max abs diff {err:.3e}");
        assert!(err < tol, "{dtype:?} logits differ from f32 by {err}");
    }
}
