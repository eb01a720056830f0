//! The timed workloads of reference_bench.py, on flamingo-core:
//! - encode: vision tower + perceiver (`Flamingo::encode_vision`) at the preset's batch;
//! - prefill: one forward (`Flamingo::forward`) of 1 image + 64 tokens;
//! - generate: one whole `GenerationSession` (image encoding, a 16-token prompt with one
//!   `<image>`, 32 greedy new tokens with min = max = 32), tokens/s = batch × 32 / wall time;
//! - training: one `Trainer::step` (forward, backward, clip, AdamW) per timing, per shape.
//!
//! Timing follows the reference's `timed`: warm-up calls, a device sync, the timed calls,
//! a device sync, the mean. Results are written to the JSON file after every phase, so a
//! run killed by a time limit still leaves what it measured.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use flamingo_core::generate::{GenerationConfig, GenerationSession};
use flamingo_core::train::{MicroBatch, TrainConfig, Trainer, WeightedInput};
use serde_json::{json, Map, Value};

use crate::memory::{self, GpuMemory};
use crate::presets::{self, Preset};
use crate::synth::{self, StoreDtype};

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub struct BenchOptions {
    pub presets: Vec<Preset>,
    pub device: Device,
    pub dtype: DType,
    /// Phases (and workloads) that would start after this are skipped ("skipped: deadline").
    pub deadline: Instant,
    pub out: Option<PathBuf>,
    /// Where the random model folders are written (and removed after loading).
    pub tmp: PathBuf,
    pub seed: u64,
    /// Timed repeats of encode and prefill (the reference: 5 on CUDA, 2 on the CPU).
    pub reps: usize,
    /// Timed generate calls (the reference: 2, after 1 warm-up).
    pub generate_reps: usize,
    /// Run the training phase.
    pub train: bool,
}

/// A small counter-based generator for token ids (no dependency, reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % (hi - lo) as u64) as u32
    }
}

/// `tokens(dev, b, t, n_media)` of the reference: random ids with `<image>` at `i·(t / n)`.
fn tokens(rng: &mut Rng, b: usize, t: usize, n_media: usize) -> Vec<Vec<u32>> {
    let step = (t / n_media.max(1)).max(1);
    (0..b)
        .map(|_| {
            let mut row: Vec<u32> = (0..t)
                .map(|_| rng.range(presets::TOKEN_RANGE.0, presets::TOKEN_RANGE.1))
                .collect();
            for i in 0..n_media {
                row[i * step] = presets::MEDIA;
            }
            row
        })
        .collect()
}

/// `images(dev, b, t, size)`: standard normal pixels `(B, T_img, 1, 3, S, S)`, f32 (the
/// model casts them to its dtype, as the reference's inputs are made in the model's dtype).
fn images(dev: &Device, b: usize, t: usize, size: usize) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1f32, (b, t, 1, 3, size, size), dev)
}

fn ids_tensor(rows: &[Vec<u32>], dev: &Device) -> candle_core::Result<Tensor> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), dev)
}

fn timed(
    dev: &Device,
    iters: usize,
    warmup: usize,
    mut f: impl FnMut() -> AnyResult<()>,
) -> AnyResult<f64> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

fn device_name(dev: &Device) -> &'static str {
    if dev.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// The load spec of a preset's random model: fresh perceiver and cross-attention (the
/// reference's random init; gates start at zero in both), reference module defaults.
fn load_spec(preset: &Preset, model: &synth::SynthModel, seed: u64) -> LoadSpec {
    LoadSpec {
        vision_dir: model.vision_dir.clone(),
        lm_dir: model.lm_dir.clone(),
        checkpoint: None,
        media_token_id: presets::MEDIA,
        end_of_chunk_token_id: presets::EOC,
        cross_attn_layers: preset.cross_attn_layers(),
        decoder_layers_path: None,
        perceiver: PerceiverConfig::default(),
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: None,
        strict: true,
        init_seed: seed,
    }
}

struct Run<'a> {
    opts: &'a BenchOptions,
    report: Map<String, Value>,
    /// The preset being run.
    current: Option<&'static str>,
    /// CPU peak RSS (GiB) through the loads, and over the workloads after them.
    rss_load: f64,
    rss_work: f64,
}

