//! flamingo-bench: the GPU (and CPU) benchmark of flamingo-core on the workloads of
//! ../shared/bench/reference_bench.py, and `gpu-parity`, the golden parity checks on the
//! device under test. A plain binary, so a GPU host needs neither Rust nor Node: build it with
//! scripts/build-cuda.sh and run it with the host's CUDA 13 libraries (docs/CUDA.md).

mod bench;
mod memory;
mod parity;
mod presets;
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

const USAGE: &str = "\
usage:
  flamingo-bench [bench] [--preset NAME]... [--device cpu|cuda] [--dtype f32|bf16|f16]
                 [--deadline SECONDS] [--out FILE.json] [--tmp DIR] [--seed N]
                 [--reps N] [--generate-reps N] [--no-train]
  flamingo-bench gpu-parity [--golden DIR] [--device cpu|cuda] [--family NAME]... [--bf16]
                 [--out FILE.json]

bench: times the reference_bench.py workloads (encode, prefill, generate, training steps)
  on random weights and prints/writes JSON with the reference's keys. Presets: small-cpu (default), 3B-vitl-mpt1b, 9B-vitl-mpt7b, tiny.
  --device defaults to the preset's (small-cpu: cpu, the others: cuda); --dtype to bf16 on
  CUDA and f32 on the CPU (the reference's choices). --deadline (default 600) skips the
  phases and workloads that would start later. --tmp: where the random weights are written
  (default $TMPDIR or /tmp; they are removed after loading).
gpu-parity: the golden parity checks (vision tokens, perceiver, logits, loss, greedy and
  beam tokens) for llama, opt, gpt_neox and mpt in f32 on --device (default cuda);
  --golden defaults to $FLAMINGO_GOLDEN, else ../shared/golden or shared/golden from the
  working directory. --bf16 adds an informational bf16 forward (f16 on the CPU). Exit status 1 on failure.";

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let v = self.items.get(self.pos).cloned();
        self.pos += 1;
        v
    }
    fn value(&mut self, flag: &str) -> AnyResult<String> {
        self.next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}").into())
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> AnyResult<T> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a valid number").into())
}

fn make_device(name: &str) -> AnyResult<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err("this flamingo-bench was built without CUDA: build it with scripts/build-cuda.sh (cargo feature `cuda`)".into());
            }
            Device::new_cuda(0).map_err(|e| {
                format!("cannot open CUDA device 0: {e} (is the NVIDIA driver there, and LD_LIBRARY_PATH at the CUDA 13 libraries? see docs/CUDA.md)").into()
            })
        }
        other => Err(format!("--device must be cpu or cuda, not '{other}'").into()),
    }
}

fn parse_dtype(v: &str) -> AnyResult<DType> {
    match v {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("--dtype must be f32, bf16 or f16, not '{other}'").into()),
    }
}

fn default_golden() -> PathBuf {
    if let Ok(p) = std::env::var("FLAMINGO_GOLDEN") {
        return PathBuf::from(p);
    }
    for c in ["../shared/golden", "shared/golden"] {
        let p = PathBuf::from(c);
        if p.is_dir() {
            return p;
        }
    }
    PathBuf::from("../shared/golden")
}

fn write_json(path: &Option<PathBuf>, v: &serde_json::Value) -> AnyResult<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(v)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

fn bench_cmd(mut a: Args) -> AnyResult<bool> {
    let start = Instant::now();
    let mut names = Vec::new();
    let (mut device, mut dtype, mut out, mut tmp) = (None, None, None, None);
    let (mut deadline, mut seed, mut reps, mut generate_reps) = (600f64, 0u64, None, 2usize);
    let mut train = true;
    while let Some(flag) = a.next() {
        match flag.as_str() {
            "--preset" => names.push(a.value(&flag)?),
            "--device" => device = Some(a.value(&flag)?),
            "--dtype" => dtype = Some(parse_dtype(&a.value(&flag)?)?),
            "--deadline" => deadline = parse_num(&flag, &a.value(&flag)?)?,
            "--out" => out = Some(PathBuf::from(a.value(&flag)?)),
            "--tmp" => tmp = Some(PathBuf::from(a.value(&flag)?)),
            "--seed" => seed = parse_num(&flag, &a.value(&flag)?)?,
            "--reps" => reps = Some(parse_num::<usize>(&flag, &a.value(&flag)?)?.max(1)),
            "--generate-reps" => {
                generate_reps = parse_num::<usize>(&flag, &a.value(&flag)?)?.max(1)
            }
            "--no-train" => train = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => return Err(format!("unknown argument '{other}'\n\n{USAGE}").into()),
        }
    }
    if names.is_empty() {
        names.push("small-cpu".to_string());
    }
    let presets = names
        .iter()
        .map(|n| {
            presets::by_name(n).ok_or_else(|| {
                format!(
                    "unknown preset '{n}' (known: {})",
                    presets::names().join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let device = make_device(device.as_deref().unwrap_or(presets[0].device))?;
    let dtype = dtype.unwrap_or(if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    });
    if dtype == DType::BF16 && !device.is_cuda() {
        return Err("--dtype bf16 needs --device cuda: candle's CPU matmul has no bf16 kernel (use f32, or f16)".into());
    }
    let opts = bench::BenchOptions {
        presets,
        reps: reps.unwrap_or(if device.is_cuda() { 5 } else { 2 }),
        device,
        dtype,
        deadline: start + Duration::from_secs_f64(deadline.max(0.0)),
        out,
        tmp: tmp.unwrap_or_else(std::env::temp_dir),
        seed,
        generate_reps,
        train,
    };
    bench::run(&opts)?;
    Ok(true)
}

fn parity_cmd(mut a: Args) -> AnyResult<bool> {
    let (mut golden, mut device, mut out) = (None, "cuda".to_string(), None);
    let (mut families, mut half) = (Vec::new(), false);
    while let Some(flag) = a.next() {
        match flag.as_str() {
            "--golden" => golden = Some(PathBuf::from(a.value(&flag)?)),
            "--device" => device = a.value(&flag)?,
            "--family" => families.push(a.value(&flag)?),
            "--bf16" => half = true,
            "--out" => out = Some(PathBuf::from(a.value(&flag)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => return Err(format!("unknown argument '{other}'\n\n{USAGE}").into()),
        }
    }
    if families.is_empty() {
        families = parity::FAMILIES.iter().map(|s| s.to_string()).collect();
    }
    let opts = parity::ParityOptions {
        golden: golden.unwrap_or_else(default_golden),
        device: make_device(&device)?,
        families,
        half,
    };
    let (report, ok) = parity::run(&opts);
    write_json(&out, &report)?;
    Ok(ok)
}

fn main() -> ExitCode {
    let items: Vec<String> = std::env::args().skip(1).collect();
    let mut args = Args { items, pos: 0 };
    let result = match args.items.first().map(String::as_str) {
        Some("gpu-parity") => {
            args.pos = 1;
            parity_cmd(args)
        }
        Some("bench") => {
            args.pos = 1;
            bench_cmd(args)
        }
        _ => bench_cmd(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flamingo-bench: {e}");
            ExitCode::from(2)
        }
    }
}
