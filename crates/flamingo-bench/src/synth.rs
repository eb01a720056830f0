//! Random-weight model folders in the HF layout (`config.json` + `model.safetensors`) for
//! the benchmark presets, so the benchmark loads them through `Flamingo::load` exactly as a
//! user's model is loaded. Values follow HF's initialisation in kind (N(0, 0.02)-sized weights,
//! unit norm scales, zero biases), which is all that timing needs; they are drawn from a fast
//! counter-based generator on every core because the 9B preset has ~7 billion of them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::presets::{LmDims, Preset, VisionDims};

/// How a tensor is initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Uniform with this standard deviation (timing does not care about the distribution's
    /// shape, only that values are small, finite and not all equal).
    Std(f32),
    Ones,
    Zeros,
}

pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

const STD: f32 = 0.02;

fn w(name: impl Into<String>, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: shape.to_vec(),
        init: Init::Std(STD),
    }
}
fn ones(name: impl Into<String>, n: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![n],
        init: Init::Ones,
    }
}
fn zeros(name: impl Into<String>, n: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![n],
        init: Init::Zeros,
    }
}
/// A LayerNorm's scale and (optionally) shift.
fn norm(out: &mut Vec<TensorSpec>, prefix: &str, n: usize, bias: bool) {
    out.push(ones(format!("{prefix}.weight"), n));
    if bias {
        out.push(zeros(format!("{prefix}.bias"), n));
    }
}
/// A `Linear(inp, outp)` in PyTorch's `(out, in)` layout.
fn linear(out: &mut Vec<TensorSpec>, prefix: &str, inp: usize, outp: usize, bias: bool) {
    out.push(w(format!("{prefix}.weight"), &[outp, inp]));
    if bias {
        out.push(zeros(format!("{prefix}.bias"), outp));
    }
}

/// HF `CLIPVisionModel` tensors (`vision_model.` prefix, as `openai/clip-vit-large-patch14`).
pub fn clip_tensors(v: &VisionDims) -> Vec<TensorSpec> {
    let d = v.hidden_size;
    let grid = v.image_size / v.patch_size;
    let mut t = vec![
        w("vision_model.embeddings.class_embedding", &[d]),
        w(
            "vision_model.embeddings.patch_embedding.weight",
            &[d, 3, v.patch_size, v.patch_size],
        ),
        w(
            "vision_model.embeddings.position_embedding.weight",
            &[grid * grid + 1, d],
        ),
    ];
    norm(&mut t, "vision_model.pre_layrnorm", d, true);
    for i in 0..v.num_hidden_layers {
        let p = format!("vision_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut t, &format!("{p}.self_attn.{proj}"), d, d, true);
        }
        norm(&mut t, &format!("{p}.layer_norm1"), d, true);
        linear(
            &mut t,
            &format!("{p}.mlp.fc1"),
            d,
            v.intermediate_size,
            true,
        );
        linear(
            &mut t,
            &format!("{p}.mlp.fc2"),
            v.intermediate_size,
            d,
            true,
        );
        norm(&mut t, &format!("{p}.layer_norm2"), d, true);
    }
    norm(&mut t, "vision_model.post_layernorm", d, true);
    t
}

pub fn clip_config(v: &VisionDims) -> serde_json::Value {
    json!({
        "architectures": ["CLIPVisionModel"],
        "model_type": "clip_vision_model",
        "hidden_act": "quick_gelu",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": 3,
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0
    })
}