impl Run<'_> {
    /// Writes the report so far (and, on the CPU, the current preset's peak RSS, so that a
    /// run cut short by a time limit still reports it).
    fn save(&mut self) {
        if !self.opts.device.is_cuda() {
            if let (Some(p), Some(name)) = (memory::peak_rss_gib(), self.current) {
                self.rss_work = self.rss_work.max(p);
                self.set(name, "peak_rss_gib", json!(self.rss_work));
            }
        }
        if let Some(path) = &self.opts.out {
            let text = serde_json::to_string_pretty(&Value::Object(self.report.clone()))
                .unwrap_or_default();
            if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("flamingo-bench: cannot write {}: {e}", path.display());
            }
        }
    }

    /// After a model load on the CPU: the load's peak (the weight files are mapped while
    /// loading) is kept apart, and the peak is reset to the resident model's size, so that
    /// `peak_rss_gib` measures the workloads with the model in memory.
    fn loaded(&mut self) {
        if self.opts.device.is_cuda() {
            return;
        }
        if let (Some(p), Some(name)) = (memory::peak_rss_gib(), self.current) {
            self.rss_load = self.rss_load.max(p);
            self.set(name, "peak_rss_gib_load", json!(self.rss_load));
            if memory::reset_peak_rss() {
                self.set(
                    name,
                    "peak_rss_note",
                    json!("peak_rss_gib: over the workloads with the model loaded (VmHWM reset after each load); peak_rss_gib_load: through the loads, which map the weight files"),
                );
            }
        }
    }

    fn past_deadline(&self) -> bool {
        Instant::now() > self.opts.deadline
    }

    fn set(&mut self, preset: &str, key: &str, v: Value) {
        if let Some(Value::Object(r)) = self.report.get_mut(preset) {
            r.insert(key.to_string(), v);
        }
    }
}

