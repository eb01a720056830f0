//! Training state: resuming continues bit-identically, a crash during a save never costs
//! the last good checkpoint, bad folders fail clearly, and exported weights load back as
//! an OpenFlamingo checkpoint.

mod train_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use flamingo_core::flamingo::model::Flamingo;
use flamingo_core::train::state::CRASH_ENV;
use flamingo_core::train::{
    MicroBatch, ScheduleConfig, ScheduleKind, TrainConfig, Trainer, WeightedInput,
};
use serde_json::json;
use train_support::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Warmup then cosine, accumulation over two weighted micro-batches: every piece of state
/// a resume must carry matters.
fn cfg() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.optimizer.lr = 1e-3;
    cfg.schedule = ScheduleConfig {
        kind: ScheduleKind::Cosine,
        warmup_steps: 3,
        total_steps: Some(10),
        num_cycles: 0.5,
    };
    cfg
}

fn run_steps(t: &mut Trainer, family: &str, steps: std::ops::Range<usize>) -> Vec<u64> {
    let g = golden(family);
    steps
        .map(|s| {
            let stats = t
                .step(&[
                    MicroBatch::new(vec![WeightedInput::new(batch(&g, 2 * s), 0.2, "laion")]),
                    MicroBatch::new(vec![WeightedInput::new(batch(&g, 2 * s + 1), 1.0, "mmc4")]),
                ])
                .unwrap();
            stats.loss.to_bits()
        })
        .collect()
}

fn snapshot(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<_> = t
        .parameters()
        .iter()
        .map(|(k, v)| (k.clone(), bits(v)))
        .collect();
    for p in t.optimizer().params() {
        out.push((format!("m/{}", p.name), bits(&p.exp_avg)));
        out.push((format!("v/{}", p.name), bits(&p.exp_avg_sq)));
    }
    out
}

