//! Gradient parity with the reference OpenFlamingo (open_flamingo 2.0.1, PyTorch 2.11,
//! transformers 5.17, CPU f32): `grad.*` in each family's golden.safetensors is the raw
//! gradient of the golden forward's loss (one backward, before the trainer's row masking),
//! made by shared/golden/tools/make_golden.py with GOLDEN_SEED=2000.
//!
//! Every perceiver and cross-attention gradient is compared, and rows 93 (`<|endofchunk|>`)
//! and 94 (`<image>`) of the input-embedding gradient — for the tied families (opt, mpt)
//! that includes the output head's share.

mod train_support;

use candle_core::{DType, Tensor};
use flamingo_core::train::TrainConfig;
use train_support::*;

/// ≤ 1e-4 absolute, or ≤ 1e-3 relative for entries whose reference magnitude exceeds 0.1.
fn within_tolerance(ours: &Tensor, reference: &Tensor) -> (f32, f32, bool) {
    let a = ours
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a.len(), b.len());
    let (mut max_abs, mut max_rel_big, mut ok) = (0f32, 0f32, true);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        max_abs = max_abs.max(d);
        let rel = d / y.abs().max(f32::MIN_POSITIVE);
        if y.abs() > 0.1 {
            max_rel_big = max_rel_big.max(rel);
        }
        if !(d <= 1e-4 || (y.abs() > 0.1 && rel <= 1e-3)) {
            ok = false;
        }
    }
    (max_abs, max_rel_big, ok)
}

#[test]
fn gradients_of_the_golden_loss_match_the_reference_for_every_family() {
    let mut failures = Vec::new();
    for family in FAMILIES {
        let g = golden(family);
        let trainer = trainer(family, TrainConfig::default());
        let grads = trainer
            .gradients(&golden_input(&g))
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let ref_loss = g["loss"].to_vec1::<f32>().unwrap()[0];
        assert!(
            ((grads.loss - ref_loss) / ref_loss).abs() < 1e-5,
            "{family}: loss {} vs {ref_loss}",
            grads.loss
        );

        let embed_key = format!(
            "grad.lang_encoder.{}",
            trainer.model().lm().info().input_embedding_key
        );
        let (mut worst_abs, mut worst_name, mut worst_rel, mut compared) =
            (0f32, String::new(), 0f32, 0);
        let mut check = |name: &str, ours: &Tensor, reference: &Tensor| {
            let (abs, rel, ok) = within_tolerance(ours, reference);
            if abs > worst_abs {
                worst_abs = abs;
                worst_name = name.to_string();
            }
            worst_rel = worst_rel.max(rel);
            if !ok {
                failures.push(format!(
                    "{family}: {name} max abs err {abs:.3e}, rel {rel:.3e}"
                ));
            }
        };
        let mut reference_names: Vec<&String> =
            g.keys().filter(|k| k.starts_with("grad.")).collect();
        reference_names.sort();
        for key in reference_names {
            let reference = &g[key];
            if *key == embed_key {
                let ids = grads
                    .embedding_row_ids
                    .as_ref()
                    .expect("rows train by default");
                let rows = &grads.by_name[&trainer.embedding_rows_name()];
                for id in [EOC, MEDIA] {
                    let j = ids.iter().position(|&i| i == id).unwrap();
                    check(
                        &format!("{key}[{id}]"),
                        &rows.get(j).unwrap(),
                        &reference.get(id as usize).unwrap(),
                    );
                }
            } else {
                let name = &key["grad.".len()..];
                let ours = grads
                    .by_name
                    .get(name)
                    .unwrap_or_else(|| panic!("{family}: no gradient for {name}"));
                check(name, ours, reference);
            }
            compared += 1;
        }
        // Every trainable tensor has a reference gradient (perceiver, blocks, embedding).
        assert_eq!(
            compared,
            grads.by_name.len(),
            "{family}: gradient sets differ"
        );
        println!(
            "{family}: {compared} gradients, max abs err {worst_abs:.3e} ({worst_name}), max rel err on entries > 0.1: {worst_rel:.3e}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