/// Loads one preset's model and runs the inference workloads, recording into `r`.
fn inference(
    run: &mut Run,
    preset: &Preset,
    gpu: Option<&GpuMemory>,
    rng: &mut Rng,
) -> AnyResult<()> {
    let opts = run.opts;
    let dev = &opts.device;
    let name = preset.name;
    let store = if opts.dtype == DType::F32 {
        StoreDtype::F32
    } else {
        StoreDtype::Bf16
    };
    let t0 = Instant::now();
    let files = synth::write_model(preset, &opts.tmp, store, opts.seed)?;
    run.set(
        name,
        "synth_weights_gib",
        json!(files.bytes as f64 / 1073741824.0),
    );
    run.set(name, "synth_write_s", json!(t0.elapsed().as_secs_f64()));
    let t1 = Instant::now();
    let model = Flamingo::load_with_dtype(&load_spec(preset, &files, opts.seed), dev, opts.dtype)?;
    dev.synchronize()?;
    run.set(name, "load_s", json!(t1.elapsed().as_secs_f64()));
    drop(files);
    let model = Arc::new(model);
    let s = model.summary();
    run.set(name, "params_total", json!(s.parameters_total));
    run.set(name, "params_trainable", json!(s.parameters_trainable));
    run.set(name, "cross_attn_layers", json!(s.cross_attn_layers.len()));
    run.loaded();
    run.save();

    let size = preset.vision.image_size;

    // encode: vision tower + perceiver at the preset's batch.
    let n = preset.encode_batch;
    let key = format!("encode_images_per_s_b{n}");
    if run.past_deadline() {
        run.set(name, &key, json!("skipped: deadline"));
    } else {
        let vx = images(dev, n, 1, size)?;
        let dt = timed(dev, opts.reps, 1, || {
            model.encode_vision(&vx)?;
            Ok(())
        })?;
        run.set(name, &key, json!(n as f64 / dt));
        eprintln!("[{name}] {key}: {:.2}", n as f64 / dt);
        // Where encode time goes: the vision tower alone, and one bf16/f32 matmul of the
        // tower's MLP shape (rows = every patch token of the batch), as achieved FLOP/s.
        let tokens = model.vision_tokens(&vx)?;
        let dt_tower = timed(dev, opts.reps, 1, || {
            model.vision_tokens(&vx)?;
            Ok(())
        })?;
        run.set(name, "encode_tower_ms", json!(1e3 * dt_tower));
        run.set(name, "encode_perceiver_ms", json!(1e3 * (dt - dt_tower)));
        let (rows, width) = (tokens.elem_count() / tokens.dim(4)?, tokens.dim(4)?);
        let a = Tensor::ones((rows, width), opts.dtype, dev)?;
        let w = Tensor::ones((4 * width, width), opts.dtype, dev)?;
        let dt_mm = timed(dev, opts.reps, 1, || {
            a.matmul(&w.t()?)?;
            Ok(())
        })?;
        let tflops = 2.0 * (rows * width * 4 * width) as f64 / dt_mm / 1e12;
        run.set(name, "encode_mlp_matmul_tflops", json!(tflops));
        eprintln!(
            "[{name}] tower {:.1} ms, perceiver {:.1} ms, {rows}x{width}x{} matmul {tflops:.0} TFLOP/s",
            1e3 * dt_tower,
            1e3 * (dt - dt_tower),
            4 * width
        );
        run.save();
    }

    // prefill: one forward of 1 image + 64 tokens.
    let key = format!("prefill_ms_b1_img1_tok{}", presets::PREFILL_TOKENS);
    if run.past_deadline() {
        run.set(name, &key, json!("skipped: deadline"));
    } else {
        let input = ForwardInput {
            vision_x: images(dev, 1, 1, size)?,
            lang_x: ids_tensor(&tokens(rng, 1, presets::PREFILL_TOKENS, 1), dev)?,
            attention_mask: None,
            labels: None,
            allow_excess_media_tokens: false,
        };
        let dt = timed(dev, opts.reps, 1, || {
            model.forward(&input)?;
            Ok(())
        })?;
        run.set(name, &key, json!(1e3 * dt));
        eprintln!("[{name}] {key}: {:.2}", 1e3 * dt);
        run.save();
    }

    // generate: one whole call per timing, vision encoding included.
    for &b in &preset.generate_batches {
        let key = format!("generate_tokens_per_s_b{b}");
        if run.past_deadline() {
            run.set(name, &key, json!("skipped: deadline"));
            continue;
        }
        let vb = images(dev, b, 1, size)?;
        let prompts = tokens(rng, b, presets::GENERATE_PROMPT_TOKENS, 1);
        let cfg = GenerationConfig {
            max_new_tokens: presets::GENERATE_NEW_TOKENS,
            min_new_tokens: presets::GENERATE_NEW_TOKENS,
            num_beams: 1,
            do_sample: false,
            pad_token_id: Some(0),
            ..Default::default()
        };
        let abort = AtomicBool::new(false);
        let mut generated = 0;
        let dt = timed(dev, opts.generate_reps, 1, || {
            let session =
                GenerationSession::start(model.clone(), &vb, prompts.clone(), None, cfg.clone())?;
            let out = session.run_to_end(&abort)?;
            generated = out.new_tokens.iter().map(|r| r.len()).max().unwrap_or(0);
            Ok(())
        })?;
        if generated != presets::GENERATE_NEW_TOKENS {
            return Err(format!(
                "generate produced {generated} tokens, expected {}",
                presets::GENERATE_NEW_TOKENS
            )
            .into());
        }
        let tps = (b * presets::GENERATE_NEW_TOKENS) as f64 / dt;
        run.set(name, &key, json!(tps));
        eprintln!("[{name}] {key}: {tps:.2}");
        run.save();
    }

    record_gpu_memory(run, name, gpu, "inference");
    Ok(())
}

