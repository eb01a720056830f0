//! Behaviour of `Trainer::step` on the golden tiny models: which tensors learn, which stay
//! frozen, loss weighting and accumulation, clipping, and non-finite losses.

mod train_support;

use flamingo_core::train::{
    ClipMode, MicroBatch, NonFinitePolicy, TrainConfig, WeightedInput, DECAY_GROUP_MARKER,
};
use train_support::*;

fn fast() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.optimizer.lr = 1e-3;
    cfg
}

fn snapshot(t: &flamingo_core::train::Trainer) -> Vec<(String, Vec<u32>)> {
    t.parameters()
        .iter()
        .map(|(k, v)| (k.clone(), bits(v)))
        .collect()
}

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient_on_a_batch_that_uses_them_all() {
    // The golden batch has both images in each row, <image> and <|endofchunk|> tokens, and
    // text after each image, so every perceiver layer, every block and both rows matter.
    for family in FAMILIES {
        let g = golden(family);
        let trainer = trainer(family, TrainConfig::default());
        let grads = trainer.gradients(&golden_input(&g)).unwrap();
        assert_eq!(grads.by_name.len(), trainer.parameters().len(), "{family}");
        for (name, grad) in &grads.by_name {
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{family}: {name} has gradient norm² {norm}"
            );
        }
        // Both embedding rows, each non-zero on its own.
        let rows = &grads.by_name[&trainer.embedding_rows_name()];
        for j in 0..2 {
            let n = rows.get(j).unwrap().abs().unwrap().sum_all().unwrap();
            assert!(n.to_scalar::<f32>().unwrap() > 0.0, "{family}: row {j}");
        }
    }
}

#[test]
fn frozen_weights_are_bit_identical_after_three_optimizer_steps() {
    for family in ["llama", "mpt"] {
        let g = golden(family);
        let mut trainer = trainer(family, fast());
        let model = trainer.model();
        let vision_before = bits(&model.vision_tokens(&g["vision_x"]).unwrap());
        let lm_before = bits(&lm_only_logits(model));
        let table_before = bits(model.lm().input_embeddings());
        let trainable_before = snapshot(&trainer);

        for s in 0..3 {
            let stats = trainer.step(&[two_part(&g, s)]).unwrap();
            assert!(
                !stats.skipped && stats.loss.is_finite(),
                "{family}: {stats:?}"
            );
            assert_eq!(stats.step, s as u64 + 1);
        }

        let model = trainer.model();
        assert_eq!(
            bits(&model.vision_tokens(&g["vision_x"]).unwrap()),
            vision_before,
            "{family}: vision tower changed"
        );
        assert_eq!(
            bits(&lm_only_logits(model)),
            lm_before,
            "{family}: LM weights changed"
        );
        assert_eq!(
            bits(model.lm().input_embeddings()),
            table_before,
            "{family}: the frozen embedding table changed"
        );
        // ... while every trainable tensor moved.
        for ((name, before), (_, after)) in trainable_before.iter().zip(snapshot(&trainer)) {
            assert_ne!(before, &after, "{family}: {name} did not change");
        }
    }
}

#[test]
fn weight_decay_applies_only_to_gated_cross_attention_tensors() {
    let trainer = trainer("opt", TrainConfig::default());
    let mut decayed = 0;
    for p in trainer.optimizer().params() {
        let expected = if p.name.contains(DECAY_GROUP_MARKER) {
            0.1
        } else {
            0.0
        };
        assert_eq!(p.weight_decay, expected, "{}", p.name);
        decayed += p.name.contains(DECAY_GROUP_MARKER) as usize;
    }
    // opt has blocks before layers 1 (n = 2, 3 layers): 11 tensors in one block.
    assert_eq!(decayed, 11);
    assert!(trainer
        .parameters()
        .contains_key("lang_encoder.model.decoder.embed_tokens.weight.rows"));
}

