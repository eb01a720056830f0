//! Builds the package's default model (`models/default`) end to end, the way OpenFlamingo is
//! built but at toy scale and on the CPU: generate shape scenes with captions
//! (`flamingo_core::demo::shapes`) → pretrain a tiny MPT LM on the caption text → pretrain a
//! tiny CLIP vision tower on the images → freeze both → train the Flamingo bridge (Perceiver,
//! gated cross-attention, the `<image>` / `<|endofchunk|>` rows; spec §2.6, §7) with the
//! crate's `Trainer` → reload the written folder and evaluate greedy captioning on 200
//! held-out images, zero-shot and few-shot → write the folder.
//!
//! usage: cargo run --release -p flamingo-core --example train_demo -- OUT_DIR [--quick]
//!        [--set key=value]…
//!
//! Every random choice is seeded and the arithmetic runs on one thread, so the weights are
//! reproducible (the timings written beside them are not). `--quick` runs a few steps of
//! each stage, to check the pipeline; `--set visionSteps=600` (any field of `Schedule`)
//! changes one setting, for experiments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use flamingo_core::demo::shapes::{self, Caption, Sample, IMAGE_SIZE};
use flamingo_core::demo::{
    self, exact_match, tokenizer_config_json, tokenizer_json, CaptionRequest, DemoModel, Manifest,
};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{shifted_cross_entropy, Flamingo, ForwardInput, LoadSpec};
use flamingo_core::image::{PreprocessConfig, CLIP_MEAN, CLIP_STD};
use flamingo_core::io::Weights;
use flamingo_core::lm::{self, AttentionContext, CausalLm, LmLoadOptions};
use flamingo_core::nn::{LayerNorm, Linear};
use flamingo_core::text::prompts::{caption_prompt, interleaved_labels, pair_labels};
use flamingo_core::text::{FlamingoTokenizer, PaddingSide};
use flamingo_core::train::{
    AdamW, AdamWConfig, MicroBatch, ScheduleConfig, ScheduleKind, TrainConfig, Trainer,
    WeightedInput,
};
use flamingo_core::vision::clip::{ClipVision, ClipVisionConfig, VisionOptions};
use flamingo_core::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// Seeds: one per purpose, so that changing one stage leaves the others' data alone. The
// held-out images come from their own seed, never drawn for training.
const SEED_INIT: u64 = 20_231_011;
const SEED_LM_TEXT: u64 = 1;
const SEED_VISION_TRAIN: u64 = 2;
const SEED_BRIDGE_TRAIN: u64 = 3;
const SEED_EVAL: u64 = 1_000_003;
const SEED_FEW_SHOT_DEMOS: u64 = 1_000_033;
const SEED_SAMPLES: u64 = 7;

// Backbones: a CLIP ViT (64 wide, 3 layers, 8×8 patches over 64×64 images: 64 tokens) and an
// MPT LM (ALiBi, no biases, tied head: the OpenFlamingo-3B family), 96 wide, 2 layers.
const VISION_WIDTH: usize = 64;
const VISION_LAYERS: usize = 3;
const VISION_HEADS: usize = 4;
const PATCH: usize = 8;
const LM_WIDTH: usize = 96;
const LM_LAYERS: usize = 2;
const LM_HEADS: usize = 4;
const EVERY_N_LAYERS: usize = 1;

/// The bridge is the reference's architecture with smaller sizes (the reference's 6×64
/// latents over 256 tokens would dwarf these backbones).
fn perceiver_config() -> PerceiverConfig {
    PerceiverConfig {
        depth: 2,
        heads: 4,
        dim_head: 32,
        num_latents: 16,
        ff_mult: 4,
    }
}

fn cross_attn_config() -> CrossAttnConfig {
    CrossAttnConfig {
        heads: 4,
        dim_head: 32,
        ff_mult: 4,
        only_attend_immediate_media: true,
    }
}

/// Steps and batch sizes of the three training stages.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Schedule {
    lm_steps: u64,
    lm_batch: usize,
    lm_lr: f64,
    vision_steps: u64,
    vision_batch: usize,
    vision_lr: f64,
    bridge_steps: u64,
    bridge_pairs: usize,
    bridge_docs: usize,
    bridge_images_per_doc: usize,
    bridge_lr: f64,
}

const FULL: Schedule = Schedule {
    lm_steps: 150,
    lm_batch: 32,
    lm_lr: 3e-3,
    vision_steps: 1200,
    vision_batch: 64,
    vision_lr: 1e-3,
    bridge_steps: 800,
    bridge_pairs: 32,
    bridge_docs: 8,
    bridge_images_per_doc: 3,
    bridge_lr: 1e-3,
};

const QUICK: Schedule = Schedule {
    lm_steps: 5,
    vision_steps: 5,
    bridge_steps: 5,
    ..FULL
};

const EVAL_IMAGES: usize = 200;
const SAMPLE_FILES: usize = 8;