/// HF `OPTForCausalLM` / `MptForCausalLM` tensors (tied heads: no `lm_head.weight`).
pub fn lm_tensors(lm: &LmDims) -> Vec<TensorSpec> {
    let mut t = Vec::new();
    match *lm {
        LmDims::Opt {
            hidden_size: d,
            ffn_dim,
            num_hidden_layers,
            vocab_size,
            word_embed_proj_dim,
            max_position_embeddings,
            ..
        } => {
            // OPT's learned positions are offset by 2 (modeling_opt.py).
            t.push(w(
                "model.decoder.embed_tokens.weight",
                &[vocab_size, word_embed_proj_dim],
            ));
            t.push(w(
                "model.decoder.embed_positions.weight",
                &[max_position_embeddings + 2, d],
            ));
            if word_embed_proj_dim != d {
                linear(
                    &mut t,
                    "model.decoder.project_in",
                    word_embed_proj_dim,
                    d,
                    false,
                );
                linear(
                    &mut t,
                    "model.decoder.project_out",
                    d,
                    word_embed_proj_dim,
                    false,
                );
            }
            for i in 0..num_hidden_layers {
                let p = format!("model.decoder.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    linear(&mut t, &format!("{p}.self_attn.{proj}"), d, d, true);
                }
                norm(&mut t, &format!("{p}.self_attn_layer_norm"), d, true);
                linear(&mut t, &format!("{p}.fc1"), d, ffn_dim, true);
                linear(&mut t, &format!("{p}.fc2"), ffn_dim, d, true);
                norm(&mut t, &format!("{p}.final_layer_norm"), d, true);
            }
            norm(&mut t, "model.decoder.final_layer_norm", d, true);
        }
        LmDims::Mpt {
            d_model: d,
            n_layers,
            expansion_ratio,
            vocab_size,
            ..
        } => {
            // no_bias=True: no linear biases, and HF's MptBlock drops the norms' biases too.
            t.push(w("transformer.wte.weight", &[vocab_size, d]));
            for i in 0..n_layers {
                let p = format!("transformer.blocks.{i}");
                norm(&mut t, &format!("{p}.norm_1"), d, false);
                linear(&mut t, &format!("{p}.attn.Wqkv"), d, 3 * d, false);
                linear(&mut t, &format!("{p}.attn.out_proj"), d, d, false);
                norm(&mut t, &format!("{p}.norm_2"), d, false);
                linear(
                    &mut t,
                    &format!("{p}.ffn.up_proj"),
                    d,
                    expansion_ratio * d,
                    false,
                );
                linear(
                    &mut t,
                    &format!("{p}.ffn.down_proj"),
                    expansion_ratio * d,
                    d,
                    false,
                );
            }
            norm(&mut t, "transformer.norm_f", d, false);
        }
    }
    t
}

/// The `config.json` that `save_pretrained` writes for the reference's config objects
/// (the fields the reference sets, and the defaults that matter to the shapes).
pub fn lm_config(lm: &LmDims) -> serde_json::Value {
    match *lm {
        LmDims::Opt {
            hidden_size,
            ffn_dim,
            num_hidden_layers,
            num_attention_heads,
            vocab_size,
            word_embed_proj_dim,
            max_position_embeddings,
        } => json!({
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "activation_function": "relu",
            "do_layer_norm_before": true,
            "enable_bias": true,
            "layer_norm_elementwise_affine": true,
            "_remove_final_layer_norm": false,
            "tie_word_embeddings": true,
            "hidden_size": hidden_size,
            "ffn_dim": ffn_dim,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "vocab_size": vocab_size,
            "word_embed_proj_dim": word_embed_proj_dim,
            "max_position_embeddings": max_position_embeddings,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "pad_token_id": 1
        }),
        LmDims::Mpt {
            d_model,
            n_heads,
            n_layers,
            expansion_ratio,
            max_seq_len,
            vocab_size,
        } => json!({
            "architectures": ["MptForCausalLM"],
            "model_type": "mpt",
            "d_model": d_model,
            "n_heads": n_heads,
            "n_layers": n_layers,
            "expansion_ratio": expansion_ratio,
            "max_seq_len": max_seq_len,
            "vocab_size": vocab_size,
            "no_bias": true,
            "layer_norm_epsilon": 1e-5,
            "learned_pos_emb": true,
            "logit_scale": null,
            "embedding_fraction": 1.0,
            "norm_type": "low_precision_layernorm",
            "tie_word_embeddings": true,
            "attn_config": {
                "alibi": true,
                "alibi_bias_max": 8,
                "attn_impl": "torch",
                "attn_type": "multihead_attention",
                "clip_qkv": null,
                "prefix_lm": false,
                "qk_ln": false,
                "softmax_scale": null
            }
        }),
    }
}

/// Stored dtype of the random weights (the loader converts to the run's dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    Bf16,
}

impl StoreDtype {
    fn name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "F32",
            StoreDtype::Bf16 => "BF16",
        }
    }
    fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::Bf16 => 2,
        }
    }
}

/// SplitMix64: a counter-based generator, so any chunk of a tensor can be filled
/// independently (in parallel) and the bytes depend only on (seed, tensor, index).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fill(buf: &mut [u8], init: Init, dtype: StoreDtype, seed: u64, start: usize) {
    let size = dtype.size();
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let (scale, offset) = match init {
        Init::Std(std) => (std * 3f32.sqrt() * 2.0, -std * 3f32.sqrt()),
        Init::Ones => (0.0, 1.0),
        Init::Zeros => (0.0, 0.0),
    };
    for (k, out) in buf.chunks_exact_mut(size).enumerate() {
        let x = if scale == 0.0 {
            offset
        } else {
            let r = splitmix(seed ^ (start + k) as u64);
            // 24 random bits -> [0, 1).
            (r >> 40) as f32 / (1u64 << 24) as f32 * scale + offset
        };
        match dtype {
            StoreDtype::F32 => out.copy_from_slice(&x.to_le_bytes()),
            StoreDtype::Bf16 => out.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
        }
    }
}

