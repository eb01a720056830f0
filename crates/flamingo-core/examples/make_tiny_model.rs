//! Writes the tiny default model the package ships (`models/tiny`): a CLIP-style vision
//! tower, an MPT-style LM, a word-level tokenizer over the demo vocabulary, and fresh
//! Flamingo weights. Random but deterministic (seeded), so the file bytes are reproducible.
//!
//! usage: cargo run -p flamingo-core --example make_tiny_model -- OUT_DIR

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The demo task's closed vocabulary (issue: procedurally generated shape captions).
const WORDS: &[&str] = &[
    "<|endoftext|>",
    "<unk>",
    "a",
    "an",
    "image",
    "of",
    "one",
    "two",
    "three",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "star",
    "stars",
    "on",
    "and",
    "Output",
    ":",
    ".",
    ",",
    "Question",
    "Short",
    "answer",
    "how",
    "many",
    "what",
    "colour",
    "shape",
    "is",
    "are",
    "the",
    "there",
    "?",
];

const VISION: (usize, usize, usize, usize, usize) = (64, 2, 4, 32, 8); // width, layers, heads, image, patch
const LM: (usize, usize, usize) = (96, 2, 4); // d_model, layers, heads

fn randn(rng: &mut StdRng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller: two uniforms → one standard normal.
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn ones(n: usize) -> Tensor {
    Tensor::ones(n, DType::F32, &Device::Cpu).unwrap()
}
fn zeros(n: usize) -> Tensor {
    Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()
}

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap() + "\n").unwrap();
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_tiny_model OUT_DIR");
    let out = Path::new(&out);
    let mut rng = StdRng::seed_from_u64(20231011);

    // Vision tower, HF CLIPVisionModel layout.
    let (vw, vl, vh, img, patch) = VISION;
    let vdir = out.join("vision");
    std::fs::create_dir_all(&vdir).unwrap();
    write_json(
        &vdir.join("config.json"),
        &serde_json::json!({
            "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
            "hidden_size": vw, "intermediate_size": 4 * vw, "num_hidden_layers": vl,
            "num_attention_heads": vh, "image_size": img, "patch_size": patch,
            "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": vw
        }),
    );
    let mut v = HashMap::new();
    let p = |s: &str| format!("vision_model.{s}");
    let patches = (img / patch) * (img / patch);
    v.insert(
        p("embeddings.patch_embedding.weight"),
        randn(&mut rng, &[vw, 3, patch, patch], 0.05),
    );
    v.insert(
        p("embeddings.class_embedding"),
        randn(&mut rng, &[vw], 0.05),
    );
    v.insert(
        p("embeddings.position_embedding.weight"),
        randn(&mut rng, &[patches + 1, vw], 0.05),
    );
    for n in ["pre_layrnorm", "post_layernorm"] {
        v.insert(p(&format!("{n}.weight")), ones(vw));
        v.insert(p(&format!("{n}.bias")), zeros(vw));
    }
    for i in 0..vl {
        let l = |s: &str| p(&format!("encoder.layers.{i}.{s}"));
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.insert(
                l(&format!("self_attn.{n}.weight")),
                randn(&mut rng, &[vw, vw], 0.08),
            );
            v.insert(l(&format!("self_attn.{n}.bias")), zeros(vw));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            v.insert(l(&format!("{n}.weight")), ones(vw));
            v.insert(l(&format!("{n}.bias")), zeros(vw));
        }
        v.insert(l("mlp.fc1.weight"), randn(&mut rng, &[4 * vw, vw], 0.08));
        v.insert(l("mlp.fc1.bias"), zeros(4 * vw));
        v.insert(l("mlp.fc2.weight"), randn(&mut rng, &[vw, 4 * vw], 0.04));
        v.insert(l("mlp.fc2.bias"), zeros(vw));
    }
    candle_core::safetensors::save(&v, vdir.join("model.safetensors")).unwrap();

    // Word-level tokenizer; the Flamingo special tokens are appended at load time.
    let lm_vocab = WORDS.len() + 3; // + <|endofchunk|>, <image>, <PAD>
    let ldir = out.join("lm");
    std::fs::create_dir_all(&ldir).unwrap();
    write_json(
        &ldir.join("tokenizer.json"),
        &flamingo_core::demo::word_level_tokenizer_json(WORDS),
    );
    write_json(
        &ldir.join("tokenizer_config.json"),
        &flamingo_core::demo::tokenizer_config_json(),
    );

    // LM, HF MptForCausalLM layout (ALiBi, no biases, tied head): the OpenFlamingo-3B family.
    let (d, layers, heads) = LM;
    write_json(
        &ldir.join("config.json"),
        &serde_json::json!({
            "architectures": ["MptForCausalLM"], "model_type": "mpt", "d_model": d, "n_heads": heads,
            "n_layers": layers, "expansion_ratio": 4, "max_seq_len": 512, "vocab_size": lm_vocab,
            "no_bias": true, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true,
            "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_type": "multihead_attention",
                            "qk_ln": false, "clip_qkv": null, "softmax_scale": null},
            "eos_token_id": 0, "pad_token_id": null, "use_cache": true
        }),
    );
    let mut l = HashMap::new();
    l.insert(
        "transformer.wte.weight".to_string(),
        randn(&mut rng, &[lm_vocab, d], 0.5),
    );
    for i in 0..layers {
        let k = |s: &str| format!("transformer.blocks.{i}.{s}");
        l.insert(k("norm_1.weight"), ones(d));
        l.insert(k("norm_2.weight"), ones(d));
        l.insert(k("attn.Wqkv.weight"), randn(&mut rng, &[3 * d, d], 0.1));
        l.insert(k("attn.out_proj.weight"), randn(&mut rng, &[d, d], 0.1));
        l.insert(k("ffn.up_proj.weight"), randn(&mut rng, &[4 * d, d], 0.1));
        l.insert(
            k("ffn.down_proj.weight"),
            randn(&mut rng, &[d, 4 * d], 0.05),
        );
    }
    l.insert("transformer.norm_f.weight".to_string(), ones(d));
    candle_core::safetensors::save(&l, ldir.join("model.safetensors")).unwrap();

    write_json(
        &out.join("flamingo.json"),
        &serde_json::json!({
            "vision": "vision", "lm": "lm", "tokenizer": "lm/tokenizer.json",
            "crossAttention": {"everyNLayers": 1},
            "checkpoint": null,
            "note": "untrained: random backbones and a fresh bridge (gates 0)"
        }),
    );
    println!("wrote {}", out.display());
}