fn main() {
    if let Err(e) = run() {
        eprintln!("train_demo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    // One thread: the arithmetic (and so the weights) then does not depend on the machine's
    // core count, and on a shared machine it is also faster than threads that wait for CPUs.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let Some(out) = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--set"))
        .map(|(_, a)| a)
    else {
        eprintln!("usage: train_demo OUT_DIR [--quick] [--set key=value]…");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let mut sched = if quick { QUICK } else { FULL };
    // `--set visionSteps=600`: overrides for experiments (the committed model uses FULL).
    for pair in args.windows(2).filter(|w| w[0] == "--set").map(|w| &w[1]) {
        let mut value = serde_json::to_value(sched).expect("the schedule serialises");
        let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed: serde_json::Value = serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
        if value.get(key).is_none() || parsed.is_null() {
            eprintln!("--set {pair}: expected one of {value} as key=number");
            std::process::exit(2);
        }
        value[key] = parsed;
        sched = serde_json::from_value(value).unwrap_or_else(|e| {
            eprintln!("--set {pair}: {e}");
            std::process::exit(2);
        });
    }
    let dev = Device::Cpu;
    let clock = Clock::start();
    let mut rng = StdRng::seed_from_u64(SEED_INIT);

    // Tokenizer first: its length fixes the LM's vocabulary and the special ids.
    let lm_dir = out.join("lm");
    let vision_dir = out.join("vision");
    create_dir(&lm_dir)?;
    create_dir(&vision_dir)?;
    write_json(&lm_dir.join("tokenizer.json"), &tokenizer_json())?;
    write_json(
        &lm_dir.join("tokenizer_config.json"),
        &tokenizer_config_json(),
    )?;
    let tok = FlamingoTokenizer::from_dir(&lm_dir)?;

    println!("== 1/4 pretraining the LM on caption text");
    let t = Instant::now();
    let lm_stats = pretrain_lm(&tok, &lm_dir, &sched, &mut rng, &dev)?;
    let lm_seconds = t.elapsed().as_secs_f64();

    println!("== 2/4 pretraining the vision tower on the images");
    let t = Instant::now();
    let vision_stats = pretrain_vision(&vision_dir, &sched, &mut rng, &dev)?;
    let vision_seconds = t.elapsed().as_secs_f64();

    println!("== 3/4 training the bridge (backbones frozen)");
    let t = Instant::now();
    let bridge_stats = train_bridge(&tok, &out, &sched, &dev)?;
    let bridge_seconds = t.elapsed().as_secs_f64();
    let train_cpu = clock.cpu_seconds();
    let train_wall = clock.wall_seconds();

    println!("== 4/4 evaluating the written model on {EVAL_IMAGES} held-out images");
    write_manifest(&out, &tok, serde_json::Map::new())?;
    let t = Instant::now();
    let model = DemoModel::load(&out)?;
    let eval = evaluate(&model, if quick { 20 } else { EVAL_IMAGES })?;
    let eval_seconds = t.elapsed().as_secs_f64();
    println!(
        "exact match: zero-shot {:.1}%, few-shot (2 demos) {:.1}%",
        100.0 * eval.zero_shot,
        100.0 * eval.few_shot
    );
    write_samples(&out)?;

    let mut extra = serde_json::Map::new();
    extra.insert(
        "prompt".into(),
        serde_json::json!({
            "caption": "<image>Output:",
            "fewShot": "<image>Output:{caption}<|endofchunk|>\n… then <image>Output:",
            "postprocess": "new tokens decoded without special tokens, cut at \"Output\" (the reference's postprocess_caption)",
            "maxNewTokens": 8
        }),
    );
    extra.insert(
        "metrics".into(),
        serde_json::json!({
            "task": "exact match of the normalised caption (lower case, single spaces, no final full stop), greedy decoding",
            "heldOutImages": eval.n,
            "heldOutSeed": SEED_EVAL,
            "zeroShotExactMatch": eval.zero_shot,
            "fewShotExactMatch": eval.few_shot,
            "fewShotDemos": 2,
            "zeroShotErrors": eval.zero_shot_errors,
            "pretraining": {"lm": lm_stats, "vision": vision_stats},
            "bridge": bridge_stats,
        }),
    );
    extra.insert(
        "training".into(),
        serde_json::json!({
            "command": reproduce_command(&args),
            "device": "cpu",
            "threads": 1,
            "machineCpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "schedule": sched,
            "seconds": {
                "lmPretraining": round2(lm_seconds),
                "visionPretraining": round2(vision_seconds),
                "bridge": round2(bridge_seconds),
                "trainingWall": round2(train_wall),
                "trainingCpu": train_cpu.map(round2),
                "evaluation": round2(eval_seconds),
            },
            "loadAverageAtStart": clock.load_at_start,
            "loadAverageAtEnd": load_average(),
            "note": "timings vary from run to run and with machine load; the weights do not",
        }),
    );
    write_manifest(&out, &tok, extra)?;
    println!(
        "training took {:.0} s wall{} (load average at start {:?}); wrote {}",
        train_wall,
        train_cpu
            .map(|c| format!(", {c:.0} s CPU"))
            .unwrap_or_default(),
        clock.load_at_start,
        out.display()
    );
    Ok(())
}

/// The command that rebuilds this folder as `models/default`, with this run's options.
fn reproduce_command(args: &[String]) -> String {
    let options: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--set")
        .flat_map(|w| ["--set", w[1].as_str()])
        .chain(args.iter().filter(|a| *a == "--quick").map(String::as_str))
        .collect();
    let mut command =
        "cargo run --release -p flamingo-core --example train_demo -- models/default".to_string();
    for o in options {
        command.push(' ');
        command.push_str(o);
    }
    command
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| flamingo_core::Error::io(dir, e))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise") + "\n";
    std::fs::write(path, text).map_err(|e| flamingo_core::Error::io(path, e))
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    Ok(candle_core::safetensors::save(tensors, path)?)
}

fn write_manifest(
    out: &Path,
    tok: &FlamingoTokenizer,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let manifest = Manifest {
        vision: "vision".into(),
        lm: "lm".into(),
        tokenizer: "lm/tokenizer.json".into(),
        checkpoint: Some("checkpoint.safetensors".into()),
        cross_attention: demo::CrossAttentionPlan::EveryNLayers {
            every_n_layers: EVERY_N_LAYERS,
        },
        tokens: demo::ManifestTokens {
            media: tok.media_token_id(),
            end_of_chunk: tok.end_of_chunk_token_id(),
        },
        vocab_size: Some(tok.len()),
        perceiver: perceiver_config(),
        cross_attention_block: cross_attn_config(),
        image_size: IMAGE_SIZE,
        preprocess: demo::ManifestPreprocess {
            mean: CLIP_MEAN,
            std: CLIP_STD,
        },
        extra,
    };
    let value = serde_json::to_value(&manifest).expect("the manifest serialises");
    write_json(&out.join("flamingo.json"), &value)
}

/// Held-out images (from a seed no stage trains on) as PNG files with their captions in
/// `samples.json`, so that the TypeScript demo and the README caption real files.
fn write_samples(out: &Path) -> Result<()> {
    let dir = out.join("samples");
    create_dir(&dir)?;
    let mut index = Vec::new();
    for (i, s) in shapes::samples(SEED_SAMPLES, 0, SAMPLE_FILES, IMAGE_SIZE)
        .into_iter()
        .enumerate()
    {
        let name = format!("{i:02}.png");
        let path = dir.join(&name);
        let file = std::fs::File::create(&path).map_err(|e| flamingo_core::Error::io(&path, e))?;
        let mut enc =
            png::Encoder::new(std::io::BufWriter::new(file), s.size as u32, s.size as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut w| w.write_image_data(&s.pixels))
            .map_err(|e| flamingo_core::Error::io(&path, std::io::Error::other(e)))?;
        index.push(serde_json::json!({"file": name, "caption": s.caption.text()}));
    }
    write_json(&dir.join("samples.json"), &serde_json::Value::Array(index))
}

// ---------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------

/// Seeded normal values (Box–Muller): candle's CPU generator cannot be seeded.
fn randn(rng: &mut StdRng, shape: &[usize], std: f32, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, dev)?)
}

