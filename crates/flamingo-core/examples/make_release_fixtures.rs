//! Tiny random stand-ins for the five OpenFlamingo releases (openflamingo-spec §9), laid out
//! like the hub repositories each release draws on: the release repo holds only
//! `checkpoint.pt`; the vision tower comes from `openai/clip-vit-large-patch14` (HF
//! `CLIPModel` layout, `model.safetensors`); the LM and its tokenizer from the LM's own repo
//! (`pytorch_model.bin`, single or sharded with an index, as those repos ship it).
//!
//! Everything is scaled down but keeps what a loader can get wrong: the LM family, config
//! spelling and key names, the file formats, the padded LM vocabulary that OpenFlamingo
//! shrinks to `len(tokenizer)` (50432 → 50280 in the releases; 112 → 99 here: a 96-token
//! GPT-NeoX-style byte-level BPE tokenizer plus `<|endofchunk|>`, `<image>`, `<PAD>`), the
//! cross-attention plan (every 1, 2 or 4 layers, before layer `i` when `(i+1) % n == 0`), the
//! checkpoint's embedding matrices (trained `<image>`/`<|endofchunk|>` rows for the MPT
//! releases, frozen ones for the RedPajama ones) and, for OpenFlamingo-4B-vitl-rpj3b, the
//! GPT-NeoX causal-mask buffers (`BoolStorage`) its checkpoint carries (spec §8.2).
//!
//! Tensors are written as `torch.save` (zip, pickle protocol 2) would write them, by a
//! minimal writer for f32 and bool storages below.
//!
//! usage: cargo run -p flamingo-core --example make_release_fixtures -- OUT_DIR

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The tokenizer's length before OpenFlamingo adds its three tokens (GPT-NeoX-20B: 50277).
pub const TOKENIZER_LEN: usize = 96;
/// The LM's padded vocabulary (the released LMs: 50432).
pub const LM_VOCAB: usize = 112;
/// `len(tokenizer)` after `<|endofchunk|>`, `<image>` and `<PAD>` (the releases: 50280).
pub const RESIZED_VOCAB: usize = TOKENIZER_LEN + 3;
pub const END_OF_CHUNK_ID: usize = TOKENIZER_LEN;
pub const MEDIA_ID: usize = TOKENIZER_LEN + 1;

/// The tiny CLIP tower: 28×28 images in 14×14 patches (4 patches + CLS), width 32.
pub const VISION_WIDTH: usize = 32;
pub const IMAGE_SIZE: usize = 28;
const PATCH: usize = 14;
const VISION_LAYERS: usize = 2;

/// LM width and heads, shared by the three LM families.
pub const LM_WIDTH: usize = 64;
const LM_HEADS: usize = 4;
/// Context length (`max_seq_len`, `max_position_embeddings`).
const LM_POSITIONS: usize = 64;

pub const VISION_REPO: &str = "openai/clip-vit-large-patch14";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmKind {
    /// MosaicML's `MosaicGPT` (mpt-1b-redpajama-200b): ALiBi, QK-LayerNorm, no biases,
    /// `transformer.blocks`, output head tied to `transformer.wte`.
    MosaicGpt,
    /// `GPTNeoXForCausalLM` as RedPajama-INCITE-3B: full rotary, sequential residual,
    /// untied `embed_out`, `gpt_neox.layers`.
    GptNeoxRpj,
    /// MPT-7B's remote code (`MPTForCausalLM`, model_type "mpt"): ALiBi, no biases,
    /// `transformer.blocks`, tied head; sharded `pytorch_model-0000x-of-00002.bin`.
    Mpt7b,
}

/// One release: its hub repo, the LM repo it draws on and how it was trained.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub repo: &'static str,
    pub lm_repo: &'static str,
    pub lm: LmKind,
    /// Tiny stand-in's decoder layers (the releases: 24, 32, 32).
    pub lm_layers: usize,
    pub cross_attn_every_n_layers: usize,
    /// The `<image>`/`<|endofchunk|>` rows trained (3B, 9B) or stayed frozen (4B).
    pub trained_embedding_rows: bool,
    /// The checkpoint carries the LM's causal-mask buffers (only 4B-vitl-rpj3b, spec §8.2).
    pub mask_buffers_in_checkpoint: bool,
    pub seed: u64,
}