#[test]
fn ten_steps_straight_equal_five_saved_reloaded_into_a_fresh_model_and_five_more() {
    for family in ["llama", "opt"] {
        let dir = scratch(&format!("resume-{family}"));
        let mut straight = trainer(family, cfg());
        let losses_straight = run_steps(&mut straight, family, 0..10);

        let mut first = trainer(family, cfg());
        let mut losses = run_steps(&mut first, family, 0..5);
        first
            .save_state(&dir, &json!({"epoch": 0, "batch": 10}))
            .unwrap();
        drop(first);

        // A fresh model from the files, a trainer with another configuration: the saved
        // one wins, as torch's load_state_dict does.
        let mut other = TrainConfig::default();
        other.optimizer.lr = 0.5;
        let mut resumed = Trainer::new(load(family), other).unwrap();
        let info = resumed.load_state(&dir).unwrap();
        assert_eq!(info.step, 5);
        assert_eq!(info.data_position, json!({"epoch": 0, "batch": 10}));
        assert_eq!(resumed.config(), &cfg());
        losses.extend(run_steps(&mut resumed, family, 5..10));

        assert_eq!(
            losses, losses_straight,
            "{family}: losses differ after resuming"
        );
        assert_eq!(
            snapshot(&resumed),
            snapshot(&straight),
            "{family}: weights or moments differ"
        );
        assert_eq!(resumed.step_count(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn state_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn leftovers_of_an_interrupted_save_do_not_affect_loading_and_are_cleaned_up() {
    let dir = scratch("partial");
    let g = golden("llama");
    let mut t = trainer("llama", cfg());
    t.step(&[two_part(&g, 0)]).unwrap();
    t.save_state(&dir, &json!(1)).unwrap();
    let saved = snapshot(&t);
    // What a save killed half-way leaves: a truncated temp JSON and a partial tensor file
    // that the committed JSON does not name.
    std::fs::write(
        dir.join(".trainer_state.trainer_state.json.tmp-1-0"),
        b"{\"format\": \"flam",
    )
    .unwrap();
    std::fs::write(
        dir.join("trainer_state-step00000002-0.safetensors"),
        [0u8; 100],
    )
    .unwrap();

    let mut fresh = trainer("llama", cfg());
    let info = fresh.load_state(&dir).unwrap();
    assert_eq!((info.step, info.data_position), (1, json!(1)));
    assert_eq!(snapshot(&fresh), saved);

    fresh.step(&[two_part(&g, 1)]).unwrap();
    fresh.save_state(&dir, &json!(2)).unwrap();
    let names = state_files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"trainer_state.json".to_string()));
    assert!(names
        .iter()
        .any(|n| n.starts_with("trainer_state-step00000002-")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Not a test on its own: the body of the child process that `a_save_killed_mid_way...`
/// starts; without the environment it names it returns at once.
#[test]
fn crash_helper_child_process_trains_and_saves() {
    let Ok(dir) = std::env::var("FLAMINGO_TEST_CRASH_DIR") else {
        return;
    };
    let g = golden("llama");
    let mut t = trainer("llama", cfg());
    for s in 0..3 {
        t.step(&[two_part(&g, s)]).unwrap();
    }
    t.save_state(Path::new(&dir), &json!({"step": 3})).unwrap();
    unreachable!("the save should have aborted at the injected crash point");
}

#[test]
fn a_save_killed_mid_way_leaves_the_previous_checkpoint_loadable() {
    let g = golden("llama");
    for phase in ["tensors-written", "before-commit"] {
        let dir = scratch(&format!("crash-{phase}"));
        let mut t = trainer("llama", cfg());
        for s in 0..2 {
            t.step(&[two_part(&g, s)]).unwrap();
        }
        t.save_state(&dir, &json!({"step": 2})).unwrap();
        let saved = snapshot(&t);
        let before = state_files(&dir);

        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_helper_child_process_trains_and_saves",
                "--test-threads=1",
            ])
            .env("FLAMINGO_TEST_CRASH_DIR", &dir)
            .env(CRASH_ENV, phase)
            .output()
            .unwrap();
        assert!(
            !status.status.success(),
            "{phase}: the child was meant to die in its save"
        );
        // The child got as far as the phase: new files exist beside the old ones.
        let after = state_files(&dir);
        assert!(after.len() > before.len(), "{phase}: {after:?}");

        let mut fresh = trainer("llama", cfg());
        let info = fresh.load_state(&dir).unwrap();
        assert_eq!(
            (info.step, info.data_position),
            (2, json!({"step": 2})),
            "{phase}"
        );
        assert_eq!(snapshot(&fresh), saved, "{phase}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn hyper_parameters_survive_the_state_file_bit_for_bit_and_hand_edits_win() {
    let dir = scratch("floats");
    let mut c = cfg();
    c.optimizer.lr = 1e-3 / 3.0;
    c.optimizer.eps = 1e-8 / 7.0;
    c.optimizer.beta2 = 0.999_000_000_000_000_1;
    c.max_grad_norm = Some(std::f64::consts::FRAC_1_SQRT_2);
    trainer("llama", c.clone())
        .save_state(&dir, &json!(null))
        .unwrap();
    let mut t = trainer("llama", cfg());
    t.load_state(&dir).unwrap();
    let got = t.config().clone();
    assert_eq!(got.optimizer.lr.to_bits(), c.optimizer.lr.to_bits());
    assert_eq!(got.optimizer.eps.to_bits(), c.optimizer.eps.to_bits());
    assert_eq!(got.optimizer.beta2.to_bits(), c.optimizer.beta2.to_bits());
    assert_eq!(got, c);

    // Someone edits the learning rate in the JSON before resuming: the edit applies.
    let path = dir.join("trainer_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["config"]["optimizer"]["lr"] = json!(0.5);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    t.load_state(&dir).unwrap();
    assert_eq!(t.config().optimizer.lr, 0.5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_modified_tensor_file_is_reported_as_corrupt_and_the_trainer_is_left_as_it_was() {
    let dir = scratch("corrupt");
    let t = trainer("mpt", cfg());
    t.save_state(&dir, &json!(null)).unwrap();
    let tensors = state_files(&dir)
        .into_iter()
        .find(|n| n.ends_with(".safetensors"))
        .unwrap();
    let path = dir.join(tensors);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let mut fresh = trainer("mpt", cfg());
    let before = snapshot(&fresh);
    let err = fresh.load_state(&dir).unwrap_err();
    assert_eq!(err.code(), "ERR_CORRUPT_FILE");
    assert!(err.to_string().contains("modified or truncated"), "{err}");
    assert_eq!(snapshot(&fresh), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_saved_for_other_trainable_tensors_is_refused() {
    let dir = scratch("mismatch");
    trainer("llama", cfg())
        .save_state(&dir, &json!(null))
        .unwrap();
    let frozen_rows = TrainConfig {
        freeze_lm_embeddings: true,
        ..cfg()
    };
    let err = trainer("llama", frozen_rows).load_state(&dir).unwrap_err();
    assert_eq!(err.code(), "ERR_CHECKPOINT");
    assert!(err.to_string().contains("freezeLmEmbeddings"), "{err}");
    let err = trainer("opt", cfg())
        .load_state(&dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other trainable parameters"), "{err}");
    let err = trainer("opt", cfg())
        .load_state(&scratch("empty"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no training state here"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saving_into_a_folder_that_cannot_be_written_fails_with_a_clear_error() {
    let t = trainer("llama", cfg());
    // A file where the folder should be.
    let file = scratch("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = t.save_state(&file, &json!(null)).unwrap_err();
    assert_eq!(err.code(), "ERR_IO");
    assert!(err.to_string().contains("must be a folder"), "{err}");
    let err = t.save_state(&file.join("sub"), &json!(null)).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot create the checkpoint folder"),
        "{err}"
    );
    std::fs::remove_file(&file).unwrap();

    // A folder without write permission (for root, which ignores permission bits, a
    // folder of the kernel's read-only sysfs).
    let ro = scratch("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let target = if std::fs::write(ro.join("probe"), b"").is_ok() {
        PathBuf::from("/sys/kernel/flamingo-train-test")
    } else {
        ro.clone()
    };
    let err = t.save_state(&target, &json!(null)).unwrap_err();
    assert_eq!(err.code(), "ERR_IO");
    let msg = err.to_string();
    assert!(msg.contains(&*target.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("not writable") || msg.contains("Read-only"),
        "{msg}"
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&ro).unwrap();
}

#[test]
fn exported_weights_load_back_as_an_openflamingo_checkpoint() {
    for family in FAMILIES {
        let g = golden(family);
        let mut t = trainer(family, cfg());
        t.step(&[two_part(&g, 0)]).unwrap();
        t.step(&[two_part(&g, 1)]).unwrap();
        let dir = scratch(&format!("export-{family}"));
        let path = dir.join("checkpoint.safetensors");
        t.export_checkpoint(&path).unwrap();

        let reloaded = Flamingo::load(&spec(family, Some(path.clone())), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        // The bridge, bit for bit.
        let trained = t.parameters();
        for (name, value) in reloaded.bridge_tensors() {
            assert_eq!(bits(value), bits(&trained[name]), "{family}: {name}");
        }
        assert_eq!(reloaded.bridge_tensors().len() + 1, trained.len());
        // The embedding: the trained rows, and the LM's rows elsewhere.
        assert_eq!(
            bits(reloaded.lm().input_embeddings()),
            bits(&t.effective_input_embeddings().unwrap()),
            "{family}: embedding"
        );
        let rows = &trained[&t.embedding_rows_name()];
        for (j, id) in [EOC, MEDIA].into_iter().enumerate() {
            assert_eq!(
                bits(&reloaded.lm().input_embeddings().get(id as usize).unwrap()),
                bits(&rows.get(j).unwrap()),
                "{family}: row {id}"
            );
        }
        // Same predictions as the model that was trained.
        let input = golden_input(&g);
        let ours = t.model().forward(&input).unwrap().logits;
        let back = reloaded.forward(&input).unwrap().logits;
        let err = max_abs_diff(&ours, &back);
        assert!(err < 1e-5, "{family}: logits differ by {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_model_handed_back_after_training_predicts_like_the_trainer_without_tracking() {
    let g = golden("opt");
    let mut t = trainer("opt", cfg());
    t.step(&[two_part(&g, 0)]).unwrap();
    let input = golden_input(&g);
    let during = t.model().forward(&input).unwrap().logits;
    let trained_rows = t.parameters()[&t.embedding_rows_name()].clone();
    let model = t.into_model().unwrap();
    let after = model.forward(&input).unwrap().logits;
    assert!(
        !after.track_op(),
        "the returned model still records a graph"
    );
    assert!(max_abs_diff(&during, &after) < 1e-5);
    // Training it again starts from the trained rows.
    let t2 = Trainer::new(model, cfg()).unwrap();
    let again = t2.model().forward(&input).unwrap().logits;
    assert!(max_abs_diff(&during, &again) < 1e-5);
    // Training on with frozen embeddings keeps (and exports) the rows trained before.
    let frozen = Trainer::new(
        t2.into_model().unwrap(),
        TrainConfig {
            freeze_lm_embeddings: true,
            ..cfg()
        },
    )
    .unwrap();
    let table = frozen.effective_input_embeddings().unwrap();
    for (j, id) in [EOC, MEDIA].into_iter().enumerate() {
        assert_eq!(
            bits(&table.get(id as usize).unwrap()),
            bits(&trained_rows.get(j).unwrap())
        );
    }
}