fn filled(n: usize, v: f32, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::full(v, n, dev)?)
}

/// Named trainable tensors, kept in a fixed (sorted) order for the optimizer.
struct Params {
    vars: Vec<(String, Var)>,
}

impl Params {
    fn new(tensors: HashMap<String, Tensor>) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
            .collect::<Result<_>>()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { vars })
    }

    /// The current values, for building a module (it then tracks gradients to the vars).
    fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Plain copies, for saving.
    fn detached(&self, keep: impl Fn(&str) -> bool) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    fn optimizer(&self, lr: f64, weight_decay: f64) -> Result<AdamW> {
        AdamW::new(
            AdamWConfig {
                lr,
                weight_decay,
                ..AdamWConfig::default()
            },
            self.vars
                .iter()
                .map(|(k, v)| {
                    // No decay on norms, biases and embeddings (the usual transformer recipe).
                    let decays = k.ends_with("weight")
                        && !k.contains("norm")
                        && !k.contains("wte")
                        && !k.contains("embedding");
                    (
                        k.clone(),
                        v.clone(),
                        if decays { weight_decay } else { 0.0 },
                    )
                })
                .collect(),
        )
    }

    /// Backward, clip the global norm to 1, one AdamW step at `lr`. Returns the loss.
    fn step(&self, opt: &mut AdamW, loss: &Tensor, lr: f64) -> Result<f32> {
        let value = loss.to_scalar::<f32>()?;
        let grads = loss.backward()?;
        let mut gs: Vec<Option<Tensor>> = self
            .vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        let norm2: f32 = gs
            .iter()
            .flatten()
            .map(|g| g.sqr()?.sum_all()?.to_scalar::<f32>())
            .sum::<candle_core::Result<f32>>()?;
        let norm = norm2.sqrt();
        if norm > 1.0 {
            let scale = 1.0 / (norm as f64 + 1e-6);
            for g in gs.iter_mut().flatten() {
                *g = (&*g * scale)?;
            }
        }
        opt.step(&gs, lr)?;
        Ok(value)
    }
}

fn cosine(steps: u64, warmup: u64) -> ScheduleConfig {
    ScheduleConfig {
        kind: ScheduleKind::Cosine,
        warmup_steps: warmup,
        total_steps: Some(steps),
        ..ScheduleConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// 1. The LM, pretrained on caption text
// ---------------------------------------------------------------------------------------

fn lm_config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["MptForCausalLM"], "model_type": "mpt", "d_model": LM_WIDTH,
        "n_heads": LM_HEADS, "n_layers": LM_LAYERS, "expansion_ratio": 4, "max_seq_len": 512,
        "vocab_size": vocab, "no_bias": true, "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_type": "multihead_attention",
                        "qk_ln": false, "clip_qkv": null, "softmax_scale": null},
        "eos_token_id": 0, "pad_token_id": null, "use_cache": true
    })
}