pub const RELEASES: [Release; 5] = [
    Release {
        repo: "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        lm_repo: "anas-awadalla/mpt-1b-redpajama-200b",
        lm: LmKind::MosaicGpt,
        lm_layers: 2,
        cross_attn_every_n_layers: 1,
        trained_embedding_rows: true,
        mask_buffers_in_checkpoint: false,
        seed: 301,
    },
    Release {
        repo: "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
        lm_repo: "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        lm: LmKind::MosaicGpt,
        lm_layers: 2,
        cross_attn_every_n_layers: 1,
        trained_embedding_rows: true,
        mask_buffers_in_checkpoint: false,
        seed: 302,
    },
    Release {
        repo: "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        lm_repo: "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        lm: LmKind::GptNeoxRpj,
        lm_layers: 4,
        cross_attn_every_n_layers: 2,
        trained_embedding_rows: false,
        mask_buffers_in_checkpoint: true,
        seed: 401,
    },
    Release {
        repo: "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
        lm_repo: "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
        lm: LmKind::GptNeoxRpj,
        lm_layers: 4,
        cross_attn_every_n_layers: 2,
        trained_embedding_rows: false,
        mask_buffers_in_checkpoint: false,
        seed: 402,
    },
    Release {
        repo: "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
        lm_repo: "anas-awadalla/mpt-7b",
        lm: LmKind::Mpt7b,
        lm_layers: 8,
        cross_attn_every_n_layers: 4,
        trained_embedding_rows: true,
        mask_buffers_in_checkpoint: false,
        seed: 901,
    },
];

impl Release {
    /// The reference's plan: a block before LM layer `i` when `(i+1) % n == 0`.
    pub fn cross_attn_layers(&self) -> Vec<usize> {
        (0..self.lm_layers)
            .filter(|i| (i + 1) % self.cross_attn_every_n_layers == 0)
            .collect()
    }

    /// Where the LM's decoder layers live (spec §2.4), which the checkpoint keys embed.
    pub fn decoder_layers_path(&self) -> &'static str {
        match self.lm {
            LmKind::MosaicGpt | LmKind::Mpt7b => "transformer.blocks",
            LmKind::GptNeoxRpj => "gpt_neox.layers",
        }
    }
}

/// The folders of one generated release.
#[derive(Clone, Debug)]
pub struct ReleaseFiles {
    pub checkpoint: PathBuf,
    pub vision_dir: PathBuf,
    /// The LM repo: config.json, weights and the tokenizer files.
    pub lm_dir: PathBuf,
}

/// Writes `release` (and the shared vision repo, if not there yet) under `root`, each repo
/// in `root/<owner>/<name>` as `huggingface-cli download --local-dir` would lay it out.
pub fn write_release(release: &Release, root: &Path) -> Res<ReleaseFiles> {
    let mut rng = StdRng::seed_from_u64(release.seed);
    let vision_dir = root.join(VISION_REPO);
    if !vision_dir.join("config.json").is_file() {
        write_vision(&vision_dir, &mut StdRng::seed_from_u64(14))?;
    }
    let lm_dir = root.join(release.lm_repo);
    std::fs::create_dir_all(&lm_dir)?;
    write_tokenizer(&lm_dir)?;
    let lm = match release.lm {
        LmKind::MosaicGpt => write_mosaic_gpt(&lm_dir, release.lm_layers, &mut rng)?,
        LmKind::GptNeoxRpj => write_redpajama(&lm_dir, release.lm_layers, &mut rng)?,
        LmKind::Mpt7b => write_mpt7b(&lm_dir, release.lm_layers, &mut rng)?,
    };
    let release_dir = root.join(release.repo);
    std::fs::create_dir_all(&release_dir)?;
    let checkpoint = release_dir.join("checkpoint.pt");
    write_checkpoint(release, &lm, &checkpoint, &mut rng)?;
    Ok(ReleaseFiles {
        checkpoint,
        vision_dir,
        lm_dir,
    })
}

