//! Splitting OpenFlamingo checkpoints into Perceiver, cross-attention blocks and LM overrides.
//!
//! Golden fixtures: /work/shared/golden/<family>/checkpoint.pt and meta.json, written by
//! `shared/golden/tools/make_golden.py` (open_flamingo 2.0.1 sources, PyTorch 2.11,
//! transformers 5.17) with `GOLDEN_EVERY_N={"llama":1,"opt":2,"gpt_neox":1,"mpt":2}`.
//! Variants (alias spellings, DDP prefixes, damaged files) are derived from them here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use flamingo_core::io::checkpoint::{perceiver_keys, FlamingoCheckpoint, CROSS_ATTN_BLOCK_KEYS};
use flamingo_core::io::{MemoryTensors, TensorSource};
use flamingo_core::Error;

fn golden(family: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden"
    ))
    .join(family)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flamingo-ckpt-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Per family: decoder layers path, cross-attention layers, LM keys the checkpoint overrides
/// (golden README: "Which LM keys appear depends on the library version").
struct Family {
    name: &'static str,
    layers_path: &'static str,
    xattn_layers: &'static [usize],
    lm_overrides: &'static [&'static str],
}

const FAMILIES: [Family; 4] = [
    Family {
        name: "llama",
        layers_path: "model.layers",
        xattn_layers: &[0, 1, 2, 3],
        lm_overrides: &["model.embed_tokens.weight"],
    },
    Family {
        name: "opt",
        layers_path: "model.decoder.layers",
        xattn_layers: &[1],
        lm_overrides: &[
            "lm_head.weight",
            "model.decoder.embed_positions.weight",
            "model.decoder.embed_tokens.weight",
        ],
    },
    Family {
        name: "gpt_neox",
        layers_path: "gpt_neox.layers",
        xattn_layers: &[0, 1, 2, 3],
        lm_overrides: &["gpt_neox.embed_in.weight"],
    },
    Family {
        name: "mpt",
        layers_path: "transformer.blocks",
        xattn_layers: &[1, 3],
        lm_overrides: &["lm_head.weight", "transformer.wte.weight"],
    },
];

fn sorted_keys(src: &dyn TensorSource) -> Vec<String> {
    let mut k = src.keys();
    k.sort();
    k
}

fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}: values differ"
    );
}

/// Every tensor of the split, back under its checkpoint name (canonical spelling).
fn rejoin(ck: &FlamingoCheckpoint) -> HashMap<String, Tensor> {
    let mut all = HashMap::new();
    for (k, t) in ck.perceiver.tensors() {
        all.insert(format!("perceiver.{k}"), t.clone());
    }
    for (&i, block) in &ck.cross_attn {
        for (k, t) in block.tensors() {
            all.insert(ck.cross_attn_key(i, k), t.clone());
        }
    }
    for (k, t) in ck.lm_overrides.tensors() {
        all.insert(format!("lang_encoder.{k}"), t.clone());
    }
    all
}