fn lm_init(vocab: usize, rng: &mut StdRng, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let d = LM_WIDTH;
    let mut t = HashMap::new();
    t.insert(
        "transformer.wte.weight".to_string(),
        randn(rng, &[vocab, d], 0.02, dev)?,
    );
    // GPT-2-style scaled init of the residual projections keeps the stack stable.
    let resid = 0.02 / (2.0 * LM_LAYERS as f32).sqrt();
    for i in 0..LM_LAYERS {
        let k = |s: &str| format!("transformer.blocks.{i}.{s}");
        t.insert(k("norm_1.weight"), filled(d, 1.0, dev)?);
        t.insert(k("norm_2.weight"), filled(d, 1.0, dev)?);
        t.insert(k("attn.Wqkv.weight"), randn(rng, &[3 * d, d], 0.02, dev)?);
        t.insert(k("attn.out_proj.weight"), randn(rng, &[d, d], resid, dev)?);
        t.insert(k("ffn.up_proj.weight"), randn(rng, &[4 * d, d], 0.02, dev)?);
        t.insert(
            k("ffn.down_proj.weight"),
            randn(rng, &[d, 4 * d], resid, dev)?,
        );
    }
    t.insert(
        "transformer.norm_f.weight".to_string(),
        filled(d, 1.0, dev)?,
    );
    Ok(t)
}

/// Text in the formats the Flamingo model will see, with the images left out: one to three
/// chunks `"<image>Output:{caption}<|endofchunk|>"` joined by `"\n"`, then EOS.
fn lm_text(rng: &mut StdRng, eos: &str) -> String {
    let chunks = rng.random_range(1..=3);
    let mut text: Vec<String> = Vec::new();
    for _ in 0..chunks {
        let c = Caption::from_index(rng.random_range(0..shapes::NUM_CAPTIONS));
        text.push(caption_prompt(Some(&c.text())));
    }
    text.join("\n") + eos
}

fn lm_logits(lm: &dyn CausalLm, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Tensor> {
    let dev = Device::Cpu;
    let ctx = AttentionContext::new(mask, 0, DType::F32, &dev)?;
    let (b, t) = (ids.len(), ids[0].len());
    let ids_t = Tensor::from_vec(ids.concat(), (b, t), &dev)?;
    let mut h = lm.embed(&ids_t, &ctx)?;
    for i in 0..lm.info().num_layers {
        h = lm.layer(i, &h, &ctx, None)?;
    }
    lm.head(&h)
}

fn build_lm(
    cfg: &serde_json::Value,
    tensors: HashMap<String, Tensor>,
) -> Result<Box<dyn CausalLm>> {
    let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    lm::load_lm_from_config(
        Path::new("lm/config.json (demo)"),
        cfg,
        &w,
        &LmLoadOptions::default(),
    )
}

fn pretrain_lm(
    tok: &FlamingoTokenizer,
    lm_dir: &Path,
    sched: &Schedule,
    init_rng: &mut StdRng,
    dev: &Device,
) -> Result<serde_json::Value> {
    let cfg = lm_config(tok.len());
    let params = Params::new(lm_init(tok.len(), init_rng, dev)?)?;
    let mut opt = params.optimizer(sched.lm_lr, 0.01)?;
    let schedule = cosine(sched.lm_steps, sched.lm_steps / 10);
    let mut text_rng = StdRng::seed_from_u64(SEED_LM_TEXT);
    let pad = tok.pad_token_id();
    let mut last = f32::NAN;
    let started = Clock::start();
    for step in 0..sched.lm_steps {
        let texts: Vec<String> = (0..sched.lm_batch)
            .map(|_| lm_text(&mut text_rng, tok.eos_token()))
            .collect();
        let batch = tok.encode_batch(&texts, PaddingSide::Right, None, false)?;
        let labels = labels_tensor(
            &batch
                .input_ids
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|&t| if t == pad { -100 } else { t as i64 })
                        .collect()
                })
                .collect::<Vec<Vec<i64>>>(),
        )?;
        // Rebuilt every step: loading may fuse or reshape weights into new tensors, which
        // would not see the optimizer's in-place updates of the vars.
        let lm = build_lm(&cfg, params.tensors())?;
        let logits = lm_logits(lm.as_ref(), &batch.input_ids, &batch.attention_mask)?;
        let loss = shifted_cross_entropy(&logits, &labels)?;
        last = params.step(&mut opt, &loss, schedule.lr(sched.lm_lr, step))?;
        if step % 50 == 0 || step + 1 == sched.lm_steps || sched.lm_steps < 20 {
            println!(
                "  lm step {step:4}  loss {last:.4}  {}",
                started.per_step(step + 1)
            );
        }
    }
    // Check: sampled continuations of the caption prompt follow the grammar.
    let lm = build_lm(&cfg, params.detached(|_| true))?;
    let grammatical = sample_grammar_rate(lm.as_ref(), tok, 200)?;
    println!(
        "  LM samples after \"<image>Output:\" that parse as captions: {:.1}%",
        100.0 * grammatical
    );
    write_json(&lm_dir.join("config.json"), &cfg)?;
    save_tensors(
        &params.detached(|_| true),
        &lm_dir.join("model.safetensors"),
    )?;
    Ok(serde_json::json!({
        "steps": sched.lm_steps, "finalLoss": round4(last as f64),
        "sampledCaptionsParsing": grammatical
    }))
}

