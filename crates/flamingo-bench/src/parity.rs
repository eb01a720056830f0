//! `gpu-parity`: the golden parity checks of crates/flamingo-core/tests (golden_forward.rs,
//! golden_generate.rs) on any device, f32, against the reference outputs in
//! ../shared/golden (open_flamingo 2.0.1, PyTorch 2.11, transformers 5.17, CPU f32; made by
//! shared/golden/tools/make_golden.py with GOLDEN_SEED=2000). The same weights and inputs,
//! moved to the device under test; the tolerances are the CPU tests' loosened by 10× for the
//! GPU's different summation orders (cuBLAS split-K, parallel reductions).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use flamingo_core::flamingo::config::{CrossAttnConfig, PerceiverConfig};
use flamingo_core::flamingo::model::{Flamingo, ForwardInput, LoadSpec};
use flamingo_core::generate::{GenerationConfig, GenerationSession};
use serde_json::{json, Map, Value};

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const FAMILIES: [&str; 4] = ["llama", "opt", "gpt_neox", "mpt"];

/// Max abs error allowed for the vision tokens and the perceiver output.
pub const TOL_VISION: f32 = 1e-4;
/// Max abs error allowed for the logits.
pub const TOL_LOGITS: f32 = 1e-3;
/// Relative error allowed for the loss.
pub const TOL_LOSS_REL: f32 = 1e-4;

pub struct ParityOptions {
    pub golden: PathBuf,
    pub device: Device,
    pub families: Vec<String>,
    /// Also run the forward with every weight in BF16 (CUDA; F16 on the CPU) and report its
    /// logits error against the f32 reference: informational, only finiteness is required.
    pub half: bool,
}

fn read_meta(dir: &Path) -> AnyResult<Value> {
    let p = dir.join("meta.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn spec(dir: &Path, meta: &Value) -> AnyResult<LoadSpec> {
    let n = meta["cross_attn_every_n_layers"]
        .as_u64()
        .ok_or("meta.json lacks cross_attn_every_n_layers")? as usize;
    let lm_cfg = read_meta_like(&dir.join("lm/config.json"))?;
    let layers = lm_cfg
        .get("num_hidden_layers")
        .or_else(|| lm_cfg.get("n_layers"))
        .and_then(|v| v.as_u64())
        .ok_or("lm/config.json has neither num_hidden_layers nor n_layers")?
        as usize;
    let id = |k: &str| -> AnyResult<u32> {
        Ok(meta[k]
            .as_u64()
            .ok_or_else(|| format!("meta.json lacks {k}"))? as u32)
    };
    Ok(LoadSpec {
        vision_dir: dir.join("vision"),
        lm_dir: dir.join("lm"),
        checkpoint: Some(dir.join("checkpoint.pt")),
        media_token_id: id("media_token_id")?,
        end_of_chunk_token_id: id("eoc_token_id")?,
        cross_attn_layers: (0..layers).filter(|i| (i + 1) % n == 0).collect(),
        decoder_layers_path: meta["decoder_layers_attr_name"]
            .as_str()
            .map(str::to_string),
        perceiver: PerceiverConfig::default(),
        cross_attn: CrossAttnConfig::default(),
        vision_post_layernorm: false,
        vocab_size: None,
        strict: true,
        init_seed: 0,
    })
}

fn read_meta_like(path: &Path) -> AnyResult<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> AnyResult<f32> {
    if a.dims() != b.dims() {
        return Err(format!("shapes differ: {:?} vs {:?}", a.dims(), b.dims()).into());
    }
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let d: Vec<f32> = (a - b)?.abs()?.flatten_all()?.to_vec1()?;
    // NaN anywhere is a failure, not a silently ignored maximum.
    Ok(d.into_iter()
        .fold(0f32, |m, x| if x.is_nan() { f32::NAN } else { m.max(x) }))
}

fn rows(t: &Tensor) -> AnyResult<Vec<Vec<u32>>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect())
}

fn generate(
    model: &Arc<Flamingo>,
    vision_x: &Tensor,
    prompts: Vec<Vec<u32>>,
    cfg: GenerationConfig,
) -> AnyResult<Vec<Vec<u32>>> {
    let s = GenerationSession::start(model.clone(), vision_x, prompts, None, cfg)?;
    Ok(s.run_to_end(&AtomicBool::new(false))?.sequences)
}

