//! Parity of the CLIP vision tower and the Perceiver resampler with the reference, and
//! loading of the gated cross-attention blocks from released-style checkpoints.
//!
//! Provenance: `shared/golden/{llama,opt,gpt_neox,mpt}` were made by
//! `shared/golden/tools/make_golden.py` (open_flamingo 2.0.1 sources, PyTorch 2.11,
//! transformers 5.17, CPU, float32, GOLDEN_SEED=2000). `vision_tokens` is HF
//! `CLIPVisionModel(...).last_hidden_state[:, 1:]` (no post-layernorm) of `vision_x`;
//! `perceiver_out` is the reference `PerceiverResampler` on those tokens, with the weights
//! saved in `checkpoint.pt`. llama/opt store the vision weights under `vision_model.`,
//! gpt_neox/mpt without a prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::cross_attn::GatedCrossAttentionBlock;
use flamingo_core::flamingo::perceiver::PerceiverResampler;
use flamingo_core::io::{SafetensorsFiles, TensorSource, Weights};
use flamingo_core::lm::config::read_json;
use flamingo_core::vision::clip::{ClipVision, ClipVisionConfig, VisionOptions};

const FAMILIES: [&str; 4] = ["llama", "opt", "gpt_neox", "mpt"];
const TOL: f32 = 1e-5;

fn golden_dir(family: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden"
    ))
    .join(family)
}

fn golden(family: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden_dir(family).join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors loads")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
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

fn vision_config(family: &str) -> ClipVisionConfig {
    let path = golden_dir(family).join("vision/config.json");
    ClipVisionConfig::from_hf_json(&path, &read_json(&path).unwrap()).unwrap()
}

fn vision_weights(family: &str) -> Weights {
    let files = SafetensorsFiles::open(&[golden_dir(family).join("vision/model.safetensors")])
        .expect("vision weights open");
    Weights::new(Arc::new(files), DType::F32, &Device::Cpu)
}

/// `vision_x` (2, 2, 1, 3, 32, 32) as the tower's (4, 3, 32, 32) batch.
fn pixels(g: &HashMap<String, Tensor>) -> Tensor {
    g["vision_x"].reshape((4, 3, 32, 32)).unwrap()
}

/// The checkpoint's tensors whose names start with `prefix`, with the prefix removed.
fn checkpoint_under(family: &str, prefix: &str) -> HashMap<String, Tensor> {
    let all = candle_core::pickle::read_all(golden_dir(family).join("checkpoint.pt"))
        .expect("checkpoint.pt reads");
    all.into_iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t)))
        .collect()
}

#[test]
fn vision_tokens_match_the_reference_for_every_family() {
    for family in FAMILIES {
        let g = golden(family);
        let cfg = vision_config(family);
        let tower = ClipVision::load(&cfg, &vision_weights(family), &VisionOptions::default())
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        assert_eq!(tower.num_patches(), 16);
        let got = tower.forward(&pixels(&g)).unwrap();
        let want = g["vision_tokens"].reshape((4, 16, 48)).unwrap();
        let err = max_abs(&got, &want);
        println!("{family}: vision_tokens max abs error {err:.3e}");
        assert!(err <= TOL, "{family}: vision tokens differ by {err}");
    }
}

#[test]
fn perceiver_output_matches_the_reference_for_every_family() {
    for family in FAMILIES {
        let g = golden(family);
        let w = Weights::from_tensors(
            checkpoint_under(family, "perceiver."),
            DType::F32,
            &Device::Cpu,
        );
        let p = PerceiverResampler::load(&w, 48, &PerceiverConfig::default())
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let got = p.forward(&g["vision_tokens"]).unwrap();
        let err = max_abs(&got, &g["perceiver_out"]);
        println!("{family}: perceiver_out max abs error {err:.3e}");
        assert!(err <= TOL, "{family}: perceiver output differs by {err}");

        // And the whole media path from pixels, as the model runs it.
        let tower = ClipVision::load(
            &vision_config(family),
            &vision_weights(family),
            &VisionOptions::default(),
        )
        .unwrap();
        let tokens = tower.forward(&pixels(&g)).unwrap();
        let chained = p
            .forward(&tokens.reshape((2, 2, 1, 16, 48)).unwrap())
            .unwrap();
        let err = max_abs(&chained, &g["perceiver_out"]);
        println!("{family}: pixels→perceiver max abs error {err:.3e}");
        assert!(err <= TOL, "{family}: pixels→perceiver differs by {err}");
    }
}