/// Samples `n` continuations of `"<image>Output:"` (temperature 1) up to `<|endofchunk|>`
/// and returns the fraction that parse as captions of the grammar.
fn sample_grammar_rate(lm: &dyn CausalLm, tok: &FlamingoTokenizer, n: usize) -> Result<f64> {
    let mut rng = StdRng::seed_from_u64(SEED_LM_TEXT + 100);
    let prompt = tok.encode(&caption_prompt(None), false)?;
    let mut rows = vec![prompt.clone(); n];
    for _ in 0..5 {
        let mask = vec![vec![1u32; rows[0].len()]; n];
        let logits = lm_logits(lm, &rows, &mask)?;
        let t = rows[0].len();
        let last = flamingo_core::nn::softmax_last_dim(
            &logits.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?,
        )?;
        let probs: Vec<Vec<f32>> = last.to_vec2()?;
        for (row, p) in rows.iter_mut().zip(probs) {
            let u: f32 = rng.random();
            let mut acc = 0.0;
            let mut pick = p.len() - 1;
            for (i, q) in p.iter().enumerate() {
                acc += q;
                if u < acc {
                    pick = i;
                    break;
                }
            }
            row.push(pick as u32);
        }
    }
    let eoc = tok.end_of_chunk_token_id();
    let ok = rows
        .iter()
        .filter(|r| {
            let new = &r[prompt.len()..];
            let Some(end) = new.iter().position(|&t| t == eoc) else {
                return false;
            };
            tok.decode(&new[..end], true)
                .ok()
                .and_then(|s| Caption::parse(&s))
                .is_some()
        })
        .count();
    Ok(ok as f64 / n as f64)
}

fn labels_tensor(rows: &[Vec<i64>]) -> Result<Tensor> {
    let (b, t) = (rows.len(), rows[0].len());
    Ok(Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu)?)
}

// ---------------------------------------------------------------------------------------
// 2. The vision tower, pretrained to recognise count, colour and shape
// ---------------------------------------------------------------------------------------

fn vision_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
        "hidden_size": VISION_WIDTH, "intermediate_size": 4 * VISION_WIDTH,
        "num_hidden_layers": VISION_LAYERS, "num_attention_heads": VISION_HEADS,
        "image_size": IMAGE_SIZE, "patch_size": PATCH, "num_channels": 3,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": VISION_WIDTH
    })
}

const HEADS: [(&str, usize); 3] = [
    ("count", 3),
    ("colour", shapes::Colour::ALL.len()),
    ("shape", shapes::Shape::ALL.len()),
];

/// Per-patch heads: `patch`, the shape covering the patch's centre (0: background), and
/// `centre`, whether an object's centre falls in the patch.
const PATCH_HEADS: [(&str, usize); 2] = [("patch", 1 + shapes::Shape::ALL.len()), ("centre", 2)];

fn vision_init(rng: &mut StdRng, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let (d, p) = (VISION_WIDTH, PATCH);
    let patches = (IMAGE_SIZE / p) * (IMAGE_SIZE / p);
    let mut t = HashMap::new();
    let k = |s: &str| format!("vision_model.{s}");
    t.insert(
        k("embeddings.patch_embedding.weight"),
        randn(rng, &[d, 3, p, p], 0.02, dev)?,
    );
    t.insert(
        k("embeddings.class_embedding"),
        randn(rng, &[d], 0.02, dev)?,
    );
    t.insert(
        k("embeddings.position_embedding.weight"),
        randn(rng, &[patches + 1, d], 0.02, dev)?,
    );
    for n in ["pre_layrnorm", "post_layernorm"] {
        t.insert(k(&format!("{n}.weight")), filled(d, 1.0, dev)?);
        t.insert(k(&format!("{n}.bias")), filled(d, 0.0, dev)?);
    }
    let resid = 0.02 / (2.0 * VISION_LAYERS as f32).sqrt();
    for i in 0..VISION_LAYERS {
        let l = |s: &str| k(&format!("encoder.layers.{i}.{s}"));
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            let std = if n == "out_proj" { resid } else { 0.02 };
            t.insert(
                l(&format!("self_attn.{n}.weight")),
                randn(rng, &[d, d], std, dev)?,
            );
            t.insert(l(&format!("self_attn.{n}.bias")), filled(d, 0.0, dev)?);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            t.insert(l(&format!("{n}.weight")), filled(d, 1.0, dev)?);
            t.insert(l(&format!("{n}.bias")), filled(d, 0.0, dev)?);
        }
        t.insert(l("mlp.fc1.weight"), randn(rng, &[4 * d, d], 0.02, dev)?);
        t.insert(l("mlp.fc1.bias"), filled(4 * d, 0.0, dev)?);
        t.insert(l("mlp.fc2.weight"), randn(rng, &[d, 4 * d], resid, dev)?);
        t.insert(l("mlp.fc2.bias"), filled(d, 0.0, dev)?);
    }
    // Auxiliary heads (not saved): linear classifiers on the post-layernormed mean of the
    // patch tokens, so the tokens the Perceiver reads must carry all three attributes, and
    // one on every patch token saying which shape has its centre there (if any): dense
    // targets teach the small tower local shape features many times faster than the global
    // labels alone, and make the count readable as "how many tokens hold a centre".
    for (name, classes) in HEADS.iter().chain(&PATCH_HEADS) {
        let (name, classes) = (*name, *classes);
        t.insert(
            format!("head.{name}.weight"),
            randn(rng, &[classes, d], 0.02, dev)?,
        );
        t.insert(format!("head.{name}.bias"), filled(classes, 0.0, dev)?);
    }
    Ok(t)
}

