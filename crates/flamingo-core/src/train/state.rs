//! Training-state files: how a checkpoint folder is laid out and written so that a crash at
//! any instant leaves the last good checkpoint loadable.
//!
//! A folder holds
//! - `trainer_state.json`: the commit point. Step counts, the configuration, the parameter
//!   list, the caller's opaque data position, and the name, size and FNV-1a-64 hash of …
//! - `trainer_state-step<N>-<nonce>.safetensors`: the trainable weights (`param/<name>`) and
//!   the AdamW moments (`exp_avg/<name>`, `exp_avg_sq/<name>`).
//!
//! A save writes the tensors under a fresh name (temp file, fsync, rename), then the JSON
//! (temp file, fsync, rename over the old one, fsync the folder), and only then deletes
//! older tensor files. Until the JSON rename the old JSON still names the old, untouched
//! tensor file; after it, the new pair is complete. The reference's `torch.save` straight
//! onto `checkpoint_<epoch>.pt` has no such guarantee.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::TrainConfig;
use crate::{Error, Result};

pub const STATE_FILE: &str = "trainer_state.json";
pub const FORMAT: &str = "flamingo-vlm/trainer-state";
pub const VERSION: u32 = 1;
const TENSORS_PREFIX: &str = "trainer_state-step";
const TEMP_PREFIX: &str = ".trainer_state";

/// Fault injection for the crash-safety tests: when this environment variable names a save
/// phase, the process aborts there (as a power cut or `kill -9` would stop it).
pub const CRASH_ENV: &str = "FLAMINGO_TRAIN_CRASH_DURING_SAVE";

/// One optimised tensor as recorded in the state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub weight_decay: f64,
    /// The parameter's own AdamW step count.
    pub step: u64,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    pub format: String,
    pub version: u32,
    /// Optimizer steps taken (= the schedule's position).
    pub step: u64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: u64,
    pub config: TrainConfig,
    pub params: Vec<ParamEntry>,
    /// Token ids of the trainable embedding rows, in the order of their tensor's rows.
    pub embedding_row_ids: Option<Vec<u32>>,
    /// Whatever the caller passed to locate its data stream (epoch, shard, offset, RNG state).
    pub data_position: serde_json::Value,
    /// The configuration's floats as f64 bit patterns (hex): serde_json's default float
    /// parsing is not guaranteed to round-trip the last bit, and a resume must be exact.
    #[serde(default)]
    pub exact_floats: BTreeMap<String, String>,
    pub tensors_file: String,
    pub tensors_bytes: u64,
    /// FNV-1a 64 of the tensors file, hex.
    pub tensors_fnv1a64: String,
}

/// Maps an I/O error on a checkpoint path to an actionable one.
pub fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (the checkpoint folder is not writable: choose another folder or fix its permissions)"
        }
        std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists => {
            " (a file is in the way: the checkpoint path must be a folder)"
        }
        std::io::ErrorKind::StorageFull => " (the disk is full)",
        _ => "",
    };
    Error::io(
        path,
        std::io::Error::new(e.kind(), format!("{what}: {e}{hint}")),
    )
}

/// Creates `dir` if needed and checks it is a writable folder.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(io_err(
            dir,
            "cannot save the training state",
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "cannot create the checkpoint folder", e))
}

/// A temp-file name in `dir` unique to this process and moment.
pub fn temp_path(dir: &Path, final_name: &str) -> PathBuf {
    dir.join(format!(
        "{TEMP_PREFIX}.{final_name}.tmp-{}-{}",
        std::process::id(),
        nonce()
    ))
}

/// Nanoseconds since the epoch, hex: distinguishes saves of the same step.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

pub fn tensors_file_name(step: u64) -> String {
    format!("{TENSORS_PREFIX}{step:08}-{}.safetensors", nonce())
}

/// `fsync` a file (contents and size) or a folder (its entries).
pub fn sync_path(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| io_err(path, "cannot reopen to flush", e))?;
    f.sync_all()
        .map_err(|e| io_err(path, "cannot flush to disk", e))
}

