//! OPT decoder behaviour on the golden tiny OPT (`shared/golden/opt/lm`: HF `OPTForCausalLM`
//! written by `shared/golden/tools/make_golden.py` with transformers 5.17, seed 2000, then
//! `to_hub_style.py`), and on small random OPTs built here for the variants the golden one
//! does not cover (post-LN, `word_embed_proj_dim != hidden_size`, untied head).

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
        "/../../../shared/golden/opt"
    ))
}

fn golden_weights() -> Weights {
    let files = SafetensorsFiles::open(&[golden().join("lm/model.safetensors")]).unwrap();
    Weights::new(Arc::new(files), DType::F32, &Device::Cpu)
}

fn golden_config() -> serde_json::Value {
    let text = std::fs::read_to_string(golden().join("lm/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_golden(opts: &LmLoadOptions) -> Box<dyn CausalLm> {
    load_lm(&golden().join("lm"), &golden_weights(), opts).unwrap()
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
fn left_padding_error(
    lm: &dyn CausalLm,
    ids: &[Vec<u32>],
    pad_id: u32,
    pad: usize,
    prefix: usize,
) -> f32 {
    let t = ids[0].len() - pad;
    let alone = run(lm, &[ids[0][..t].to_vec()], &ones(1, t), None).unwrap();
    let padded_row: Vec<u32> = std::iter::repeat_n(pad_id, pad)
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
fn cached_decoding_matches_full_recompute_on_golden_opt() {
    let lm = load_golden(&LmLoadOptions::default());
    let err = cached_decoding_error(lm.as_ref(), &golden_ids(), 5);
    println!("golden opt: cached vs full max abs diff {err:.3e}");
    assert!(err <= TOL, "cached decoding differs by {err}");
}

#[test]
fn left_padded_row_gives_the_logits_of_the_unpadded_row() {
    let lm = load_golden(&LmLoadOptions::default());
    let err = left_padding_error(lm.as_ref(), &golden_ids(), PAD, 3, 6);
    println!("golden opt: left-padded vs unpadded max abs diff {err:.3e}");
    assert!(err <= TOL, "left padding changes the logits by {err}");
}

#[test]
fn info_describes_the_golden_opt() {
    let lm = load_golden(&LmLoadOptions::default());
    let info = lm.info();
    assert_eq!(info.model_type, "opt");
    assert_eq!(info.hidden_size, 64);
    assert_eq!(info.num_layers, 3);
    assert_eq!(info.vocab_size, 96);
    assert_eq!(info.max_positions, Some(256));
    assert_eq!(
        info.input_embedding_key,
        "model.decoder.embed_tokens.weight"
    );
    assert_eq!(info.output_embedding_key, None);
    assert_eq!(lm.input_embeddings().dims(), &[96, 64]);
}

#[test]
fn tied_head_projects_onto_the_input_embedding() {
    // With a tied head, the logits of a hidden state are its dot products with the token
    // embedding rows after the final norm: perturbing one embedding row must move exactly
    // that logit column (and the inputs that use that token, which we avoid here).
    let w = golden_weights();
    let cfg = golden_config();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(golden().join("lm/model.safetensors"), &Device::Cpu)
            .unwrap();
    let base =
        load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    let key = "model.decoder.embed_tokens.weight";
    let e = tensors[key].clone();
    let bumped = Tensor::cat(
        &[
            &e.narrow(0, 0, 90).unwrap(),
            &(e.narrow(0, 90, 6).unwrap() + 0.5).unwrap(),
        ],
        0,
    )
    .unwrap();
    tensors.insert(key.to_string(), bumped);
    let changed = load_lm_from_config(
        Path::new("config.json"),
        &cfg,
        &Weights::from_tensors(tensors, DType::F32, &Device::Cpu),
        &Default::default(),
    )
    .unwrap();
    let ids = vec![vec![5u32, 6, 7, 8, 9, 10]];
    let a = run(base.as_ref(), &ids, &ones(1, 6), None).unwrap();
    let b = run(changed.as_ref(), &ids, &ones(1, 6), None).unwrap();
    assert_eq!(
        max_abs_diff(
            &a.narrow(D::Minus1, 0, 90).unwrap(),
            &b.narrow(D::Minus1, 0, 90).unwrap()
        ),
        0.0
    );
    assert!(
        max_abs_diff(
            &a.narrow(D::Minus1, 90, 6).unwrap(),
            &b.narrow(D::Minus1, 90, 6).unwrap()
        ) > 1e-3
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-lm-opt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn transformers_4_and_5_config_forms_load_the_same_model() {
    // transformers 4 writes `torch_dtype`, transformers 5 `dtype`; OPT has no rope fields.
    let golden_cfg = golden_config();
    let mut v4 = golden_cfg.clone();
    let mut v5 = golden_cfg.clone();
    let obj5 = v5.as_object_mut().unwrap();
    let dtype = obj5.remove("torch_dtype").unwrap();
    obj5.insert("dtype".into(), dtype);
    obj5.insert("transformers_version".into(), "5.17.0".into());
    v4.as_object_mut()
        .unwrap()
        .insert("transformers_version".into(), "4.33.0".into());

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
    cfg.as_object_mut().unwrap().remove("hidden_size");
    expect_config_error(&cfg, "hidden_size");

    let mut cfg = golden_config();
    cfg["activation_function"] = "swiglu_but_not_really".into();
    expect_config_error(&cfg, "swiglu_but_not_really");

    let mut cfg = golden_config();
    cfg["num_attention_heads"] = 5.into();
    expect_config_error(&cfg, "divisible");

    let mut cfg = golden_config();
    cfg["ffn_dim"] = "wide".into();
    expect_config_error(&cfg, "expected usize");
}

#[test]
fn a_weight_with_the_wrong_shape_is_a_weights_error_naming_the_key() {
    let mut tensors =
        candle_core::safetensors::load(golden().join("lm/model.safetensors"), &Device::Cpu)
            .unwrap();
    let key = "model.decoder.layers.1.fc1.weight";
    tensors.insert(
        key.into(),
        Tensor::zeros((127, 64), DType::F32, &Device::Cpu).unwrap(),
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
                msg.contains("[127, 64]") && msg.contains("[128, 64]"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a weights error, got {e}"),
        Ok(_) => panic!("expected a weights error, got a model"),
    }
}

#[test]
fn positions_beyond_max_position_embeddings_are_rejected() {
    let mut cfg = golden_config();
    cfg["max_position_embeddings"] = 8.into();
    // The stored table has 258 rows; give the model one sized for 8 positions.
    let mut tensors =
        candle_core::safetensors::load(golden().join("lm/model.safetensors"), &Device::Cpu)
            .unwrap();
    let key = "model.decoder.embed_positions.weight";
    let small = tensors[key].narrow(0, 0, 10).unwrap();
    tensors.insert(key.into(), small);
    let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let lm = load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    assert_eq!(lm.info().max_positions, Some(8));
    assert!(run(lm.as_ref(), &[vec![3; 8]], &ones(1, 8), None).is_ok());
    // Left padding does not consume positions: 4 pads + 8 real tokens still fit.
    let mut mask = vec![0u32; 4];
    mask.extend([1; 8]);
    assert!(run(lm.as_ref(), &[vec![3; 12]], &[mask], None).is_ok());
    match run(lm.as_ref(), &[vec![3; 9]], &ones(1, 9), None) {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("max_position_embeddings"), "{msg}"),
        other => panic!(
            "expected an invalid-input error, got {:?}",
            other.map(|t| t.shape().clone())
        ),
    }
}

#[test]
fn vocab_resize_shrinks_to_the_first_rows_and_grows_with_mean_rows() {
    let ids = golden_ids();
    let base = load_golden(&LmLoadOptions::default());
    let full = run(base.as_ref(), &ids, &ones(2, 14), None).unwrap();

    // Drop the `<PAD>` row (95); the inputs use ids up to 94.
    let small = load_golden(&LmLoadOptions {
        vocab_size: Some(95),
    });
    assert_eq!(small.info().vocab_size, 95);
    assert_eq!(small.input_embeddings().dims(), &[95, 64]);
    let logits = run(small.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert_eq!(logits.dims(), &[2, 14, 95]);
    assert_eq!(
        max_abs_diff(&logits, &full.narrow(D::Minus1, 0, 95).unwrap()),
        0.0
    );

    let big = load_golden(&LmLoadOptions {
        vocab_size: Some(100),
    });
    assert_eq!(big.info().vocab_size, 100);
    let e = big.input_embeddings();
    let mean = e.narrow(0, 0, 96).unwrap().mean_keepdim(0).unwrap();
    for r in 96..100 {
        assert!(max_abs_diff(&e.narrow(0, r, 1).unwrap(), &mean) < 1e-7);
    }
    let logits = run(big.as_ref(), &ids, &ones(2, 14), None).unwrap();
    assert_eq!(logits.dims(), &[2, 14, 100]);
    assert!(max_abs_diff(&logits.narrow(D::Minus1, 0, 96).unwrap(), &full) < 1e-6);
}

/// A small random OPT with the given layout quirks, as a config value and weights.
fn random_opt(
    pre_norm: bool,
    proj_dim: usize,
    tied: bool,
    remove_final_norm: bool,
) -> (serde_json::Value, HashMap<String, Tensor>) {
    let (d, ffn, layers, vocab, max_pos) = (32usize, 48usize, 2usize, 40usize, 64usize);
    let dev = Device::Cpu;
    let mut seed = 0u64;
    let mut rand = |shape: &[usize], scale: f64| {
        seed += 1;
        // Deterministic pseudo-random values without a RNG dependency.
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i as u64 + 1) * 2654435761 + seed * 40503) % 10007;
                ((x as f64 / 10007.0 - 0.5) * 2.0 * scale) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut t = HashMap::new();
    let dec = "model.decoder";
    t.insert(
        format!("{dec}.embed_tokens.weight"),
        rand(&[vocab, proj_dim], 0.5),
    );
    t.insert(
        format!("{dec}.embed_positions.weight"),
        rand(&[max_pos + 2, d], 0.5),
    );
    if proj_dim != d {
        t.insert(
            format!("{dec}.project_in.weight"),
            rand(&[d, proj_dim], 0.3),
        );
        t.insert(
            format!("{dec}.project_out.weight"),
            rand(&[proj_dim, d], 0.3),
        );
    }
    for i in 0..layers {
        let p = format!("{dec}.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.insert(format!("{p}.self_attn.{n}.weight"), rand(&[d, d], 0.3));
            t.insert(format!("{p}.self_attn.{n}.bias"), rand(&[d], 0.1));
        }
        t.insert(format!("{p}.fc1.weight"), rand(&[ffn, d], 0.3));
        t.insert(format!("{p}.fc1.bias"), rand(&[ffn], 0.1));
        t.insert(format!("{p}.fc2.weight"), rand(&[d, ffn], 0.3));
        t.insert(format!("{p}.fc2.bias"), rand(&[d], 0.1));
        for n in ["self_attn_layer_norm", "final_layer_norm"] {
            t.insert(format!("{p}.{n}.weight"), (rand(&[d], 0.2) + 1.0).unwrap());
            t.insert(format!("{p}.{n}.bias"), rand(&[d], 0.1));
        }
    }
    if pre_norm && !remove_final_norm {
        t.insert(
            format!("{dec}.final_layer_norm.weight"),
            (rand(&[d], 0.2) + 1.0).unwrap(),
        );
        t.insert(format!("{dec}.final_layer_norm.bias"), rand(&[d], 0.1));
    }
    if !tied {
        t.insert("lm_head.weight".into(), rand(&[vocab, proj_dim], 0.5));
    }
    let cfg = serde_json::json!({
        "model_type": "opt",
        "vocab_size": vocab,
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "ffn_dim": ffn,
        "max_position_embeddings": max_pos,
        "do_layer_norm_before": pre_norm,
        "_remove_final_layer_norm": remove_final_norm,
        "word_embed_proj_dim": proj_dim,
        "activation_function": "relu",
        "tie_word_embeddings": tied,
    });
    (cfg, t)
}

fn random_ids(b: usize, t: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..b)
        .map(|r| {
            (0..t)
                .map(|i| (i as u32 * 7 + r as u32 * 13 + 3) % (vocab - 1))
                .collect()
        })
        .collect()
}

#[test]
fn post_layernorm_opt_with_projections_and_untied_head_decodes_consistently() {
    // OPT-350M's layout: post-LN blocks, 512-wide embeddings projected to 1024, no final norm.
    let (cfg, t) = random_opt(false, 24, false, false);
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let lm = load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    assert_eq!(
        lm.info().output_embedding_key.as_deref(),
        Some("lm_head.weight")
    );
    assert_eq!(lm.input_embeddings().dims(), &[40, 24]);
    let ids = random_ids(2, 12, 40);
    let err = cached_decoding_error(lm.as_ref(), &ids, 4);
    assert!(err <= TOL, "cached decoding differs by {err}");
    let err = left_padding_error(lm.as_ref(), &ids, 0, 2, 4);
    assert!(err <= TOL, "left padding changes the logits by {err}");
}

#[test]
fn untied_head_is_resized_with_the_embedding() {
    let (cfg, t) = random_opt(true, 32, false, true);
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let lm = load_lm_from_config(
        Path::new("config.json"),
        &cfg,
        &w,
        &LmLoadOptions {
            vocab_size: Some(44),
        },
    )
    .unwrap();
    let logits = run(lm.as_ref(), &random_ids(1, 5, 40), &ones(1, 5), None).unwrap();
    assert_eq!(logits.dims(), &[1, 5, 44]);
    // The four appended head rows are equal, so their logits are too.
    let tail = logits.narrow(D::Minus1, 40, 4).unwrap();
    let first = tail.narrow(D::Minus1, 0, 1).unwrap();
    assert!(max_abs_diff(&tail, &first.broadcast_as(tail.shape()).unwrap()) < 1e-6);
}

#[test]
fn pre_layernorm_opt_without_final_norm_decodes_consistently() {
    let (cfg, t) = random_opt(true, 32, true, true);
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let lm = load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    let err = cached_decoding_error(lm.as_ref(), &random_ids(2, 10, 40), 3);
    assert!(err <= TOL, "cached decoding differs by {err}");
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
    println!("golden opt: backprop vs finite differences, worst relative error {err:.3e}");
    assert!(
        err < 1e-4,
        "gradient differs from finite differences by {err}"
    );

    // Post-LN with projections: every norm sits on the residual path there.
    let (cfg, t) = random_opt(false, 24, false, false);
    let w = Weights::from_tensors(t, DType::F64, &Device::Cpu);
    let lm = load_lm_from_config(Path::new("config.json"), &cfg, &w, &Default::default()).unwrap();
    let err = decoder_gradient_error(lm.as_ref(), &random_ids(2, 9, 40), 0);
    println!("random post-LN opt: backprop vs finite differences {err:.3e}");
    assert!(
        err < 1e-4,
        "post-LN gradient differs from finite differences by {err}"
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