#[test]
fn checkpoint_cross_attention_blocks_load_by_their_public_names() {
    // The checkpoints hold one block per planned layer, `(i+1) % n == 0`, under
    // `lang_encoder.<layers path>.<i>.gated_cross_attn_layer.`. (Their numeric effect is
    // pinned by the full-model logits; here: names, shapes, and a finite forward.)
    for family in FAMILIES {
        let dir = golden_dir(family);
        let meta = read_json(&dir.join("meta.json")).unwrap();
        let path = meta["decoder_layers_attr_name"].as_str().unwrap();
        let every_n = meta["cross_attn_every_n_layers"].as_u64().unwrap() as usize;
        let lm_cfg = read_json(&dir.join("lm/config.json")).unwrap();
        let dim = lm_cfg
            .get("d_model")
            .or_else(|| lm_cfg.get("hidden_size"))
            .and_then(|v| v.as_u64())
            .unwrap() as usize;
        let layers = lm_cfg
            .get("n_layers")
            .or_else(|| lm_cfg.get("num_hidden_layers"))
            .and_then(|v| v.as_u64())
            .unwrap() as usize;
        let g = golden(family);
        let all = checkpoint_under(family, "");
        let w = Weights::from_tensors(all, DType::F32, &Device::Cpu);
        let mut loaded = 0;
        for i in (0..layers).filter(|i| (i + 1) % every_n == 0) {
            let bw = w.pp(format!("lang_encoder.{path}.{i}.gated_cross_attn_layer"));
            let blk = GatedCrossAttentionBlock::load(&bw, dim, 48, &CrossAttnConfig::default())
                .unwrap_or_else(|e| panic!("{family} layer {i}: {e}"));
            let kv = blk.media_kv(&g["perceiver_out"]).unwrap();
            assert_eq!(kv.k.dims(), &[2, 8, 128, 64]);
            let x = Tensor::randn(0f32, 1.0, (2, 14, dim), &Device::Cpu).unwrap();
            let tt = Tensor::new(
                &[
                    [1u32, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2],
                    [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2],
                ],
                &Device::Cpu,
            )
            .unwrap();
            let out = blk.forward(&x, &kv, &tt).unwrap();
            let finite = out
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite());
            assert!(finite, "{family} layer {i}: non-finite output");
            loaded += 1;
        }
        assert_eq!(loaded, layers / every_n, "{family}");
    }
}

/// Renames an HF vision state dict (no prefix) to open_clip's names under `prefix`, fusing
/// q/k/v into `in_proj_weight` / `in_proj_bias` as `nn.MultiheadAttention` stores them.
fn to_open_clip(
    hf: &HashMap<String, Tensor>,
    layers: usize,
    prefix: &str,
) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut put = |k: &str, t: Tensor| {
        out.insert(format!("{prefix}{k}"), t);
    };
    put(
        "conv1.weight",
        hf["embeddings.patch_embedding.weight"].clone(),
    );
    put("class_embedding", hf["embeddings.class_embedding"].clone());
    put(
        "positional_embedding",
        hf["embeddings.position_embedding.weight"].clone(),
    );
    for (hf_name, oc) in [("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")] {
        for p in ["weight", "bias"] {
            put(&format!("{oc}.{p}"), hf[&format!("{hf_name}.{p}")].clone());
        }
    }
    for i in 0..layers {
        let h = |k: &str| hf[&format!("encoder.layers.{i}.{k}")].clone();
        let o = format!("transformer.resblocks.{i}.");
        for p in ["weight", "bias"] {
            put(&format!("{o}ln_1.{p}"), h(&format!("layer_norm1.{p}")));
            put(&format!("{o}ln_2.{p}"), h(&format!("layer_norm2.{p}")));
            put(&format!("{o}mlp.c_fc.{p}"), h(&format!("mlp.fc1.{p}")));
            put(&format!("{o}mlp.c_proj.{p}"), h(&format!("mlp.fc2.{p}")));
            put(
                &format!("{o}attn.out_proj.{p}"),
                h(&format!("self_attn.out_proj.{p}")),
            );
            let qkv = ["q_proj", "k_proj", "v_proj"].map(|n| h(&format!("self_attn.{n}.{p}")));
            let name = if p == "weight" {
                "in_proj_weight"
            } else {
                "in_proj_bias"
            };
            put(&format!("{o}attn.{name}"), Tensor::cat(&qkv, 0).unwrap());
        }
    }
    out
}