fn preprocess_config() -> PreprocessConfig {
    PreprocessConfig {
        size: IMAGE_SIZE,
        ..PreprocessConfig::default()
    }
}

/// `(N, 3, S, S)` normalised pixels.
fn pixels(samples: &[&Sample]) -> Result<Tensor> {
    let rows: Vec<Vec<&[u8]>> = samples.iter().map(|s| vec![s.pixels.as_slice()]).collect();
    let x = demo::pixel_values(&rows, &preprocess_config())?;
    Ok(x.reshape((samples.len(), 3, IMAGE_SIZE, IMAGE_SIZE))?)
}

/// Logits of the auxiliary heads: per attribute `(N, classes)`, then per patch
/// `(N·patches, 5)`.
fn vision_heads(tensors: HashMap<String, Tensor>, x: &Tensor) -> Result<Vec<Tensor>> {
    let cfg =
        ClipVisionConfig::from_hf_json(Path::new("vision/config.json (demo)"), &vision_config())?;
    let w = Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let vision = ClipVision::load(&cfg, &w, &VisionOptions::default())?;
    let tokens = vision.forward(x)?;
    let norm = LayerNorm::load(
        &w.pp("vision_model"),
        "post_layernorm",
        VISION_WIDTH,
        1e-5,
        true,
    )?;
    let pooled = norm.forward(&tokens.mean(1)?)?;
    let mut logits = HEADS
        .iter()
        .map(|(name, classes)| {
            Linear::load(&w.pp("head"), name, VISION_WIDTH, *classes, true)?.forward(&pooled)
        })
        .collect::<Result<Vec<_>>>()?;
    let (n, p, d) = tokens.dims3()?;
    let normed = norm.forward(&tokens)?;
    for (name, classes) in PATCH_HEADS {
        let per_patch = Linear::load(&w.pp("head"), name, d, classes, true)?.forward(&normed)?;
        logits.push(per_patch.reshape((n * p, classes))?);
    }
    Ok(logits)
}

fn targets(samples: &[&Sample]) -> Result<Vec<Tensor>> {
    let dev = Device::Cpu;
    let of = |f: &dyn Fn(&Caption) -> usize| -> Result<Tensor> {
        let v: Vec<u32> = samples.iter().map(|s| f(&s.caption) as u32).collect();
        Ok(Tensor::from_vec(v, samples.len(), &dev)?)
    };
    // Per patch: 1 + the shape index where the patch's centre lies inside an object (0:
    // background), and 1 where an object's centre falls. Every covered patch is a positive
    // example, so local shape features are learnt from many patches per image, and counting
    // becomes "how many tokens hold a centre".
    let grid = IMAGE_SIZE / PATCH;
    let mut patch = vec![0u32; samples.len() * grid * grid];
    let mut centre = vec![0u32; samples.len() * grid * grid];
    for (i, s) in samples.iter().enumerate() {
        for o in &s.objects {
            for gy in 0..grid {
                for gx in 0..grid {
                    let half = PATCH as f32 / 2.0;
                    let (px, py) = ((gx * PATCH) as f32 + half, (gy * PATCH) as f32 + half);
                    if (px - o.cx).hypot(py - o.cy) <= o.radius {
                        patch[i * grid * grid + gy * grid + gx] =
                            1 + s.caption.shape.index() as u32;
                    }
                }
            }
            let (gx, gy) = (o.cx as usize / PATCH, o.cy as usize / PATCH);
            centre[i * grid * grid + gy.min(grid - 1) * grid + gx.min(grid - 1)] = 1;
        }
    }
    Ok(vec![
        of(&|c| c.count - 1)?,
        of(&|c| c.colour.index())?,
        of(&|c| c.shape.index())?,
        Tensor::from_vec(patch, samples.len() * grid * grid, &dev)?,
        Tensor::from_vec(centre, samples.len() * grid * grid, &dev)?,
    ])
}

/// Accuracy of each auxiliary head on the first `n` held-out images.
fn aux_accuracy(params: &Params, n: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
    let held_out = shapes::samples(SEED_EVAL, 0, n, IMAGE_SIZE);
    let refs: Vec<&Sample> = held_out.iter().collect();
    let logits = vision_heads(params.detached(|_| true), &pixels(&refs)?)?;
    let mut accuracy = serde_json::Map::new();
    let names = HEADS.iter().chain(&PATCH_HEADS).map(|(n, _)| *n);
    for (name, (l, t)) in names.zip(logits.iter().zip(targets(&refs)?)) {
        let hits = l
            .argmax(D::Minus1)?
            .eq(&t)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        accuracy.insert(name.to_string(), serde_json::json!(round4(hits as f64)));
    }
    Ok(accuracy)
}