/// One family's checks. Returns the record and whether every check passed.
fn check_family(opts: &ParityOptions, family: &str) -> AnyResult<(Value, bool)> {
    let dir = opts.golden.join(family);
    let meta = read_meta(&dir)?;
    let spec = spec(&dir, &meta)?;
    let dev = &opts.device;
    let golden_path = dir.join("golden.safetensors");
    let g = candle_core::safetensors::load(&golden_path, dev)
        .map_err(|e| format!("reading {}: {e}", golden_path.display()))?;
    let get = |k: &str| -> AnyResult<&Tensor> {
        g.get(k)
            .ok_or_else(|| format!("{} has no tensor {k}", golden_path.display()).into())
    };
    let pad = meta["pad_token_id"].as_u64().unwrap_or(0) as u32;

    let model = Arc::new(Flamingo::load(&spec, dev)?);
    let mut r = Map::new();
    let mut ok = true;
    let mut check = |r: &mut Map<String, Value>, key: &str, err: f32, tol: f32| {
        let pass = err.is_finite() && err <= tol;
        ok &= pass;
        r.insert(
            key.into(),
            json!({"max_abs_err": err, "tol": tol, "pass": pass}),
        );
    };

    let vision_x = get("vision_x")?;
    let e = max_abs_diff(&model.vision_tokens(vision_x)?, get("vision_tokens")?)?;
    check(&mut r, "vision_tokens", e, TOL_VISION);
    let e = max_abs_diff(&model.encode_vision(vision_x)?, get("perceiver_out")?)?;
    check(&mut r, "perceiver_out", e, TOL_VISION);

    let input = ForwardInput {
        vision_x: vision_x.clone(),
        lang_x: get("lang_x")?.clone(),
        attention_mask: Some(get("attention_mask")?.clone()),
        labels: Some(get("labels")?.clone()),
        allow_excess_media_tokens: false,
    };
    let out = model.forward(&input)?;
    let e = max_abs_diff(&out.logits, get("logits")?)?;
    check(&mut r, "logits", e, TOL_LOGITS);
    let loss = out
        .loss
        .ok_or("forward with labels returned no loss")?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let ref_loss = get("loss")?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    let rel = ((loss - ref_loss) / ref_loss).abs();
    let pass = rel.is_finite() && rel <= TOL_LOSS_REL;
    ok &= pass;
    r.insert(
        "loss".into(),
        json!({"value": loss, "reference": ref_loss, "rel_err": rel, "tol": TOL_LOSS_REL, "pass": pass}),
    );

    // Generation: exact tokens (greedy 8 new tokens; 3 beams, 6 new tokens), as the CPU tests.
    let prompts = rows(get("gen_lang_x")?)?;
    let greedy = generate(
        &model,
        vision_x,
        prompts.clone(),
        GenerationConfig {
            max_new_tokens: 8,
            pad_token_id: Some(pad),
            ..Default::default()
        },
    )?;
    let pass = greedy == rows(get("gen_greedy")?)?;
    ok &= pass;
    r.insert("greedy_tokens_equal".into(), json!(pass));
    let beam = generate(
        &model,
        vision_x,
        prompts,
        GenerationConfig {
            max_new_tokens: 6,
            num_beams: 3,
            pad_token_id: Some(pad),
            ..Default::default()
        },
    )?;
    let pass = beam == rows(get("gen_beam3")?)?;
    ok &= pass;
    r.insert("beam3_tokens_equal".into(), json!(pass));

    if opts.half {
        // BF16 on CUDA (the GPU presets' dtype); the CPU has no BF16 matmul, so F16 there.
        let (dtype, name) = if dev.is_cuda() {
            (DType::BF16, "bf16")
        } else {
            (DType::F16, "f16")
        };
        let half = Flamingo::load_with_dtype(&spec, dev, dtype)?;
        let out = half.forward(&ForwardInput {
            labels: None,
            ..input
        })?;
        let e = max_abs_diff(&out.logits, get("logits")?)?;
        let pass = e.is_finite();
        ok &= pass;
        r.insert(
            "half_logits".into(),
            json!({"dtype": name, "max_abs_err": e, "note": "informational: every weight in half precision vs the f32 reference; must be finite", "pass": pass}),
        );
    }
    r.insert("pass".into(), json!(ok));
    Ok((Value::Object(r), ok))
}

/// Runs every family; prints one line per check and returns the report and overall pass.
pub fn run(opts: &ParityOptions) -> (Value, bool) {
    let mut report = Map::new();
    report.insert("golden".into(), json!(opts.golden.display().to_string()));
    report.insert(
        "device".into(),
        json!(if opts.device.is_cuda() { "cuda" } else { "cpu" }),
    );
    report.insert("dtype".into(), json!("f32"));
    let mut all_ok = true;
    for family in &opts.families {
        match check_family(opts, family) {
            Ok((rec, ok)) => {
                all_ok &= ok;
                println!("{family}: {}", summary_line(&rec));
                report.insert(family.clone(), rec);
            }
            Err(e) => {
                all_ok = false;
                println!("{family}: ERROR {e}");
                report.insert(
                    family.clone(),
                    json!({"error": e.to_string(), "pass": false}),
                );
            }
        }
    }
    report.insert("pass".into(), json!(all_ok));
    println!("gpu-parity: {}", if all_ok { "PASS" } else { "FAIL" });
    (Value::Object(report), all_ok)
}

fn summary_line(rec: &Value) -> String {
    let err = |k: &str| {
        rec[k]["max_abs_err"]
            .as_f64()
            .map(|e| format!("{k} {e:.2e}"))
            .unwrap_or_default()
    };
    let mut parts = vec![err("vision_tokens"), err("perceiver_out"), err("logits")];
    if let Some(rel) = rec["loss"]["rel_err"].as_f64() {
        parts.push(format!("loss rel {rel:.2e}"));
    }
    parts.push(format!("greedy {}", rec["greedy_tokens_equal"]));
    parts.push(format!("beam3 {}", rec["beam3_tokens_equal"]));
    if let Some(h) = rec.get("half_logits") {
        let e = h["max_abs_err"].as_f64().unwrap_or(f64::NAN);
        parts.push(format!(
            "{} logits {e:.2e}",
            h["dtype"].as_str().unwrap_or("half")
        ));
    }
    parts.push(if rec["pass"].as_bool() == Some(true) {
        "ok".into()
    } else {
        "FAIL".into()
    });
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_passes_on_the_cpu_for_every_family_with_the_half_precision_forward() {
        let opts = ParityOptions {
            golden: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/golden"
            )),
            device: Device::Cpu,
            families: FAMILIES.iter().map(|s| s.to_string()).collect(),
            half: true,
        };
        let (report, ok) = run(&opts);
        assert!(ok, "{report:#}");
        for fam in FAMILIES {
            let e = report[fam]["logits"]["max_abs_err"].as_f64().unwrap();
            assert!(e <= 1e-4, "{fam}: CPU logits error {e}");
            assert_eq!(report[fam]["half_logits"]["dtype"], "f16");
        }
    }
}
