//! AdamW and the learning-rate schedules against hand-computed values.
//!
//! Expected AdamW values come from PyTorch's `_single_tensor_adamw` formulas (torch 2.0.1,
//! the reference's pin), evaluated twice: in f64 by a Python transcription (the literals
//! below, printed with `repr`), and here in f32 with torch's order of operations, which
//! the optimizer must reproduce bit for bit. Schedule values are HF transformers'
//! `get_*_schedule_with_warmup` `lr_lambda`s.

use candle_core::{Device, Tensor, Var};
use flamingo_core::train::{AdamW, AdamWConfig, ScheduleConfig, ScheduleKind};

const LR: f64 = 0.01;

fn cfg() -> AdamWConfig {
    AdamWConfig {
        lr: LR,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

/// torch: param.mul_(1 - lr·wd); exp_avg.lerp_(g, 1 - β1); exp_avg_sq.mul_(β2).addcmul_(g, g,
/// 1 - β2); denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps); param.addcdiv_(exp_avg, denom,
/// -lr/bc1). Python scalars are f64, rounded to f32 where a float32 tensor op uses them.
fn torch_step(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], step: u64, wd: f64) {
    let c = cfg();
    let keep = (1.0 - LR * wd) as f32;
    let bc1 = 1.0 - c.beta1.powf(step as f64);
    let bc2 = 1.0 - c.beta2.powf(step as f64);
    for i in 0..p.len() {
        p[i] *= keep;
        m[i] += (g[i] - m[i]) * (1.0 - c.beta1) as f32;
        v[i] = v[i] * c.beta2 as f32 + (1.0 - c.beta2) as f32 * g[i] * g[i];
        let denom = v[i].sqrt() / bc2.sqrt() as f32 + c.eps as f32;
        p[i] += (-(LR / bc1)) as f32 * (m[i] / denom);
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn adamw_matches_pytorch_formulas_on_a_two_parameter_problem() {
    let dev = Device::Cpu;
    let a = Var::from_slice(&[1.0f32, -2.0], 2, &dev).unwrap();
    let b = Var::from_slice(&[0.5f32], 1, &dev).unwrap();
    // `a` in the decaying group (λ = 0.1), `b` not.
    let mut opt = AdamW::new(
        cfg(),
        vec![("a".into(), a.clone(), 0.1), ("b".into(), b.clone(), 0.0)],
    )
    .unwrap();
    let ga: [&[f32]; 3] = [&[0.1, -0.3], &[-0.2, 0.4], &[0.05, 0.0]];
    // `b` has no gradient in step 2: torch leaves it alone, its step count included.
    let gb: [Option<&[f32]>; 3] = [Some(&[2.0]), None, Some(&[-1.0])];

    // f64 transcription of the same formulas (python3, repr of floats).
    let expect_a: [[f64; 2]; 3] = [
        [0.9890000009999999, -1.9880000003333334],
        [0.9916720360378488, -1.9879471043696357],
        [0.9920472705289833, -1.9874549982845995],
    ];
    let expect_b: [f64; 3] = [0.49000000005, 0.49000000005, 0.48733662967024316];

    let (mut pa, mut ma, mut va) = (vec![1.0f32, -2.0], vec![0f32; 2], vec![0f32; 2]);
    let (mut pb, mut mb, mut vb) = (vec![0.5f32], vec![0f32], vec![0f32]);
    let mut b_steps = 0;
    for s in 0..3 {
        let grads = vec![
            Some(Tensor::from_slice(ga[s], 2, &dev).unwrap()),
            gb[s].map(|g| Tensor::from_slice(g, 1, &dev).unwrap()),
        ];
        opt.step(&grads, LR).unwrap();
        torch_step(&mut pa, &mut ma, &mut va, ga[s], s as u64 + 1, 0.1);
        if let Some(g) = gb[s] {
            b_steps += 1;
            torch_step(&mut pb, &mut mb, &mut vb, g, b_steps, 0.0);
        }
        assert_eq!(values(a.as_tensor()), pa, "a after step {}", s + 1);
        assert_eq!(values(b.as_tensor()), pb, "b after step {}", s + 1);
        assert_eq!(values(&opt.params()[0].exp_avg), ma);
        assert_eq!(values(&opt.params()[0].exp_avg_sq), va);
        for (got, want) in values(a.as_tensor()).iter().zip(expect_a[s]) {
            assert!(
                ((*got as f64 - want) / want).abs() < 1e-6,
                "a: {got} vs {want}"
            );
        }
        let got = values(b.as_tensor())[0] as f64;
        assert!(((got - expect_b[s]) / expect_b[s]).abs() < 1e-6, "b: {got}");
    }
    assert_eq!(opt.params()[0].step, 3);
    assert_eq!(opt.params()[1].step, 2);
}

#[test]
fn adamw_rejects_bad_hyper_parameters_and_non_f32_parameters() {
    let dev = Device::Cpu;
    let p = Var::from_slice(&[1.0f32], 1, &dev).unwrap();
    let bad = AdamWConfig {
        beta1: 1.0,
        ..cfg()
    };
    let err = AdamW::new(bad, vec![("p".into(), p.clone(), 0.0)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("beta1"), "{err}");
    let half = Var::from_tensor(
        &Tensor::new(&[1.0f32], &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F16)
            .unwrap(),
    )
    .unwrap();
    let err = AdamW::new(cfg(), vec![("h".into(), half, 0.0)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("must be f32"), "{err}");
}

fn schedule(kind: ScheduleKind, warmup: u64, total: Option<u64>) -> ScheduleConfig {
    ScheduleConfig {
        kind,
        warmup_steps: warmup,
        total_steps: total,
        num_cycles: 0.5,
    }
}

#[test]
fn constant_schedule_warms_up_linearly_from_zero() {
    let s = schedule(ScheduleKind::Constant, 4, None);
    let f: Vec<f64> = [0, 1, 2, 3, 4, 100].iter().map(|&k| s.factor(k)).collect();
    assert_eq!(f, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    // No warmup: the first step already runs at the peak rate.
    assert_eq!(schedule(ScheduleKind::Constant, 0, None).factor(0), 1.0);
    assert_eq!(s.lr(1e-4, 2), 5e-5);
}

#[test]
fn linear_schedule_decays_to_zero_at_total_steps() {
    let s = schedule(ScheduleKind::Linear, 2, Some(10));
    let f: Vec<f64> = [0, 1, 2, 6, 9, 10, 12]
        .iter()
        .map(|&k| s.factor(k))
        .collect();
    assert_eq!(f, [0.0, 0.5, 1.0, 0.5, 0.125, 0.0, 0.0]);
}

#[test]
fn cosine_schedule_follows_half_a_cosine_after_warmup() {
    let s = schedule(ScheduleKind::Cosine, 2, Some(10));
    assert_eq!(s.factor(1), 0.5);
    assert_eq!(s.factor(2), 1.0);
    // progress 0.25: 0.5·(1 + cos(π/4))
    assert!((s.factor(4) - 0.8535533905932737).abs() < 1e-15);
    assert!((s.factor(6) - 0.5).abs() < 1e-15);
    assert!(s.factor(10).abs() < 1e-15);
    // Past totalSteps the cosine rises again, exactly as HF's formula does (it clamps
    // only negative values).
    assert!((s.factor(12) - 0.14644660940672616).abs() < 1e-15);
}

#[test]
fn decaying_schedules_require_total_steps() {
    for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
        let err = schedule(kind, 0, None).validate().unwrap_err().to_string();
        assert!(err.contains("totalSteps"), "{err}");
    }
    schedule(ScheduleKind::Constant, 10, None)
        .validate()
        .unwrap();
}