fn pretrain_vision(
    vision_dir: &Path,
    sched: &Schedule,
    init_rng: &mut StdRng,
    dev: &Device,
) -> Result<serde_json::Value> {
    let params = Params::new(vision_init(init_rng, dev)?)?;
    let mut opt = params.optimizer(sched.vision_lr, 0.01)?;
    let schedule = cosine(sched.vision_steps, sched.vision_steps / 20);
    let mut last = f32::NAN;
    let started = Clock::start();
    for step in 0..sched.vision_steps {
        let batch = shapes::samples(
            SEED_VISION_TRAIN,
            step * sched.vision_batch as u64,
            sched.vision_batch,
            IMAGE_SIZE,
        );
        let refs: Vec<&Sample> = batch.iter().collect();
        let logits = vision_heads(params.tensors(), &pixels(&refs)?)?;
        let mut loss = Tensor::new(0f32, dev)?;
        for (l, t) in logits.iter().zip(targets(&refs)?) {
            loss = (loss + candle_nn::loss::cross_entropy(l, &t)?)?;
        }
        last = params.step(&mut opt, &loss, schedule.lr(sched.vision_lr, step))?;
        if step % 100 == 0 || step + 1 == sched.vision_steps || sched.vision_steps < 20 {
            println!(
                "  vision step {step:4}  loss {last:.4}  {}",
                started.per_step(step + 1)
            );
        }
        if step % 200 == 199 {
            println!("  held-out accuracy: {:?}", aux_accuracy(&params, 100)?);
        }
    }
    // Held-out accuracy of the auxiliary heads (images the bridge is evaluated on).
    let accuracy = aux_accuracy(&params, EVAL_IMAGES)?;
    println!("  held-out accuracy of the auxiliary heads: {accuracy:?}");
    write_json(&vision_dir.join("config.json"), &vision_config())?;
    save_tensors(
        &params.detached(|k| k.starts_with("vision_model.")),
        &vision_dir.join("model.safetensors"),
    )?;
    Ok(serde_json::json!({
        "steps": sched.vision_steps, "finalLoss": round4(last as f64),
        "heldOutAuxiliaryAccuracy": accuracy
    }))
}

// ---------------------------------------------------------------------------------------
// 3. The bridge, trained over the frozen backbones
// ---------------------------------------------------------------------------------------

fn load_fresh(tok: &FlamingoTokenizer, out: &Path, dev: &Device) -> Result<Flamingo> {
    let spec = LoadSpec {
        vision_dir: out.join("vision"),
        lm_dir: out.join("lm"),
        checkpoint: None,
        media_token_id: tok.media_token_id(),
        end_of_chunk_token_id: tok.end_of_chunk_token_id(),
        // The reference's plan, layers i with (i + 1) % n == 0, written so that it still
        // reads as a plan when n is 1.
        cross_attn_layers: (EVERY_N_LAYERS - 1..LM_LAYERS)
            .step_by(EVERY_N_LAYERS)
            .collect(),
        decoder_layers_path: None,
        perceiver: perceiver_config(),
        cross_attn: cross_attn_config(),
        vision_post_layernorm: false,
        vocab_size: Some(tok.len()),
        strict: true,
        init_seed: SEED_INIT,
    };
    Flamingo::load(&spec, dev)
}

/// `B` rows of text over `B × T_img` images, right-padded, with the reference's labels.
fn training_input(
    tok: &FlamingoTokenizer,
    rows: &[Vec<&Sample>],
    interleaved: bool,
) -> Result<ForwardInput> {
    let eos = tok.eos_token();
    let texts: Vec<String> = rows
        .iter()
        .map(|images| {
            images
                .iter()
                .map(|s| caption_prompt(Some(&s.caption.text())))
                .collect::<Vec<_>>()
                .join("\n")
                + eos
        })
        .collect();
    let batch = tok.encode_batch(&texts, PaddingSide::Right, None, false)?;
    let (pad, media, eoc) = (
        tok.pad_token_id(),
        tok.media_token_id(),
        tok.end_of_chunk_token_id(),
    );
    let labels: Vec<Vec<i64>> = batch
        .input_ids
        .iter()
        .map(|ids| {
            if interleaved {
                interleaved_labels(ids, pad, media, eoc)
            } else {
                pair_labels(ids, pad, media)
            }
        })
        .collect();
    let (lang_x, mask) = batch.to_tensors(&Device::Cpu)?;
    let images: Vec<Vec<&[u8]>> = rows
        .iter()
        .map(|r| r.iter().map(|s| s.pixels.as_slice()).collect())
        .collect();
    Ok(ForwardInput {
        vision_x: demo::pixel_values(&images, &preprocess_config())?,
        lang_x,
        attention_mask: Some(mask),
        labels: Some(labels_tensor(&labels)?),
        allow_excess_media_tokens: false,
    })
}

