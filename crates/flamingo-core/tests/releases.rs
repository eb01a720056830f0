//! The five OpenFlamingo releases (openflamingo-spec §9), end to end on tiny random stand-ins
//! that examples/make_release_fixtures.rs writes into a temp dir with each release's LM
//! family, config spelling, key names, file formats (`pytorch_model.bin`, single or sharded;
//! `checkpoint.pt`) and repo layout: load through `Flamingo::load` with the release's
//! cross-attention plan and the vocabulary shrunk to `len(tokenizer)`, run a forward pass
//! and a short greedy generation.
//!
//! Also: reference-logit parity of the LM architectures behind the 4B releases, from
//! tests/fixtures/{gpt_neox_rpj,gpt_neox_pythia} (written by scripts/dev/make_lm_fixtures.py,
//! seed 4242, torch 2.12 CPU, transformers 5.17, float32). MosaicGPT (the 3B releases' LM)
//! has no such fixture: its modeling code is remote code that could not be run offline.

#[allow(dead_code)]
#[path = "../examples/make_release_fixtures.rs"]
mod release_fixtures;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use flamingo_core::generate::{GenerationConfig, GenerationSession};
use flamingo_core::io::hf::open_weights_file;
use flamingo_core::io::{SafetensorsFiles, Weights};
use flamingo_core::lm::{self, AttentionContext, CausalLm, LmFamily, LmLoadOptions};
use flamingo_core::text::tokenizer::FlamingoTokenizer;
use flamingo_core::Error;
use release_fixtures::{Release, ReleaseFiles, RELEASES};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flamingo-releases-{}-{}",
        name.replace('/', "--"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn release(repo: &str) -> &'static Release {
    RELEASES
        .iter()
        .find(|r| r.repo.ends_with(repo))
        .unwrap_or_else(|| panic!("no release {repo}"))
}

/// `(B, T_img, 1, 3, 28, 28)`: a deterministic pattern per image.
fn images(batch: usize, num: usize, phase: f64) -> Tensor {
    let s = release_fixtures::IMAGE_SIZE;
    let n = batch * num * 3 * s * s;
    let x = Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    ((x * 0.37).unwrap() + phase)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((batch, num, 1, 3, s, s))
        .unwrap()
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

fn spec(r: &Release, files: &ReleaseFiles, tok: &FlamingoTokenizer) -> LoadSpec {
    LoadSpec {
        vision_dir: files.vision_dir.clone(),
        lm_dir: files.lm_dir.clone(),
        checkpoint: Some(files.checkpoint.clone()),
        media_token_id: tok.media_token_id(),
        end_of_chunk_token_id: tok.end_of_chunk_token_id(),
        cross_attn_layers: r.cross_attn_layers(),
        decoder_layers_path: Some(r.decoder_layers_path().to_string()),
        perceiver: PerceiverConfig::default(),
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: Some(tok.len()),
        strict: true,
        init_seed: 0,
    }
}

/// Greedy argmax with what generation suppresses here: the stop token before
/// `min_new_tokens` and `<image>`.
fn argmax_except(logits: &[f32], banned: &[u32]) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (i, &v) in logits.iter().enumerate() {
        if !banned.contains(&(i as u32)) && v > best.0 {
            best = (v, i as u32);
        }
    }
    best.1
}