fn golden_tensors(family: &str) -> HashMap<String, Tensor> {
    candle_core::pickle::read_all(golden(family).join("checkpoint.pt"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn golden_checkpoints_split_into_perceiver_cross_attention_blocks_and_lm_overrides() {
    for fam in &FAMILIES {
        let meta = read_json(&golden(fam.name).join("meta.json"));
        assert_eq!(meta["decoder_layers_attr_name"], fam.layers_path);
        // The reference's plan (spec §2.5): a block before layer i when (i + 1) % n == 0.
        let config = read_json(&golden(fam.name).join("lm/config.json"));
        let n_layers = config
            .get("num_hidden_layers")
            .or_else(|| config.get("n_layers"))
            .and_then(|v| v.as_u64())
            .unwrap() as usize;
        let every_n = meta["cross_attn_every_n_layers"].as_u64().unwrap() as usize;
        let plan: Vec<usize> = (0..n_layers).filter(|i| (i + 1) % every_n == 0).collect();
        assert_eq!(plan, fam.xattn_layers, "{}: layer plan", fam.name);

        let ck = FlamingoCheckpoint::open(&golden(fam.name).join("checkpoint.pt"), fam.layers_path)
            .unwrap();
        let depth = meta["perceiver"]["depth"].as_u64().unwrap() as usize;
        let mut expected_perceiver = perceiver_keys(depth);
        expected_perceiver.sort();
        assert_eq!(
            sorted_keys(&ck.perceiver),
            expected_perceiver,
            "{}",
            fam.name
        );
        assert_eq!(ck.perceiver.keys().len(), 69);
        assert_eq!(
            ck.cross_attn.keys().copied().collect::<Vec<_>>(),
            fam.xattn_layers,
            "{}: cross-attention layers",
            fam.name
        );
        for (i, block) in &ck.cross_attn {
            let mut expected: Vec<String> = CROSS_ATTN_BLOCK_KEYS
                .iter()
                .map(|k| k.to_string())
                .collect();
            expected.sort();
            assert_eq!(sorted_keys(block), expected, "{}: block {i}", fam.name);
        }
        assert_eq!(
            sorted_keys(&ck.lm_overrides),
            fam.lm_overrides,
            "{}",
            fam.name
        );
        assert!(ck.ignored.is_empty(), "{}: {:?}", fam.name, ck.ignored);
        assert!(
            ck.unexpected.is_empty(),
            "{}: {:?}",
            fam.name,
            ck.unexpected
        );
        ck.validate(fam.xattn_layers, depth, true).unwrap();

        // Nothing lost or altered: the split holds exactly the file's tensors, as f32.
        let original = golden_tensors(fam.name);
        let all = rejoin(&ck);
        assert_eq!(all.len(), original.len(), "{}", fam.name);
        for (k, t) in &original {
            assert_eq!(all[k].dtype(), DType::F32);
            assert_same(&all[k], t, k);
        }

        // LM overrides carry HF LM names: each is an LM weight of the same shape, or the tied
        // head alias that save_pretrained leaves out of the LM's own file.
        let lm = candle_core::safetensors::load(
            golden(fam.name).join("lm/model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        for (k, t) in ck.lm_overrides.tensors() {
            match lm.get(k) {
                Some(w) => assert_eq!(w.dims(), t.dims(), "{}: {k}", fam.name),
                None => assert_eq!(k, "lm_head.weight", "{}: {k} is not an LM weight", fam.name),
            }
        }
        println!(
            "{}: perceiver {} keys, cross-attention at {:?}, LM overrides {:?}",
            fam.name,
            ck.perceiver.keys().len(),
            ck.cross_attn.keys().collect::<Vec<_>>(),
            sorted_keys(&ck.lm_overrides)
        );
    }
}

/// The golden mpt checkpoint's tensors with the cross-attention keys respelled
/// `lang_encoder.gated_cross_attn_layers.<i>.X`.
fn alias_spelled(family: &Family) -> HashMap<String, Tensor> {
    let prefix = format!("lang_encoder.{}.", family.layers_path);
    golden_tensors(family.name)
        .into_iter()
        .map(|(k, t)| {
            let renamed = k.strip_prefix(&prefix).and_then(|rest| {
                let (i, tail) = rest.split_once('.')?;
                let x = tail.strip_prefix("gated_cross_attn_layer.")?;
                Some(format!("lang_encoder.gated_cross_attn_layers.{i}.{x}"))
            });
            (renamed.unwrap_or(k), t)
        })
        .collect()
}

#[test]
fn safetensors_checkpoint_with_the_alias_spelling_gives_the_same_split() {
    let dir = temp_dir("alias");
    for fam in [&FAMILIES[1], &FAMILIES[3]] {
        let reference =
            FlamingoCheckpoint::open(&golden(fam.name).join("checkpoint.pt"), fam.layers_path)
                .unwrap();
        let tensors = alias_spelled(fam);
        assert!(tensors
            .keys()
            .any(|k| k.starts_with("lang_encoder.gated_cross_attn_layers.")));
        let path = dir.join(format!("{}.safetensors", fam.name));
        candle_core::safetensors::save(&tensors, &path).unwrap();

        let ck = FlamingoCheckpoint::open(&path, fam.layers_path).unwrap();
        assert_eq!(
            ck.cross_attn.keys().collect::<Vec<_>>(),
            reference.cross_attn.keys().collect::<Vec<_>>()
        );
        assert!(ck.unexpected.is_empty() && ck.ignored.is_empty());
        let (a, b) = (rejoin(&ck), rejoin(&reference));
        assert_eq!(a.len(), b.len());
        for (k, t) in &b {
            assert_same(&a[k], t, k);
        }
        ck.validate(fam.xattn_layers, 6, true).unwrap();
    }
}

#[test]
fn both_spellings_are_accepted_when_they_agree_and_refused_when_they_differ() {
    let fam = &FAMILIES[3];
    let mut tensors = golden_tensors(fam.name);
    let alias = alias_spelled(fam);
    let alias_only: Vec<(String, Tensor)> = alias
        .into_iter()
        .filter(|(k, _)| k.contains("gated_cross_attn_layers."))
        .collect();
    tensors.extend(alias_only.iter().cloned());
    let both = MemoryTensors::new("both spellings", tensors.clone());
    let ck = FlamingoCheckpoint::from_source(&both, fam.layers_path).unwrap();
    assert_eq!(ck.cross_attn.keys().copied().collect::<Vec<_>>(), [1, 3]);
    // The duplicates are recognised and set aside, not reported as unexpected.
    assert_eq!(ck.ignored.len(), alias_only.len());
    assert!(ck.unexpected.is_empty());
    ck.validate(fam.xattn_layers, 6, true).unwrap();

    let key = "lang_encoder.gated_cross_attn_layers.3.attn_gate".to_string();
    let t = tensors[&key].clone();
    tensors.insert(key, (t + 1.0).unwrap());
    let differ = MemoryTensors::new("conflicting spellings", tensors);
    let err = FlamingoCheckpoint::from_source(&differ, fam.layers_path)
        .err()
        .expect("conflicting spellings must be refused");
    assert!(matches!(err, Error::Checkpoint(_)), "{err}");
    assert!(
        err.to_string()
            .contains("lang_encoder.transformer.blocks.3.gated_cross_attn_layer.attn_gate"),
        "{err}"
    );
}

#[test]
fn ddp_prefixed_half_precision_weights_split_like_the_release_and_load_as_f32() {
    let fam = &FAMILIES[0];
    let original = golden_tensors(fam.name);
    let ddp: HashMap<String, Tensor> = original
        .iter()
        .map(|(k, t)| (format!("module.{k}"), t.to_dtype(DType::F16).unwrap()))
        .collect();
    let src = MemoryTensors::new("ddp fp16", ddp);
    let ck = FlamingoCheckpoint::from_source(&src, fam.layers_path).unwrap();
    assert!(ck.unexpected.is_empty() && ck.ignored.is_empty());
    ck.validate(fam.xattn_layers, 6, true).unwrap();
    let all = rejoin(&ck);
    assert_eq!(all.len(), original.len());
    for (k, t) in &original {
        assert_eq!(all[k].dtype(), DType::F32, "{k}");
        assert_same(&all[k], &t.to_dtype(DType::F16).unwrap(), k);
    }
}

#[test]
fn wrapper_names_buffers_and_vision_weights_are_ignored_and_strangers_are_unexpected() {
    let fam = &FAMILIES[2];
    let mut tensors = golden_tensors(fam.name);
    let z = || Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let ignored = [
        "lang_encoder.old_decoder_blocks.0.attention.dense.weight",
        "lang_encoder.gpt_neox.layers.0.decoder_layer.mlp.dense_h_to_4h.weight",
        "lang_encoder.gpt_neox.layers.0.attention.bias",
        "lang_encoder.gpt_neox.layers.0.attention.masked_bias",
        "lang_encoder.gpt_neox.layers.0.attention.rotary_emb.inv_freq",
        "lang_encoder.gpt_neox.rotary_emb.inv_freq",
        "vision_encoder.visual.conv1.weight",
    ];
    for k in ignored {
        tensors.insert(k.to_string(), z());
    }
    tensors.insert("lang_encoder.embed_out.weight".into(), z());
    tensors.insert("optimizer.step".into(), z());
    let ck =
        FlamingoCheckpoint::from_source(&MemoryTensors::new("extended", tensors), fam.layers_path)
            .unwrap();
    let mut got = ck.ignored.clone();
    got.sort();
    let mut want: Vec<String> = ignored.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(ck.unexpected, ["optimizer.step"]);
    // transformers-4 releases also carry the GPT-NeoX head (spec §8.1): an LM override.
    assert!(ck.lm_overrides.contains("embed_out.weight"));

    ck.validate(fam.xattn_layers, 6, false).unwrap();
    let err = ck.validate(fam.xattn_layers, 6, true).expect_err("strict");
    assert!(matches!(err, Error::Checkpoint(_)));
    assert!(err.to_string().contains("optimizer.step"), "{err}");
}

#[test]
fn missing_keys_are_reported_with_the_first_missing_key() {
    let fam = &FAMILIES[3];
    let mut tensors = golden_tensors(fam.name);
    tensors.remove("perceiver.latents");
    let ck = FlamingoCheckpoint::from_source(
        &MemoryTensors::new("no latents", tensors.clone()),
        fam.layers_path,
    )
    .unwrap();
    let err = ck
        .validate(fam.xattn_layers, 6, false)
        .expect_err("missing");
    assert_eq!(err.code(), "ERR_CHECKPOINT");
    assert!(
        err.to_string()
            .contains("missing 1 key the model needs, first: perceiver.latents"),
        "{err}"
    );

    // A whole block gone: all 11 of its keys, named in the checkpoint's own spelling.
    tensors.retain(|k, _| !k.starts_with("lang_encoder.transformer.blocks.3."));
    let ck = FlamingoCheckpoint::from_source(
        &MemoryTensors::new("no block 3", tensors),
        fam.layers_path,
    )
    .unwrap();
    let msg = ck
        .validate(fam.xattn_layers, 6, false)
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("missing 12 keys"), "{msg}");
    assert!(msg.contains("first: perceiver.latents"), "{msg}");
    assert!(
        msg.contains("lang_encoder.transformer.blocks.3.gated_cross_attn_layer.attn_gate"),
        "{msg}"
    );

    // A deeper perceiver than the checkpoint has.
    let ck =
        FlamingoCheckpoint::open(&golden(fam.name).join("checkpoint.pt"), fam.layers_path).unwrap();
    let msg = ck
        .validate(fam.xattn_layers, 7, false)
        .expect_err("depth")
        .to_string();
    assert!(
        msg.contains("missing 11 keys")
            && msg.contains("first: perceiver.layers.6.0.norm_media.weight"),
        "{msg}"
    );
}

#[test]
fn a_wrong_decoder_layers_path_is_reported_with_a_hint() {
    let ck =
        FlamingoCheckpoint::open(&golden("mpt").join("checkpoint.pt"), "model.layers").unwrap();
    assert!(ck.cross_attn.is_empty());
    assert_eq!(ck.unexpected.len(), 22);
    let msg = ck
        .validate(&[1, 3], 6, false)
        .expect_err("missing")
        .to_string();
    assert!(
        msg.contains("lang_encoder.model.layers.1.gated_cross_attn_layer.attn_gate")
            && msg.contains("decoder layers path"),
        "{msg}"
    );
}

#[test]
fn strict_validation_refuses_blocks_outside_the_layer_plan() {
    let ck = FlamingoCheckpoint::open(&golden("mpt").join("checkpoint.pt"), "transformer.blocks")
        .unwrap();
    // A plan with only layer 3 (e.g. every_n = 4): layer 1's block is surplus.
    ck.validate(&[3], 6, false).unwrap();
    let msg = ck.validate(&[3], 6, true).expect_err("strict").to_string();
    assert!(msg.contains("layer 1") && msg.contains("[3]"), "{msg}");
    // And a shallower perceiver than the checkpoint's.
    let msg = ck
        .validate(&[1, 3], 5, true)
        .expect_err("strict")
        .to_string();
    assert!(msg.contains("perceiver.layers.5."), "{msg}");
}