fn hf_tensors_without_prefix(family: &str) -> HashMap<String, Tensor> {
    let files =
        SafetensorsFiles::open(&[golden_dir(family).join("vision/model.safetensors")]).unwrap();
    files
        .keys()
        .into_iter()
        .map(|k| {
            let t = files.load(&k).unwrap();
            (k.trim_start_matches("vision_model.").to_string(), t)
        })
        .collect()
}

#[test]
fn open_clip_names_give_identical_tokens() {
    let family = "llama";
    let g = golden(family);
    let cfg = vision_config(family);
    let reference = ClipVision::load(&cfg, &vision_weights(family), &VisionOptions::default())
        .unwrap()
        .forward(&pixels(&g))
        .unwrap();
    let hf = hf_tensors_without_prefix(family);
    for prefix in ["visual.", ""] {
        let w = Weights::from_tensors(
            to_open_clip(&hf, cfg.num_hidden_layers, prefix),
            DType::F32,
            &Device::Cpu,
        );
        let tower = ClipVision::load(&cfg, &w, &VisionOptions::default()).unwrap();
        let got = tower.forward(&pixels(&g)).unwrap();
        assert_eq!(max_abs(&got, &reference), 0.0, "prefix {prefix:?}");
    }
}

#[test]
fn a_clip_model_file_loads_its_vision_tower_and_ignores_the_text_tower() {
    let family = "mpt";
    let g = golden(family);
    let cfg = vision_config(family);
    let mut t: HashMap<String, Tensor> = hf_tensors_without_prefix(family)
        .into_iter()
        .map(|(k, v)| (format!("vision_model.{k}"), v))
        .collect();
    t.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        Tensor::zeros((10, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "visual_projection.weight".into(),
        Tensor::zeros((32, 48), DType::F32, &Device::Cpu).unwrap(),
    );
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let got = ClipVision::load(&cfg, &w, &VisionOptions::default())
        .unwrap()
        .forward(&pixels(&g))
        .unwrap();
    let want = g["vision_tokens"].reshape((4, 16, 48)).unwrap();
    assert!(max_abs(&got, &want) <= TOL);
}

#[test]
fn post_layernorm_option_normalises_every_patch_token() {
    let family = "gpt_neox";
    let g = golden(family);
    let cfg = vision_config(family);
    let w = vision_weights(family);
    let plain = ClipVision::load(&cfg, &w, &VisionOptions::default())
        .unwrap()
        .forward(&pixels(&g))
        .unwrap();
    let post = ClipVision::load(
        &cfg,
        &w,
        &VisionOptions {
            apply_post_layernorm: true,
        },
    )
    .unwrap()
    .forward(&pixels(&g))
    .unwrap();
    // Expected: LayerNorm(post_layernorm.*, eps 1e-5) over each default patch token.
    let lw = w.get(48, "post_layernorm.weight").unwrap();
    let lb = w.get(48, "post_layernorm.bias").unwrap();
    let mean = plain.mean_keepdim(D::Minus1).unwrap();
    let centered = plain.broadcast_sub(&mean).unwrap();
    let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let want = centered
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&lw)
        .unwrap()
        .broadcast_add(&lb)
        .unwrap();
    let err = max_abs(&post, &want);
    println!("post-layernorm tokens max abs error {err:.3e}");
    assert!(err <= TOL, "{err}");
    assert!(
        max_abs(&post, &plain) > 0.1,
        "post-LN must change the tokens"
    );
}

#[test]
fn pixels_of_the_wrong_size_are_rejected_with_the_expected_shape() {
    let family = "opt";
    let tower = ClipVision::load(
        &vision_config(family),
        &vision_weights(family),
        &VisionOptions::default(),
    )
    .unwrap();
    let bad = Tensor::zeros((1, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let err = tower.forward(&bad).err().unwrap();
    assert!(err.to_string().contains("(N, 3, 32, 32)"), "{err}");
}

#[test]
fn a_file_without_a_vision_tower_names_what_was_expected() {
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    let w = Weights::from_tensors(t, DType::F32, &Device::Cpu);
    let err = ClipVision::load(&vision_config("llama"), &w, &VisionOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("conv1.weight") && msg.contains("model.embed_tokens.weight"),
        "{msg}"
    );
}