/// Training samples/s, the reference's step: forward with labels (`<image>` positions −100),
/// backward, only the `<image>`/`<|endofchunk|>` embedding rows and the bridge learn, global
/// gradient-norm clip at 1.0, AdamW (lr 1e-4, weight decay 0.1 on the gated cross-attention
/// group only) — `flamingo_core::train::Trainer` with its default (the reference's) config.
/// The reference trains fp32 weights under bf16 autocast with TF32 matmuls; candle has no
/// autocast, so ours trains in f32 with TF32 allowed for f32 matmuls on CUDA.
fn training(
    run: &mut Run,
    preset: &Preset,
    gpu: Option<&GpuMemory>,
    rng: &mut Rng,
) -> AnyResult<()> {
    let opts = run.opts;
    let dev = &opts.device;
    let name = preset.name;
    if !opts.train {
        run.set(name, "training", json!("skipped: --no-train"));
        return Ok(());
    }
    if dev.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        run.set(
            name,
            "train_note",
            json!("f32 weights and compute, TF32 matmuls (the reference: f32 weights, bf16 autocast, TF32)"),
        );
    }
    if let Some(g) = gpu {
        g.reset_peak();
    }
    let t0 = Instant::now();
    let files = synth::write_model(preset, &opts.tmp, StoreDtype::F32, opts.seed)?;
    let model = Flamingo::load_with_dtype(&load_spec(preset, &files, opts.seed), dev, DType::F32)?;
    drop(files);
    let mut trainer = Trainer::new(model, TrainConfig::default())?;
    dev.synchronize()?;
    run.set(name, "train_load_s", json!(t0.elapsed().as_secs_f64()));
    run.loaded();
    run.save();
    let size = preset.vision.image_size;
    let reps = if dev.is_cuda() { 3 } else { 2 };
    for shape in &preset.train {
        let label = shape.label;
        if run.past_deadline() {
            run.set(name, &format!("train_{label}"), json!("skipped: deadline"));
            continue;
        }
        let (b, t_img, t_txt) = (shape.batch, shape.images, shape.tokens);
        let ids = tokens(rng, b, t_txt, t_img);
        let labels: Vec<i64> = ids
            .iter()
            .flatten()
            .map(|&t| if t == presets::MEDIA { -100 } else { t as i64 })
            .collect();
        let input = ForwardInput {
            vision_x: images(dev, b, t_img, size)?,
            lang_x: ids_tensor(&ids, dev)?,
            attention_mask: None,
            labels: Some(Tensor::from_vec(labels, (b, t_txt), dev)?),
            allow_excess_media_tokens: false,
        };
        let batch = [MicroBatch::new(vec![WeightedInput::new(input, 1.0, label)])];
        let dt = timed(dev, reps, 1, || {
            let stats = trainer.step(&batch)?;
            if stats.skipped || !stats.loss.is_finite() {
                return Err(format!("training step skipped or non-finite: {stats:?}").into());
            }
            Ok(())
        })?;
        run.set(
            name,
            &format!("train_{label}_samples_per_s"),
            json!(b as f64 / dt),
        );
        run.set(
            name,
            &format!("train_{label}_tokens_per_s"),
            json!((b * t_txt) as f64 / dt),
        );
        eprintln!("[{name}] train_{label}_samples_per_s: {:.2}", b as f64 / dt);
        run.save();
    }
    record_gpu_memory(run, name, gpu, "train");
    Ok(())
}

/// `{phase}_peak_gib` (tensor memory, as `torch.cuda.max_memory_allocated`) and
/// `{phase}_device_used_gib` (the device's used memory over the baseline), where measurable.
fn record_gpu_memory(run: &mut Run, name: &str, gpu: Option<&GpuMemory>, phase: &str) {
    let Some(gpu) = gpu else { return };
    if let Some(peak) = gpu.peak_allocated_gib() {
        run.set(name, &format!("{phase}_peak_gib"), json!(peak));
    }
    if let Some(used) = gpu.used_gib() {
        run.set(name, &format!("{phase}_device_used_gib"), json!(used));
    }
}