fn main() -> Res<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: make_release_fixtures OUT_DIR")?;
    for release in &RELEASES {
        let files = write_release(release, Path::new(&out))?;
        println!(
            "{}: {} (LM {}, vision {})",
            release.repo,
            files.checkpoint.display(),
            files.lm_dir.display(),
            files.vision_dir.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Random tensors

fn randn(rng: &mut StdRng, shape: &[usize], std: f32) -> Res<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller: two uniforms → one standard normal.
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// A norm's weight: around 1, so that a port that drops it still differs.
fn norm_weight(rng: &mut StdRng, n: usize) -> Res<Tensor> {
    Ok((randn(rng, &[n], 0.1)? + 1.0)?)
}

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Res<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Named tensors in the order a state dict lists them.
#[derive(Default)]
struct StateDict {
    entries: Vec<(String, Storage)>,
}

/// The storage types the writer supports.
enum Storage {
    F32(Tensor),
    /// Stored as 0/1 bytes (`torch.BoolStorage`); held as u8.
    Bool(Tensor),
}

impl StateDict {
    fn f32(&mut self, key: impl Into<String>, t: Tensor) {
        self.entries.push((key.into(), Storage::F32(t)));
    }
    fn bool(&mut self, key: impl Into<String>, t: Tensor) {
        self.entries.push((key.into(), Storage::Bool(t)));
    }
    fn get(&self, key: &str) -> Option<&Tensor> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| match s {
                Storage::F32(t) | Storage::Bool(t) => t,
            })
    }
}

// ---------------------------------------------------------------------------------------
// torch.save writer

/// Appends pickle opcodes (protocol 2, the one `torch.save` uses).
struct Pickler(Vec<u8>);

impl Pickler {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.0.push(b'K'); // BININT1
            self.0.push(v as u8);
        } else {
            self.0.push(b'J'); // BININT
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        }
    }
    fn int_tuple(&mut self, vs: &[usize]) {
        self.op(b'(');
        for &v in vs {
            self.int(v);
        }
        self.op(b't');
    }
    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

/// Writes `tensors` as `torch.save(OrderedDict(...), path)` does: a zip (entries stored, data
/// records 64-byte aligned) holding `<stem>/data.pkl`, `<stem>/byteorder`, one
/// `<stem>/data/<i>` per storage and `<stem>/version`.
fn save_torch(state: &StateDict, path: &Path) -> Res<()> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("the output file needs a name")?
        .to_string();
    let mut p = Pickler(vec![0x80, 2]);
    p.empty_ordered_dict();
    p.op(b'(');
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (key, storage) in &state.entries {
        let (t, class) = match storage {
            Storage::F32(t) => (t, "FloatStorage"),
            Storage::Bool(t) => (t, "BoolStorage"),
        };
        let shape = t.dims().to_vec();
        let numel = t.elem_count();
        let bytes: Vec<u8> = match storage {
            Storage::F32(t) => t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            Storage::Bool(t) => t
                .to_dtype(DType::U8)?
                .flatten_all()?
                .to_vec1::<u8>()?
                .iter()
                .map(|&v| (v != 0) as u8)
                .collect(),
        };
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        p.str(key);
        // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks)
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        p.op(b'(');
        p.str("storage");
        p.global("torch", class);
        p.str(&storages.len().to_string());
        p.str("cpu");
        p.int(numel);
        p.op(b't');
        p.op(b'Q'); // BINPERSID
        p.int(0);
        p.int_tuple(&shape);
        p.int_tuple(&stride);
        p.op(0x89); // NEWFALSE: requires_grad
        p.empty_ordered_dict();
        p.op(b't');
        p.op(b'R');
        storages.push(bytes);
    }
    p.op(b'u'); // SETITEMS
    p.op(b'.');

    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{stem}/data.pkl"), stored)?;
    zip.write_all(&p.0)?;
    zip.start_file(format!("{stem}/byteorder"), stored)?;
    zip.write_all(b"little")?;
    for (i, bytes) in storages.iter().enumerate() {
        zip.start_file(format!("{stem}/data/{i}"), stored.with_alignment(64))?;
        zip.write_all(bytes)?;
    }
    zip.start_file(format!("{stem}/version"), stored)?;
    zip.write_all(b"3\n")?;
    zip.finish()?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Res<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Vision: openai/clip-vit-large-patch14 (CLIPModel: text and vision towers, projections)

