//! Memory and speed of a training step on the golden tiny models.
//!
//! Asserted: with the frozen-weight linear (candle-napi-notes §B5) a training backward
//! keeps no gradient for frozen LM weights, so the gradient store is smaller than with
//! candle's plain matmul. Printed, never asserted (timings vary by machine): samples/s and
//! the peak RSS of a child process running steps each way.

mod train_support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use flamingo_core::nn::MATERIALISE_FROZEN_WEIGHT_GRADS;
use flamingo_core::train::{MicroBatch, TrainConfig, WeightedInput};
use train_support::*;

/// Bytes held by the gradient store at the end of one backward of the golden loss, and the
/// part of it that belongs to trainable tensors.
fn grad_store_bytes(family: &str) -> (usize, usize) {
    let g = golden(family);
    let t = trainer(family, TrainConfig::default());
    let loss = t.model().forward(&golden_input(&g)).unwrap().loss.unwrap();
    let grads = loss.backward().unwrap();
    let total = grads
        .get_ids()
        .map(|&id| {
            let t = grads.get_id(id).unwrap();
            t.elem_count() * t.dtype().size_in_bytes()
        })
        .sum();
    let trainable = t.parameters().values().map(|p| p.elem_count() * 4).sum();
    (total, trainable)
}

#[test]
fn frozen_lm_weights_get_no_gradient_buffers_in_a_training_backward() {
    for family in FAMILIES {
        MATERIALISE_FROZEN_WEIGHT_GRADS.store(true, Ordering::SeqCst);
        let (before, trainable) = grad_store_bytes(family);
        MATERIALISE_FROZEN_WEIGHT_GRADS.store(false, Ordering::SeqCst);
        let (after, _) = grad_store_bytes(family);
        println!(
            "{family}: gradient store after backward {before} B with candle's matmul, {after} B with the frozen linear (trainable tensors: {trainable} B)"
        );
        assert!(after < before, "{family}: {after} ≥ {before}");
        assert!(after >= trainable);
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (/proc/self/stat, clock ticks of 1/100 s):
/// unlike wall time, barely affected by other load on the machine.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_name = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after_name.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Not a test on its own: the child process body of the throughput report below.
#[test]
fn throughput_helper_child_process_runs_steps() {
    let Ok(family) = std::env::var("FLAMINGO_TEST_BENCH_FAMILY") else {
        return;
    };
    let materialise = std::env::var("FLAMINGO_TEST_BENCH_MATERIALISE").is_ok();
    MATERIALISE_FROZEN_WEIGHT_GRADS.store(materialise, Ordering::SeqCst);
    let g = golden(&family);
    let mut t = trainer(&family, TrainConfig::default());
    let mb = || MicroBatch::new(vec![WeightedInput::new(golden_input(&g), 1.0, "x")]);
    t.step(&[mb()]).unwrap(); // warm-up
    let steps = 5;
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut samples = 0;
    for _ in 0..steps {
        samples += t.step(&[mb()]).unwrap().samples;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let path = if materialise {
        "plain-matmul"
    } else {
        "frozen-linear"
    };
    println!(
        "BENCH {family} {path} {:.2} {:.3} {:.3} {}",
        samples as f64 / secs,
        secs / steps as f64,
        cpu / steps as f64,
        peak_rss_kib()
    );
}

#[test]
fn training_step_throughput_and_peak_memory_report() {
    let exe = std::env::current_exe().unwrap();
    // One candle thread per child: CPU seconds per step is then the compute a step costs.
    println!("family    backward path   samples/s  wall s/step  CPU s/step  peak RSS (MiB)");
    for family in FAMILIES {
        for materialise in [false, true] {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--exact",
                "throughput_helper_child_process_runs_steps",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FLAMINGO_TEST_BENCH_FAMILY", family)
            .env("CANDLE_NUM_THREADS", "1")
            .env("RAYON_NUM_THREADS", "1");
            if materialise {
                cmd.env("FLAMINGO_TEST_BENCH_MATERIALISE", "1");
            }
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{family}: {stdout}");
            let line = stdout
                .lines()
                .find_map(|l| l.split_once("BENCH ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("{family}: no report in {stdout}"));
            let f: Vec<&str> = line.split_whitespace().collect();
            let rss_mib = f[5].parse::<f64>().unwrap() / 1024.0;
            println!(
                "{:<9} {:<15} {:>9} {:>12} {:>11} {:>15.1}",
                f[0], f[1], f[2], f[3], f[4], rss_mib
            );
        }
    }
}