fn train_bridge(
    tok: &FlamingoTokenizer,
    out: &Path,
    sched: &Schedule,
    dev: &Device,
) -> Result<serde_json::Value> {
    let model = load_fresh(tok, out, dev)?;
    let cfg = TrainConfig {
        optimizer: AdamWConfig {
            lr: sched.bridge_lr,
            ..AdamWConfig::default()
        },
        schedule: cosine(sched.bridge_steps, sched.bridge_steps / 20),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, cfg)?;
    println!(
        "  {} trainable parameters (perceiver, {} cross-attention blocks, 2 embedding rows)",
        trainer.parameter_count(),
        trainer.model().cross_attn_layers().len()
    );
    let images_per_step = sched.bridge_pairs + sched.bridge_docs * sched.bridge_images_per_doc;
    let mut last = serde_json::Value::Null;
    let started = Clock::start();
    for step in 0..sched.bridge_steps {
        let images = shapes::samples(
            SEED_BRIDGE_TRAIN,
            step * images_per_step as u64,
            images_per_step,
            IMAGE_SIZE,
        );
        let (pairs, docs) = images.split_at(sched.bridge_pairs);
        let pair_rows: Vec<Vec<&Sample>> = pairs.iter().map(|s| vec![s]).collect();
        let doc_rows: Vec<Vec<&Sample>> = docs
            .chunks(sched.bridge_images_per_doc)
            .map(|c| c.iter().collect())
            .collect();
        // The reference's step: an image–text pair batch (LAION) and an interleaved batch
        // (MMC4, here: few-shot caption documents), each a part of one micro-batch.
        let micro = MicroBatch::new(vec![
            WeightedInput::new(training_input(tok, &pair_rows, false)?, 1.0, "pairs"),
            WeightedInput::new(training_input(tok, &doc_rows, true)?, 1.0, "documents"),
        ]);
        let stats = trainer.step(&[micro])?;
        if step % 50 == 0 || step + 1 == sched.bridge_steps || sched.bridge_steps < 20 {
            let parts: Vec<String> = stats
                .parts
                .iter()
                .map(|p| format!("{} {:.4}", p.dataset, p.loss))
                .collect();
            println!(
                "  bridge step {step:4}  {}  grad norm {:.3}  lr {:.2e}  {}",
                parts.join("  "),
                stats.grad_norm,
                stats.lr,
                started.per_step(step + 1)
            );
        }
        last = serde_json::json!(stats
            .parts
            .iter()
            .map(|p| (p.dataset.clone(), round4(p.loss)))
            .collect::<HashMap<_, _>>());
    }
    trainer.export_checkpoint(&out.join("checkpoint.safetensors"))?;
    Ok(serde_json::json!({
        "steps": sched.bridge_steps,
        "trainableParameters": trainer.parameter_count(),
        "finalLoss": last
    }))
}

// ---------------------------------------------------------------------------------------
// 4. Evaluation of the written folder
// ---------------------------------------------------------------------------------------

struct Eval {
    n: usize,
    zero_shot: f64,
    few_shot: f64,
    zero_shot_errors: Vec<serde_json::Value>,
}

fn evaluate(model: &DemoModel, n: usize) -> Result<Eval> {
    let queries = shapes::samples(SEED_EVAL, 0, n, IMAGE_SIZE);
    let demos = shapes::samples(SEED_FEW_SHOT_DEMOS, 0, 2 * n, IMAGE_SIZE);
    let references: Vec<String> = queries.iter().map(|s| s.caption.text()).collect();
    let mut zero = Vec::with_capacity(n);
    let mut few = Vec::with_capacity(n);
    for (chunk, demo_chunk) in queries.chunks(50).zip(demos.chunks(100)) {
        let requests: Vec<CaptionRequest> = chunk
            .iter()
            .map(|q| CaptionRequest {
                demos: Vec::new(),
                image: &q.pixels,
            })
            .collect();
        zero.extend(model.caption(&requests)?);
        let requests: Vec<CaptionRequest> = chunk
            .iter()
            .zip(demo_chunk.chunks(2))
            .map(|(q, d)| CaptionRequest {
                demos: d
                    .iter()
                    .map(|s| (s.pixels.as_slice(), s.caption.text()))
                    .collect(),
                image: &q.pixels,
            })
            .collect();
        few.extend(model.caption(&requests)?);
    }
    let zero_shot_errors = zero
        .iter()
        .zip(&references)
        .filter(|(p, r)| shapes::normalize_caption(p) != **r)
        .map(|(p, r)| serde_json::json!({"expected": r, "got": p}))
        .collect();
    Ok(Eval {
        n,
        zero_shot: exact_match(&zero, &references),
        few_shot: exact_match(&few, &references),
        zero_shot_errors,
    })
}

// ---------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------

struct Clock {
    wall: Instant,
    cpu_at_start: Option<f64>,
    load_at_start: Option<[f64; 3]>,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu_at_start: process_cpu_seconds(),
            load_at_start: load_average(),
        }
    }

    fn wall_seconds(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    fn cpu_seconds(&self) -> Option<f64> {
        Some(process_cpu_seconds()? - self.cpu_at_start?)
    }

    /// Wall and CPU seconds per step after `steps` steps.
    fn per_step(&self, steps: u64) -> String {
        let n = steps.max(1) as f64;
        let cpu = self
            .cpu_seconds()
            .map(|c| format!(", {:.2} s CPU", c / n))
            .unwrap_or_default();
        format!("{:.2} s/step{cpu}", self.wall_seconds() / n)
    }
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 100 ticks a second).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-, 5- and 15-minute load averages (Linux `/proc/loadavg`).
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    Some([*v.first()?, *v.get(1)?, *v.get(2)?])
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