fn write_vision(dir: &Path, rng: &mut StdRng) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let (w, text_w, proj) = (VISION_WIDTH, 32, 16);
    let text_positions = 16;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "_name_or_path": "openai/clip-vit-large-patch14",
            "architectures": ["CLIPModel"],
            "initializer_factor": 1.0,
            "logit_scale_init_value": 2.6592,
            "model_type": "clip",
            "projection_dim": proj,
            "text_config": {
                "model_type": "clip_text_model", "hidden_size": text_w, "intermediate_size": 4 * text_w,
                "num_attention_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": text_positions,
                "vocab_size": 64, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                "projection_dim": proj, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
            },
            "vision_config": {
                "model_type": "clip_vision_model", "hidden_size": w, "intermediate_size": 4 * w,
                "num_attention_heads": 4, "num_hidden_layers": VISION_LAYERS, "image_size": IMAGE_SIZE,
                "patch_size": PATCH, "num_channels": 3, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, "projection_dim": proj, "dropout": 0.0, "attention_dropout": 0.0
            },
            "torch_dtype": "float32",
            "transformers_version": "4.19.0.dev0"
        }),
    )?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &serde_json::json!({
            "crop_size": IMAGE_SIZE, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": IMAGE_SIZE
        }),
    )?;

    let mut t: HashMap<String, Tensor> = HashMap::new();
    let encoder_layer =
        |t: &mut HashMap<String, Tensor>, rng: &mut StdRng, prefix: String, d: usize| -> Res<()> {
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                t.insert(
                    format!("{prefix}.self_attn.{n}.weight"),
                    randn(rng, &[d, d], 0.15)?,
                );
                t.insert(
                    format!("{prefix}.self_attn.{n}.bias"),
                    randn(rng, &[d], 0.02)?,
                );
            }
            for n in ["layer_norm1", "layer_norm2"] {
                t.insert(format!("{prefix}.{n}.weight"), norm_weight(rng, d)?);
                t.insert(format!("{prefix}.{n}.bias"), randn(rng, &[d], 0.02)?);
            }
            t.insert(
                format!("{prefix}.mlp.fc1.weight"),
                randn(rng, &[4 * d, d], 0.15)?,
            );
            t.insert(
                format!("{prefix}.mlp.fc1.bias"),
                randn(rng, &[4 * d], 0.02)?,
            );
            t.insert(
                format!("{prefix}.mlp.fc2.weight"),
                randn(rng, &[d, 4 * d], 0.08)?,
            );
            t.insert(format!("{prefix}.mlp.fc2.bias"), randn(rng, &[d], 0.02)?);
            Ok(())
        };

    // The text tower is part of the repo's weights file; the vision loader must skip it.
    t.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        randn(rng, &[64, text_w], 0.1)?,
    );
    t.insert(
        "text_model.embeddings.position_embedding.weight".into(),
        randn(rng, &[text_positions, text_w], 0.1)?,
    );
    encoder_layer(&mut t, rng, "text_model.encoder.layers.0".into(), text_w)?;
    t.insert(
        "text_model.final_layer_norm.weight".into(),
        norm_weight(rng, text_w)?,
    );
    t.insert(
        "text_model.final_layer_norm.bias".into(),
        randn(rng, &[text_w], 0.02)?,
    );

    let patches = (IMAGE_SIZE / PATCH) * (IMAGE_SIZE / PATCH);
    t.insert(
        "vision_model.embeddings.class_embedding".into(),
        randn(rng, &[w], 0.5)?,
    );
    t.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        randn(rng, &[w, 3, PATCH, PATCH], 0.05)?,
    );
    t.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        randn(rng, &[patches + 1, w], 0.2)?,
    );
    // A buffer older CLIP files carry.
    t.insert(
        "vision_model.embeddings.position_ids".into(),
        Tensor::arange(0i64, (patches + 1) as i64, &Device::Cpu)?.unsqueeze(0)?,
    );
    for n in ["pre_layrnorm", "post_layernorm"] {
        t.insert(format!("vision_model.{n}.weight"), norm_weight(rng, w)?);
        t.insert(format!("vision_model.{n}.bias"), randn(rng, &[w], 0.02)?);
    }
    for i in 0..VISION_LAYERS {
        encoder_layer(&mut t, rng, format!("vision_model.encoder.layers.{i}"), w)?;
    }
    t.insert(
        "visual_projection.weight".into(),
        randn(rng, &[proj, w], 0.1)?,
    );
    t.insert(
        "text_projection.weight".into(),
        randn(rng, &[proj, text_w], 0.1)?,
    );
    t.insert("logit_scale".into(), Tensor::new(2.6592f32, &Device::Cpu)?);
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tokenizer: GPT-NeoX-20B style (byte-level BPE, `<|endoftext|>` = 0, no BOS, no pad token)