/// Moves a finished temp file into place and makes the rename durable.
pub fn commit(temp: &Path, target: &Path) -> Result<()> {
    std::fs::rename(temp, target).map_err(|e| io_err(target, "cannot move into place", e))?;
    if let Some(dir) = target.parent() {
        // Directory fsync makes the rename itself durable; some filesystems refuse to open
        // a folder for it, which costs durability only, not consistency.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename).
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = temp_path(dir, &name);
    let result = (|| {
        let mut f = File::create(&temp).map_err(|e| io_err(&temp, "cannot create", e))?;
        f.write_all(bytes)
            .map_err(|e| io_err(&temp, "cannot write", e))?;
        f.sync_all()
            .map_err(|e| io_err(&temp, "cannot flush to disk", e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    commit(&temp, target)
}

/// Size and FNV-1a 64 hash of a file, read in chunks.
pub fn file_digest(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| io_err(path, "cannot read", e))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        for &b in &buf[..n] {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok((len, format!("{hash:016x}")))
}

/// Aborts the process if the crash-injection variable names `phase`.
pub fn maybe_crash(phase: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == phase) {
        std::process::abort();
    }
}

/// Deletes tensor files other than `keep` and temp files left by interrupted saves.
pub fn remove_stale(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with(TENSORS_PREFIX) && name.ends_with(".safetensors"))
            || name.starts_with(TEMP_PREFIX);
        if ours && name != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads and checks `trainer_state.json` and its tensors file.
pub fn read_state(dir: &Path) -> Result<(StateFile, PathBuf)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::io(
                &path,
                std::io::Error::new(
                    e.kind(),
                    "no training state here (a folder written by Trainer::save_state holds trainer_state.json)",
                ),
            )
        } else {
            io_err(&path, "cannot read", e)
        }
    })?;
    let state: StateFile = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&path, format!("not a valid training state ({e})")))?;
    if state.format != FORMAT {
        return Err(Error::corrupt(
            &path,
            format!("format is \"{}\", expected \"{FORMAT}\"", state.format),
        ));
    }
    if state.version != VERSION {
        return Err(Error::corrupt(
            &path,
            format!(
                "version {} is not supported (this build reads version {VERSION})",
                state.version
            ),
        ));
    }
    if state.tensors_file.contains(['/', '\\']) || state.tensors_file.starts_with('.') {
        return Err(Error::corrupt(
            &path,
            format!(
                "tensorsFile \"{}\" must be a plain file name",
                state.tensors_file
            ),
        ));
    }
    let tensors = dir.join(&state.tensors_file);
    let (len, hash) = file_digest(&tensors)?;
    if len != state.tensors_bytes || hash != state.tensors_fnv1a64 {
        return Err(Error::corrupt(
            &tensors,
            format!(
                "{len} bytes with hash {hash}, but {STATE_FILE} recorded {} bytes with hash {} (the file was modified or truncated)",
                state.tensors_bytes, state.tensors_fnv1a64
            ),
        ));
    }
    Ok((state, tensors))
}

/// The floats of `cfg` that decide the numerics, by field path.
fn float_fields(cfg: &mut TrainConfig) -> Vec<(&'static str, &mut f64)> {
    let mut fields: Vec<(&'static str, &mut f64)> = vec![
        ("optimizer.lr", &mut cfg.optimizer.lr),
        ("optimizer.beta1", &mut cfg.optimizer.beta1),
        ("optimizer.beta2", &mut cfg.optimizer.beta2),
        ("optimizer.eps", &mut cfg.optimizer.eps),
        ("optimizer.weightDecay", &mut cfg.optimizer.weight_decay),
        ("schedule.numCycles", &mut cfg.schedule.num_cycles),
    ];
    if let Some(n) = cfg.max_grad_norm.as_mut() {
        fields.push(("maxGradNorm", n));
    }
    fields
}

/// Bit patterns of the configuration's floats, for `StateFile::exact_floats`.
pub fn exact_floats(cfg: &TrainConfig) -> BTreeMap<String, String> {
    let mut cfg = cfg.clone();
    float_fields(&mut cfg)
        .into_iter()
        .map(|(k, v)| (k.to_string(), format!("{:016x}", v.to_bits())))
        .collect()
}

/// Puts back the exact bits of each float whose decimal in the JSON still denotes it (a
/// value someone edited by hand keeps the edit).
pub fn restore_exact_floats(cfg: &mut TrainConfig, exact: &BTreeMap<String, String>) {
    for (key, value) in float_fields(cfg) {
        let Some(bits) = exact.get(key).and_then(|h| u64::from_str_radix(h, 16).ok()) else {
            continue;
        };
        let precise = f64::from_bits(bits);
        if (*value - precise).abs() <= precise.abs() * 1e-15 {
            *value = precise;
        }
    }
}