#[test]
fn frozen_embeddings_leave_only_the_bridge_trainable() {
    let cfg = TrainConfig {
        freeze_lm_embeddings: true,
        ..TrainConfig::default()
    };
    let g = golden("llama");
    let mut t = trainer("llama", cfg);
    assert!(t
        .parameters()
        .keys()
        .all(|k| k.starts_with("perceiver.") || k.contains(DECAY_GROUP_MARKER)));
    let table = bits(t.model().lm().input_embeddings());
    t.step(&[MicroBatch::new(vec![WeightedInput::new(
        golden_input(&g),
        1.0,
        "mmc4",
    )])])
    .unwrap();
    assert_eq!(bits(t.model().lm().input_embeddings()), table);
    let out = t.model().forward(&golden_input(&g)).unwrap();
    assert!(out.loss.unwrap().to_scalar::<f32>().unwrap().is_finite());
}

#[test]
fn loss_multipliers_and_accumulation_weight_each_backward_like_the_reference() {
    // Two micro-batches [A], [B] backpropagate A/2 and B/2; one micro-batch
    // [A ×0.5, B ×0.5] backpropagates A·0.5 and B·0.5: the same gradients, bit for bit
    // (halving is exact), so the same update. Clipping once keeps the comparison exact.
    let g = golden("gpt_neox");
    let cfg = TrainConfig {
        clip_mode: ClipMode::BeforeStep,
        ..fast()
    };
    let mut accumulated = trainer("gpt_neox", cfg.clone());
    let mut weighted = trainer("gpt_neox", cfg);
    let (a, b) = (batch(&g, 1), batch(&g, 2));
    let s1 = accumulated
        .step(&[
            MicroBatch::new(vec![WeightedInput::new(a.clone(), 1.0, "a")]),
            MicroBatch::new(vec![WeightedInput::new(b.clone(), 1.0, "b")]),
        ])
        .unwrap();
    let s2 = weighted
        .step(&[MicroBatch::new(vec![
            WeightedInput::new(a, 0.5, "a"),
            WeightedInput::new(b, 0.5, "b"),
        ])])
        .unwrap();
    assert_eq!(s1.grad_norm, s2.grad_norm);
    assert_eq!(s1.loss, s2.loss);
    assert_eq!(s1.parts.len(), 2);
    assert_eq!((s1.parts[1].micro_batch, s2.parts[1].micro_batch), (1, 0));
    assert_eq!(snapshot(&accumulated), snapshot(&weighted));
    // The objective is Σ loss · multiplier / micro-batches.
    let want = (s1.parts[0].loss + s1.parts[1].loss) / 2.0;
    assert!((s1.loss - want).abs() < 1e-12);
    assert_eq!(s1.samples, 4);
}

#[test]
fn reported_gradient_norm_is_the_global_norm_before_clipping() {
    let g = golden("llama");
    let input = batch(&g, 0);
    let mut t = trainer("llama", fast());
    let grads = t.gradients(&input).unwrap();
    let norm: f64 = grads
        .by_name
        .values()
        .map(|g| {
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        })
        .sum::<f64>()
        .sqrt();
    let stats = t
        .step(&[MicroBatch::new(vec![WeightedInput::new(input, 1.0, "x")])])
        .unwrap();
    assert!(
        ((stats.grad_norm - norm) / norm).abs() < 1e-5,
        "{} vs {norm}",
        stats.grad_norm
    );
    assert_eq!(stats.lr, 1e-3);
}

#[test]
fn clipping_every_micro_batch_differs_from_clipping_once_only_under_accumulation() {
    let g = golden("mpt");
    let run = |mode: ClipMode, micro: usize| {
        let mut t = trainer(
            "mpt",
            TrainConfig {
                clip_mode: mode,
                max_grad_norm: Some(0.05),
                ..fast()
            },
        );
        let mbs: Vec<MicroBatch> = (0..micro)
            .map(|i| MicroBatch::new(vec![WeightedInput::new(batch(&g, i), 1.0, "x")]))
            .collect();
        let stats = t.step(&mbs).unwrap();
        (stats.grad_norm, snapshot(&t))
    };
    let (n1, every1) = run(ClipMode::EveryMicroBatch, 1);
    let (n2, once1) = run(ClipMode::BeforeStep, 1);
    assert_eq!(n1, n2);
    assert_eq!(every1, once1);
    let (_, every2) = run(ClipMode::EveryMicroBatch, 2);
    let (_, once2) = run(ClipMode::BeforeStep, 2);
    assert_ne!(every2, once2);
}