/// Byte-level BPE merges, in priority order; each adds one token.
const MERGES: [(&str, &str); 20] = [
    ("Ġ", "a"),
    ("i", "n"),
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("a", "n"),
    ("Ġa", "n"),
    ("Ġ", "i"),
    ("m", "a"),
    ("g", "e"),
    ("ma", "ge"),
    ("Ġi", "mage"),
    ("Ġ", "o"),
    ("Ġo", "f"),
    ("u", "t"),
    ("O", "ut"),
    ("p", "ut"),
    ("Out", "put"),
    ("Ġ", "c"),
    ("a", "t"),
];

fn write_tokenizer(dir: &Path) -> Res<()> {
    // Byte-level symbols: `Ġ` is the space byte, `Ċ` the newline.
    let mut vocab: Vec<String> = vec!["<|endoftext|>".into(), "<|padding|>".into()];
    vocab.extend(["Ġ", "Ċ"].map(String::from));
    vocab.extend(('a'..='z').map(String::from));
    vocab.extend(('A'..='Z').map(String::from));
    vocab.extend(('0'..='9').map(String::from));
    vocab.extend([".", ",", ":", "?", "!", "'", "-", ";", "(", ")"].map(String::from));
    vocab.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    if vocab.len() != TOKENIZER_LEN {
        return Err(format!(
            "the tokenizer has {} tokens, not {TOKENIZER_LEN}",
            vocab.len()
        )
        .into());
    }
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    write_json(
        &dir.join("tokenizer.json"),
        &serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<|endoftext|>"), special(1, "<|padding|>")],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": vocab_map,
                "merges": MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()
            }
        }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "add_bos_token": false, "add_eos_token": false, "bos_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": true, "eos_token": "<|endoftext|>",
            "model_max_length": 2048, "tokenizer_class": "GPTNeoXTokenizer",
            "unk_token": "<|endoftext|>"
        }),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &serde_json::json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                            "unk_token": "<|endoftext|>"}),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// LMs

/// What the checkpoint writer needs to know about the LM it extends.
struct LmWeights {
    /// `(key, LM_VOCAB × D)` of each embedding matrix the checkpoint carries, in the order
    /// the reference's state dict lists them.
    embeddings: Vec<(String, Tensor)>,
    head_dim: usize,
}

/// `mosaicml/mpt-1b-redpajama-200b` (and its OpenFlamingo fork): `MosaicGPT` remote code.
fn write_mosaic_gpt(dir: &Path, layers: usize, rng: &mut StdRng) -> Res<LmWeights> {
    let d = LM_WIDTH;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "alibi": true, "alibi_bias_max": 8, "architectures": ["MosaicGPT"],
            "attn_clip_qkv": null, "attn_impl": "torch", "attn_pdrop": 0, "attn_qk_ln": true,
            "attn_uses_sequence_id": false,
            "auto_map": {"AutoConfig": "configuration_mosaic_gpt.MosaicGPTConfig",
                         "AutoModelForCausalLM": "mosaic_gpt.MosaicGPT"},
            "d_model": d, "emb_init_std": null, "emb_init_uniform_lim": null, "emb_pdrop": 0,
            "embedding_fraction": 1.0, "fan_mode": "fan_in", "init_device": "cpu",
            "init_div_is_residual": true, "init_gain": 0, "init_nonlinearity": "relu",
            "init_std": 0.02, "logit_scale": null, "low_precision_layernorm": true,
            "max_seq_len": LM_POSITIONS, "mlp_ratio": 4, "model_type": "mosaic_gpt",
            "n_heads": LM_HEADS, "n_layers": layers, "no_bias": true,
            "param_init_fn": "kaiming_normal_", "prefix_lm": false, "resid_pdrop": 0,
            "softmax_scale": null, "tokenizer_name": "EleutherAI/gpt-neox-20b",
            "torch_dtype": "float32", "transformers_version": "4.27.4", "use_cache": false,
            "verbose": 0, "vocab_size": LM_VOCAB
        }),
    )?;
    let mut s = StateDict::default();
    s.f32("transformer.wte.weight", randn(rng, &[LM_VOCAB, d], 0.5)?);
    for i in 0..layers {
        let k = |n: &str| format!("transformer.blocks.{i}.{n}");
        // `no_bias` removes every bias parameter, the LayerNorms' included.
        s.f32(k("ln_1.weight"), norm_weight(rng, d)?);
        s.f32(k("attn.Wqkv.weight"), randn(rng, &[3 * d, d], 0.12)?);
        s.f32(k("attn.q_ln.weight"), norm_weight(rng, d)?);
        s.f32(k("attn.k_ln.weight"), norm_weight(rng, d)?);
        s.f32(k("attn.out_proj.weight"), randn(rng, &[d, d], 0.12)?);
        s.f32(k("ln_2.weight"), norm_weight(rng, d)?);
        s.f32(k("mlp.mlp_up.weight"), randn(rng, &[4 * d, d], 0.12)?);
        s.f32(k("mlp.mlp_down.weight"), randn(rng, &[d, 4 * d], 0.06)?);
    }
    s.f32("transformer.ln_f.weight", norm_weight(rng, d)?);
    save_torch(&s, &dir.join("pytorch_model.bin"))?;
    Ok(LmWeights {
        embeddings: vec![(
            "transformer.wte.weight".into(),
            s.get("transformer.wte.weight").ok_or("no wte")?.clone(),
        )],
        head_dim: d / LM_HEADS,
    })
}