pub fn run(opts: &BenchOptions) -> AnyResult<Value> {
    let gpu = GpuMemory::new(&opts.device);
    let mut report = Map::new();
    report.insert(
        "engine".into(),
        json!(format!(
            "flamingo-core {} (candle 0.11.1)",
            env!("CARGO_PKG_VERSION")
        )),
    );
    report.insert("device".into(), json!(device_name(&opts.device)));
    report.insert("dtype".into(), json!(dtype_name(opts.dtype)));
    report.insert(
        "threads".into(),
        json!(candle_core::utils::get_num_threads()),
    );
    if let Some(g) = &gpu {
        if let Some(name) = g.device_name() {
            report.insert("gpu".into(), json!(name));
        }
        report.insert(
            "device_baseline_gib".into(),
            json!(g.baseline_used as f64 / 1073741824.0),
        );
    }
    let mut run = Run {
        opts,
        report,
        current: None,
        rss_load: 0.0,
        rss_work: 0.0,
    };
    let mut rng = Rng(opts.seed);
    for preset in &opts.presets {
        run.report.insert(preset.name.into(), json!({}));
        run.current = Some(preset.name);
        (run.rss_load, run.rss_work) = (0.0, 0.0);
        if let Some(g) = &gpu {
            g.reset_peak();
        }
        for phase in ["inference", "training"] {
            if run.past_deadline() {
                run.set(preset.name, phase, json!("skipped: deadline"));
                continue;
            }
            let result = match phase {
                "inference" => inference(&mut run, preset, gpu.as_ref(), &mut rng),
                _ => training(&mut run, preset, gpu.as_ref(), &mut rng),
            };
            if let Err(e) = result {
                eprintln!("[{}] {phase} failed: {e}", preset.name);
                let msg: String = e.to_string().chars().take(500).collect();
                run.set(preset.name, &format!("{phase}_error"), json!(msg));
            }
            run.save();
        }
        run.save();
        let one = json!({ preset.name: run.report[preset.name].clone() });
        println!("{one}");
    }
    run.save();
    Ok(Value::Object(run.report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_preset_reports_every_figure_under_the_reference_keys() {
        let out = std::env::temp_dir().join(format!("bench-test-{}.json", std::process::id()));
        let opts = BenchOptions {
            presets: vec![presets::by_name("tiny").unwrap()],
            device: Device::Cpu,
            dtype: DType::F32,
            deadline: Instant::now() + std::time::Duration::from_secs(600),
            out: Some(out.clone()),
            tmp: std::env::temp_dir(),
            seed: 1,
            reps: 1,
            generate_reps: 1,
            train: true,
        };
        let report = run(&opts).unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        // The file holds the same figures (compared by key: JSON float text need not
        // round-trip to the last bit).
        let keys =
            |v: &Value| -> Vec<String> { v["tiny"].as_object().unwrap().keys().cloned().collect() };
        assert_eq!(keys(&written), keys(&report));
        let r = &report["tiny"];
        for key in [
            "encode_images_per_s_b4",
            "prefill_ms_b1_img1_tok64",
            "generate_tokens_per_s_b1",
            "generate_tokens_per_s_b2",
            "params_total",
            "params_trainable",
            "peak_rss_gib",
            "train_tiny_b2_img1_tok32_samples_per_s",
            "train_tiny_b2_img1_tok32_tokens_per_s",
        ] {
            assert!(
                r[key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {} in {r}",
                r[key]
            );
        }
        assert!(r.get("inference_error").is_none(), "{r}");
        assert!(r.get("training_error").is_none(), "{r}");
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn a_passed_deadline_skips_the_phases_instead_of_running_them() {
        let opts = BenchOptions {
            presets: vec![presets::by_name("tiny").unwrap()],
            device: Device::Cpu,
            dtype: DType::F32,
            deadline: Instant::now(),
            out: None,
            tmp: std::env::temp_dir(),
            seed: 1,
            reps: 1,
            generate_reps: 1,
            train: true,
        };
        std::thread::sleep(std::time::Duration::from_millis(5));
        let report = run(&opts).unwrap();
        assert_eq!(report["tiny"]["inference"], "skipped: deadline");
        assert_eq!(report["tiny"]["training"], "skipped: deadline");
    }

    #[test]
    fn prompts_put_the_image_token_where_the_reference_does() {
        let rows = tokens(&mut Rng(3), 2, 64, 1);
        assert!(rows.iter().all(|r| r.len() == 64 && r[0] == presets::MEDIA));
        assert!(rows
            .iter()
            .all(|r| r[1..].iter().all(|&t| (10..30000).contains(&t))));
        let rows = tokens(&mut Rng(3), 1, 256, 5);
        let media: Vec<usize> = (0..256).filter(|&i| rows[0][i] == presets::MEDIA).collect();
        assert_eq!(media, vec![0, 51, 102, 153, 204]);
    }
}