#[test]
fn an_all_masked_batch_is_an_error_by_default_and_changes_nothing() {
    let g = golden("opt");
    let mut t = trainer("opt", fast());
    let before = snapshot(&t);
    let err = t
        .step(&[MicroBatch::new(vec![
            WeightedInput::new(golden_input(&g), 0.2, "laion"),
            WeightedInput::new(all_masked(&g), 1.0, "mmc4"),
        ])])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("every label is -100") && msg.contains("mmc4"),
        "{msg}"
    );
    assert!(msg.contains("nothing was updated"), "{msg}");
    assert_eq!(snapshot(&t), before);
    assert_eq!(t.step_count(), 0);
}

#[test]
fn the_skip_policy_drops_the_whole_step_and_counts_it() {
    let g = golden("opt");
    let mut t = trainer(
        "opt",
        TrainConfig {
            non_finite: NonFinitePolicy::Skip,
            ..fast()
        },
    );
    let before = snapshot(&t);
    let stats = t
        .step(&[MicroBatch::new(vec![
            WeightedInput::new(golden_input(&g), 0.2, "laion"),
            WeightedInput::new(all_masked(&g), 1.0, "mmc4"),
        ])])
        .unwrap();
    assert!(stats.skipped, "{stats:?}");
    assert!(stats.skip_reason.unwrap().contains("mmc4"));
    assert_eq!((t.step_count(), t.skipped_steps()), (0, 1));
    // The LAION part's gradient was dropped too (the reference's zero_grad).
    assert_eq!(snapshot(&t), before);
    // The next step is an ordinary first step.
    let stats = t.step(&[two_part(&g, 0)]).unwrap();
    assert_eq!(stats.step, 1);
}

#[test]
fn a_batch_without_labels_is_rejected_with_a_clear_message() {
    let g = golden("llama");
    let mut t = trainer("llama", fast());
    let mut input = golden_input(&g);
    input.labels = None;
    let msg = t
        .step(&[MicroBatch::new(vec![WeightedInput::new(input, 1.0, "x")])])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("needs labels"), "{msg}");
    let msg = t.step(&[]).unwrap_err().to_string();
    assert!(msg.contains("at least one micro-batch"), "{msg}");
}

#[test]
fn warmup_starts_the_first_step_at_rate_zero_as_the_reference_scheduler_does() {
    let g = golden("llama");
    let mut cfg = fast();
    cfg.schedule.warmup_steps = 2;
    let mut t = trainer("llama", cfg);
    let before = snapshot(&t);
    let s = t.step(&[two_part(&g, 0)]).unwrap();
    assert_eq!(s.lr, 0.0);
    // lr 0: AdamW moves nothing (decay factor 1, step size 0).
    assert_eq!(snapshot(&t), before);
    assert_eq!(t.step(&[two_part(&g, 1)]).unwrap().lr, 5e-4);
    assert_eq!(t.next_lr(), 1e-3);
}

#[test]
fn a_fixed_accumulation_divisor_scales_a_short_last_group_like_the_reference() {
    // The reference divides by --gradient_accumulation_steps even when an epoch ends with
    // fewer micro-batches: one micro-batch with divisor 2 backpropagates A/2, the same as
    // A ×0.5 with divisor 1.
    let g = golden("llama");
    let a = batch(&g, 3);
    let mut fixed = trainer(
        "llama",
        TrainConfig {
            gradient_accumulation_steps: Some(2),
            ..fast()
        },
    );
    let mut halved = trainer("llama", fast());
    let s1 = fixed
        .step(&[MicroBatch::new(vec![WeightedInput::new(
            a.clone(),
            1.0,
            "a",
        )])])
        .unwrap();
    let s2 = halved
        .step(&[MicroBatch::new(vec![WeightedInput::new(
            a.clone(),
            0.5,
            "a",
        )])])
        .unwrap();
    assert_eq!(s1.loss, s2.loss);
    assert_eq!(snapshot(&fixed), snapshot(&halved));
    let three: Vec<MicroBatch> = (0..3)
        .map(|_| MicroBatch::new(vec![WeightedInput::new(a.clone(), 1.0, "a")]))
        .collect();
    let msg = fixed.step(&three).unwrap_err().to_string();
    assert!(msg.contains("gradientAccumulationSteps is 2"), "{msg}");
}