/// `togethercomputer/RedPajama-INCITE-{Base,Instruct}-3B-v1`: `GPTNeoXForCausalLM` saved by
/// transformers 4.28, persistent buffers included.
fn write_redpajama(dir: &Path, layers: usize, rng: &mut StdRng) -> Res<LmWeights> {
    let d = LM_WIDTH;
    let hd = d / LM_HEADS;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
            "hidden_act": "gelu", "hidden_size": d, "initializer_range": 0.02,
            "intermediate_size": 4 * d, "layer_norm_eps": 1e-5,
            "max_position_embeddings": LM_POSITIONS, "model_type": "gpt_neox",
            "num_attention_heads": LM_HEADS, "num_hidden_layers": layers,
            "rotary_emb_base": 10000, "rotary_pct": 1.0, "tie_word_embeddings": false,
            "torch_dtype": "float32", "transformers_version": "4.28.1", "use_cache": true,
            "use_parallel_residual": false, "vocab_size": LM_VOCAB
        }),
    )?;
    let mut s = StateDict::default();
    s.f32("gpt_neox.embed_in.weight", randn(rng, &[LM_VOCAB, d], 0.5)?);
    for i in 0..layers {
        let k = |n: &str| format!("gpt_neox.layers.{i}.{n}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            s.f32(k(&format!("{n}.weight")), norm_weight(rng, d)?);
            s.f32(k(&format!("{n}.bias")), randn(rng, &[d], 0.05)?);
        }
        for (n, t) in mask_buffers(hd)? {
            match n {
                "attention.bias" => s.bool(k(n), t),
                _ => s.f32(k(n), t),
            }
        }
        s.f32(
            k("attention.query_key_value.weight"),
            randn(rng, &[3 * d, d], 0.12)?,
        );
        s.f32(
            k("attention.query_key_value.bias"),
            randn(rng, &[3 * d], 0.05)?,
        );
        s.f32(k("attention.dense.weight"), randn(rng, &[d, d], 0.12)?);
        s.f32(k("attention.dense.bias"), randn(rng, &[d], 0.05)?);
        s.f32(
            k("mlp.dense_h_to_4h.weight"),
            randn(rng, &[4 * d, d], 0.12)?,
        );
        s.f32(k("mlp.dense_h_to_4h.bias"), randn(rng, &[4 * d], 0.05)?);
        s.f32(
            k("mlp.dense_4h_to_h.weight"),
            randn(rng, &[d, 4 * d], 0.06)?,
        );
        s.f32(k("mlp.dense_4h_to_h.bias"), randn(rng, &[d], 0.05)?);
    }
    s.f32("gpt_neox.final_layer_norm.weight", norm_weight(rng, d)?);
    s.f32("gpt_neox.final_layer_norm.bias", randn(rng, &[d], 0.05)?);
    s.f32("embed_out.weight", randn(rng, &[LM_VOCAB, d], 0.3)?);
    save_torch(&s, &dir.join("pytorch_model.bin"))?;
    let emb = |k: &str| -> Res<(String, Tensor)> {
        Ok((k.to_string(), s.get(k).ok_or("missing embedding")?.clone()))
    };
    Ok(LmWeights {
        embeddings: vec![emb("gpt_neox.embed_in.weight")?, emb("embed_out.weight")?],
        head_dim: hd,
    })
}