/// Everything a release must do: tokenizer procedure, load, forward, generation.
fn check_release(r: &Release, family: LmFamily, embedding_keys: &[&str]) {
    let root = tempdir(r.repo);
    let files = release_fixtures::write_release(r, &root).unwrap();

    // The reference's special-token procedure on the LM repo's tokenizer (spec §2.2 step 3).
    let tok = FlamingoTokenizer::from_dir(&files.lm_dir).unwrap();
    assert_eq!(tok.len(), release_fixtures::RESIZED_VOCAB);
    assert_eq!(
        tok.end_of_chunk_token_id() as usize,
        release_fixtures::END_OF_CHUNK_ID
    );
    assert_eq!(tok.media_token_id() as usize, release_fixtures::MEDIA_ID);
    assert_eq!(tok.pad_token_id() as usize, release_fixtures::MEDIA_ID + 1);

    let model = Flamingo::load(&spec(r, &files, &tok), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", r.repo));
    let summary = model.summary();
    assert_eq!(summary.family, family);
    assert_eq!(summary.lm_layers, r.lm_layers);
    assert_eq!(summary.cross_attn_layers, r.cross_attn_layers());
    assert_eq!(summary.vocab_size, release_fixtures::RESIZED_VOCAB);
    assert_eq!(summary.hidden_size, release_fixtures::LM_WIDTH);
    assert_eq!(summary.vision_hidden_size, release_fixtures::VISION_WIDTH);

    // The checkpoint's embedding matrices (already `len(tokenizer)` rows) replace the LM's.
    let report = model.report();
    let mut overrides = report.lm_overrides.clone();
    overrides.sort();
    let mut expected: Vec<String> = embedding_keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(overrides, expected, "{}: LM overrides", r.repo);
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let buffers = report
        .ignored
        .iter()
        .filter(|k| k.contains(".decoder_layer.attention."))
        .count();
    let expected_buffers = if r.mask_buffers_in_checkpoint {
        3 * r.lm_layers
    } else {
        0
    };
    assert_eq!(buffers, expected_buffers, "{}: ignored buffers", r.repo);
    let ckpt = open_weights_file(&files.checkpoint).unwrap();
    let ckpt_embedding = ckpt
        .load(&format!("lang_encoder.{}", embedding_keys[0]))
        .unwrap();
    assert_eq!(
        max_abs_diff(model.lm().input_embeddings(), &ckpt_embedding),
        0.0,
        "{}: the input embedding is not the checkpoint's",
        r.repo
    );

    // Forward over an interleaved prompt; the images must matter.
    let ids = tok
        .encode(
            "<image>An image of the cat.<|endofchunk|><image>An image of",
            true,
        )
        .unwrap();
    assert_eq!(ids[0], tok.media_token_id());
    let t = ids.len();
    let lang_x = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu).unwrap();
    let vision_x = images(1, 2, 0.0);
    let forward = |vision_x: &Tensor| {
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
    let logits = forward(&vision_x);
    assert_eq!(logits.dims(), &[1, t, release_fixtures::RESIZED_VOCAB]);
    let finite = logits
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite());
    assert!(finite, "{}: non-finite logits", r.repo);
    let other_images = forward(&images(1, 2, 1.3));
    let moved = max_abs_diff(&logits, &other_images);
    assert!(
        moved > 1e-3,
        "{}: the logits do not depend on the images ({moved})",
        r.repo
    );

    // Greedy generation with the KV cache equals greedy on full recomputes.
    let steps = 6;
    let model = Arc::new(model);
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
    let generated = &result.new_tokens[0];
    assert_eq!(generated.len(), steps);
    let banned = [tok.end_of_chunk_token_id(), tok.media_token_id()];
    let mut seq = ids.clone();
    for &next in generated {
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
        assert_eq!(
            next,
            argmax_except(&last, &banned),
            "{}: cached greedy token differs from a full recompute after {seq:?}",
            r.repo
        );
        seq.push(next);
    }
    let text = tok.decode(generated, true).unwrap();
    println!("{}: generated {generated:?} = {text:?}", r.repo);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn openflamingo_3b_vitl_mpt1b_loads_runs_and_generates() {
    check_release(
        release("OpenFlamingo-3B-vitl-mpt1b"),
        LmFamily::Mpt,
        &["transformer.wte.weight"],
    );
}

#[test]
fn openflamingo_3b_vitl_mpt1b_langinstruct_loads_runs_and_generates() {
    check_release(
        release("OpenFlamingo-3B-vitl-mpt1b-langinstruct"),
        LmFamily::Mpt,
        &["transformer.wte.weight"],
    );
}

#[test]
fn openflamingo_4b_vitl_rpj3b_loads_runs_and_generates() {
    check_release(
        release("OpenFlamingo-4B-vitl-rpj3b"),
        LmFamily::GptNeox,
        &["gpt_neox.embed_in.weight", "embed_out.weight"],
    );
}

#[test]
fn openflamingo_4b_vitl_rpj3b_langinstruct_loads_runs_and_generates() {
    check_release(
        release("OpenFlamingo-4B-vitl-rpj3b-langinstruct"),
        LmFamily::GptNeox,
        &["gpt_neox.embed_in.weight", "embed_out.weight"],
    );
}

#[test]
fn openflamingo_9b_vitl_mpt7b_loads_runs_and_generates() {
    check_release(
        release("OpenFlamingo-9B-vitl-mpt7b"),
        LmFamily::Mpt,
        &["transformer.wte.weight"],
    );
}

#[test]
fn a_release_checkpoint_without_the_vocabulary_resize_is_refused_naming_the_embedding() {
    // The checkpoint's embedding has len(tokenizer) rows; the LM file has the padded
    // vocabulary. Without `vocab_size` the shapes cannot agree (spec §10 #15).
    let r = release("OpenFlamingo-4B-vitl-rpj3b-langinstruct");
    let root = tempdir("no-resize");
    let files = release_fixtures::write_release(r, &root).unwrap();
    let tok = FlamingoTokenizer::from_dir(&files.lm_dir).unwrap();
    let mut spec = spec(r, &files, &tok);
    spec.vocab_size = None;
    let err = match Flamingo::load(&spec, &Device::Cpu) {
        Ok(_) => panic!("loaded a checkpoint whose embedding does not fit the LM"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Checkpoint(_)), "{err}");
    assert!(err.to_string().contains("embed"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------
// Reference logits of the LM architectures (scripts/dev/make_lm_fixtures.py)

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_fixture_lm(dir: &Path) -> Box<dyn CausalLm> {
    let files = SafetensorsFiles::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(Arc::new(files), DType::F32, &Device::Cpu);
    lm::load_lm(dir, &w, &LmLoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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

/// Max abs error of the LM's logits against the fixture's, unpadded and left-padded (real
/// tokens only).
fn lm_parity(name: &str) -> (f32, f32) {
    let dir = fixture(name);
    let lm = load_fixture_lm(&dir);
    let e: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let run = |ids: &[Vec<u32>], mask: &[Vec<u32>]| {
        let ctx = AttentionContext::new(mask, 0, DType::F32, &Device::Cpu).unwrap();
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (ids.len(), ids[0].len()), &Device::Cpu).unwrap();
        let mut h = lm.embed(&ids, &ctx).unwrap();
        for i in 0..lm.info().num_layers {
            h = lm.layer(i, &h, &ctx, None).unwrap();
        }
        lm.head(&h).unwrap()
    };
    let plain = run(&rows(&e["input_ids"]), &rows(&e["attention_mask"]));
    let plain_err = max_abs_diff(&plain, &e["logits"]);
    let mask = rows(&e["padded_attention_mask"]);
    let padded = run(&rows(&e["padded_input_ids"]), &mask);
    let real = Tensor::from_vec(
        mask.iter().flatten().map(|&m| m as f32).collect::<Vec<_>>(),
        (mask.len(), mask[0].len(), 1),
        &Device::Cpu,
    )
    .unwrap();
    let padded_err = ((padded - &e["padded_logits"]).unwrap().abs().unwrap())
        .broadcast_mul(&real)
        .unwrap()
        .max_keepdim(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (plain_err, padded_err)
}

#[test]
fn redpajama_incite_style_gpt_neox_matches_transformers_logits() {
    // Full rotary (rotary_pct 1.0), sequential residual, `embed_out`, transformers-4 config.
    let (plain, padded) = lm_parity("gpt_neox_rpj");
    println!("gpt_neox_rpj: logits max abs err {plain:.3e}, left-padded {padded:.3e}");
    assert!(plain <= 1e-5 && padded <= 1e-5, "{plain} / {padded}");
}

#[test]
fn pythia_style_gpt_neox_matches_transformers_logits() {
    // rotary_pct 0.25 of a 32-wide head, parallel residual, transformers-4 config.
    let (plain, padded) = lm_parity("gpt_neox_pythia");
    println!("gpt_neox_pythia: logits max abs err {plain:.3e}, left-padded {padded:.3e}");
    assert!(plain <= 1e-5 && padded <= 1e-5, "{plain} / {padded}");
}