/// Writes `tensors` as one safetensors file, streaming tensor by tensor (the 9B LM would not
/// fit in memory twice). Returns the bytes written.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorSpec],
    dtype: StoreDtype,
    seed: u64,
) -> std::io::Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        let n = t.elems() * dtype.size();
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut hdr = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The data section starts 8-byte aligned; the format pads the header with spaces.
    while hdr.len() % 8 != 0 {
        hdr.push(b' ');
    }
    let mut f = BufWriter::with_capacity(1 << 22, File::create(path)?);
    f.write_all(&(hdr.len() as u64).to_le_bytes())?;
    f.write_all(&hdr)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Fill at most 64 MiB at a time, split over every core.
    const CHUNK: usize = 64 << 20;
    let mut buf = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        let tseed = splitmix(
            seed.wrapping_add(ti as u64)
                .wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        let total = t.elems();
        let per_chunk = CHUNK / dtype.size();
        let mut start = 0;
        while start < total {
            let n = per_chunk.min(total - start);
            buf.resize(n * dtype.size(), 0);
            let per_thread = n.div_ceil(threads);
            std::thread::scope(|s| {
                for (j, part) in buf.chunks_mut(per_thread * dtype.size()).enumerate() {
                    let first = start + j * per_thread;
                    s.spawn(move || fill(part, t.init, dtype, tseed, first));
                }
            });
            f.write_all(&buf)?;
            start += n;
        }
    }
    f.flush()?;
    Ok(8 + hdr.len() as u64 + offset as u64)
}

/// A vision folder and an LM folder under `root`, removed on drop.
pub struct SynthModel {
    pub root: PathBuf,
    pub vision_dir: PathBuf,
    pub lm_dir: PathBuf,
    pub bytes: u64,
}

impl Drop for SynthModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn write_model(
    preset: &Preset,
    tmp: &Path,
    dtype: StoreDtype,
    seed: u64,
) -> std::io::Result<SynthModel> {
    let root = tmp.join(format!(
        "flamingo-bench-{}-{}",
        preset.name,
        std::process::id()
    ));
    let vision_dir = root.join("vision");
    let lm_dir = root.join("lm");
    std::fs::create_dir_all(&vision_dir)?;
    std::fs::create_dir_all(&lm_dir)?;
    // From here on the folder is cleaned up even if a write fails.
    let mut model = SynthModel {
        root,
        vision_dir,
        lm_dir,
        bytes: 0,
    };
    let cfg = |v: serde_json::Value| serde_json::to_string_pretty(&v).map_err(std::io::Error::from);
    std::fs::write(
        model.vision_dir.join("config.json"),
        cfg(clip_config(&preset.vision))?,
    )?;
    std::fs::write(
        model.lm_dir.join("config.json"),
        cfg(lm_config(&preset.lm))?,
    )?;
    model.bytes += write_safetensors(
        &model.vision_dir.join("model.safetensors"),
        &clip_tensors(&preset.vision),
        dtype,
        seed,
    )?;
    model.bytes += write_safetensors(
        &model.lm_dir.join("model.safetensors"),
        &lm_tensors(&preset.lm),
        dtype,
        seed.wrapping_add(1 << 32),
    )?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn written_safetensors_read_back_with_the_declared_shapes_and_inits() {
        let dir = std::env::temp_dir().join(format!("synth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let specs = vec![w("a", &[300, 7]), ones("b", 5), zeros("c", 3), w("d", &[1])];
        for dtype in [StoreDtype::F32, StoreDtype::Bf16] {
            write_safetensors(&path, &specs, dtype, 7).unwrap();
            let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            assert_eq!(t["a"].dims(), [300, 7]);
            let a: Vec<f32> = t["a"]
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mean = a.iter().sum::<f32>() / a.len() as f32;
            let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
            assert!(mean.abs() < 0.005, "{mean}");
            assert!((std - STD).abs() < 0.003, "{std}");
            let b: Vec<f32> = t["b"].to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            assert_eq!(b, vec![1.0; 5]);
            let c: Vec<f32> = t["c"].to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            assert_eq!(c, vec![0.0; 3]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