/// GPT-NeoX (transformers 4.28) attention buffers: the causal mask `bias` (bool
/// `[1, 1, P, P]`), `masked_bias` (−1e9) and the rotary `inv_freq`.
fn mask_buffers(head_dim: usize) -> Res<Vec<(&'static str, Tensor)>> {
    let p = LM_POSITIONS;
    let tril: Vec<u8> = (0..p * p).map(|i| (i % p <= i / p) as u8).collect();
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    Ok(vec![
        (
            "attention.bias",
            Tensor::from_vec(tril, (1, 1, p, p), &Device::Cpu)?,
        ),
        ("attention.masked_bias", Tensor::new(-1e9f32, &Device::Cpu)?),
        (
            "attention.rotary_emb.inv_freq",
            Tensor::from_vec(inv_freq, head_dim / 2, &Device::Cpu)?,
        ),
    ])
}

/// `anas-awadalla/mpt-7b` (MPT-7B remote code at rev 68e1a8e): model_type "mpt", two
/// pickle shards and `pytorch_model.bin.index.json`.
fn write_mpt7b(dir: &Path, layers: usize, rng: &mut StdRng) -> Res<LmWeights> {
    let d = LM_WIDTH;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "architectures": ["MPTForCausalLM"],
            "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_impl": "torch",
                            "attn_pdrop": 0, "attn_type": "multihead_attention",
                            "attn_uses_sequence_id": false, "clip_qkv": null, "prefix_lm": false,
                            "qk_ln": false, "softmax_scale": null},
            "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig",
                         "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
            "d_model": d, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4,
            "init_config": {"emb_init_std": null, "emb_init_uniform_lim": null, "fan_mode": "fan_in",
                            "init_div_is_residual": true, "init_gain": 0, "init_nonlinearity": "relu",
                            "init_std": 0.02, "name": "kaiming_normal_", "verbose": 0},
            "init_device": "cpu", "learned_pos_emb": true, "logit_scale": null,
            "max_seq_len": LM_POSITIONS, "model_type": "mpt", "n_heads": LM_HEADS,
            "n_layers": layers, "no_bias": true, "norm_type": "low_precision_layernorm",
            "resid_pdrop": 0, "tokenizer_name": "EleutherAI/gpt-neox-20b",
            "torch_dtype": "float32", "transformers_version": "4.28.1", "use_cache": false,
            "verbose": 0, "vocab_size": LM_VOCAB
        }),
    )?;
    let mut shards = [StateDict::default(), StateDict::default()];
    shards[0].f32("transformer.wte.weight", randn(rng, &[LM_VOCAB, d], 0.5)?);
    for i in 0..layers {
        let s = &mut shards[(i >= layers / 2) as usize];
        let k = |n: &str| format!("transformer.blocks.{i}.{n}");
        s.f32(k("norm_1.weight"), norm_weight(rng, d)?);
        s.f32(k("attn.Wqkv.weight"), randn(rng, &[3 * d, d], 0.12)?);
        s.f32(k("attn.out_proj.weight"), randn(rng, &[d, d], 0.12)?);
        s.f32(k("norm_2.weight"), norm_weight(rng, d)?);
        s.f32(k("ffn.up_proj.weight"), randn(rng, &[4 * d, d], 0.12)?);
        s.f32(k("ffn.down_proj.weight"), randn(rng, &[d, 4 * d], 0.06)?);
    }
    shards[1].f32("transformer.norm_f.weight", norm_weight(rng, d)?);
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, s) in shards.iter().enumerate() {
        let name = format!("pytorch_model-{:05}-of-00002.bin", i + 1);
        for (k, t) in &s.entries {
            let Storage::F32(t) = t else { continue };
            total += t.elem_count() * 4;
            weight_map.insert(k.clone(), serde_json::json!(name));
        }
        save_torch(s, &dir.join(&name))?;
    }
    write_json(
        &dir.join("pytorch_model.bin.index.json"),
        &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    Ok(LmWeights {
        embeddings: vec![(
            "transformer.wte.weight".into(),
            shards[0]
                .get("transformer.wte.weight")
                .ok_or("no wte")?
                .clone(),
        )],
        head_dim: d / LM_HEADS,
    })
}

// ---------------------------------------------------------------------------------------
// checkpoint.pt

/// The release's `checkpoint.pt`: the trainer's filtered state dict (spec §7.7, §8.1) —
/// perceiver, gated cross-attention blocks under `lang_encoder.<layers>.<i>.`, the LM's
/// embedding matrices resized to `len(tokenizer)`, and whatever buffers survived the filter.
fn write_checkpoint(release: &Release, lm: &LmWeights, path: &Path, rng: &mut StdRng) -> Res<()> {
    let (v, d) = (VISION_WIDTH, LM_WIDTH);
    let inner = 512; // 8 heads × 64, whatever the widths (spec §3)
    let mut s = StateDict::default();
    s.f32("perceiver.latents", randn(rng, &[64, v], 1.0)?);
    for i in 0..6 {
        let k = |n: &str| format!("perceiver.layers.{i}.{n}");
        for n in ["0.norm_media", "0.norm_latents"] {
            s.f32(k(&format!("{n}.weight")), norm_weight(rng, v)?);
            s.f32(k(&format!("{n}.bias")), randn(rng, &[v], 0.05)?);
        }
        s.f32(k("0.to_q.weight"), randn(rng, &[inner, v], 0.1)?);
        s.f32(k("0.to_kv.weight"), randn(rng, &[2 * inner, v], 0.1)?);
        s.f32(k("0.to_out.weight"), randn(rng, &[v, inner], 0.03)?);
        s.f32(k("1.0.weight"), norm_weight(rng, v)?);
        s.f32(k("1.0.bias"), randn(rng, &[v], 0.05)?);
        s.f32(k("1.1.weight"), randn(rng, &[4 * v, v], 0.1)?);
        s.f32(k("1.3.weight"), randn(rng, &[v, 4 * v], 0.05)?);
    }
    s.f32("perceiver.norm.weight", norm_weight(rng, v)?);
    s.f32("perceiver.norm.bias", randn(rng, &[v], 0.05)?);

    // The LM's embeddings after `resize_token_embeddings(len(tokenizer))`: the first rows.
    // Releases that trained the new tokens' input rows changed exactly those two rows.
    let mut embeddings = Vec::new();
    for (i, (key, table)) in lm.embeddings.iter().enumerate() {
        let mut t = table.narrow(0, 0, RESIZED_VOCAB)?;
        if release.trained_embedding_rows && i == 0 {
            let rows = randn(rng, &[2, d], 0.5)?;
            t = Tensor::cat(
                &[
                    &t.narrow(0, 0, END_OF_CHUNK_ID)?,
                    &rows,
                    &t.narrow(0, MEDIA_ID + 1, RESIZED_VOCAB - MEDIA_ID - 1)?,
                ],
                0,
            )?;
        }
        embeddings.push((format!("lang_encoder.{key}"), t));
    }
    let (first, rest) = embeddings.split_at(1);
    s.f32(first[0].0.clone(), first[0].1.clone());

    let layers = release.decoder_layers_path();
    let plan = release.cross_attn_layers();
    for i in 0..release.lm_layers {
        let k = |n: &str| format!("lang_encoder.{layers}.{i}.{n}");
        if plan.contains(&i) {
            let x = |n: &str| k(&format!("gated_cross_attn_layer.{n}"));
            // Non-zero gates (trained), so that cross-attention shows in the logits.
            s.f32(x("attn_gate"), uniform(rng, &[1], -1.0, 1.0)?);
            s.f32(x("ff_gate"), uniform(rng, &[1], -1.0, 1.0)?);
            s.f32(x("attn.norm.weight"), norm_weight(rng, d)?);
            s.f32(x("attn.norm.bias"), randn(rng, &[d], 0.05)?);
            s.f32(x("attn.to_q.weight"), randn(rng, &[inner, d], 0.1)?);
            s.f32(x("attn.to_kv.weight"), randn(rng, &[2 * inner, v], 0.1)?);
            s.f32(x("attn.to_out.weight"), randn(rng, &[d, inner], 0.05)?);
            s.f32(x("ff.0.weight"), norm_weight(rng, d)?);
            s.f32(x("ff.0.bias"), randn(rng, &[d], 0.05)?);
            s.f32(x("ff.1.weight"), randn(rng, &[4 * d, d], 0.1)?);
            s.f32(x("ff.3.weight"), randn(rng, &[d, 4 * d], 0.05)?);
        }
        if release.mask_buffers_in_checkpoint {
            // Buffers are not parameters, so the trainer's filter kept them (spec §8.2).
            for (n, t) in mask_buffers(lm.head_dim)? {
                let key = k(&format!("decoder_layer.{n}"));
                match n {
                    "attention.bias" => s.bool(key, t),
                    _ => s.f32(key, t),
                }
            }
        }
    }
    for (key, t) in rest {
        s.f32(key.clone(), t.clone());
    }
    save_torch(&s, path)
}
