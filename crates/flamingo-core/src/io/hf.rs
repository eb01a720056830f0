//! HF model folder layouts (`save_pretrained`): a single `model.safetensors`, safetensors
//! shards listed by `model.safetensors.index.json`, and the older `pytorch_model.bin` (single
//! or sharded by `pytorch_model.bin.index.json`). Safetensors is preferred when both exist,
//! as transformers' `from_pretrained` does.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;

use crate::io::pickle::PickleFile;
use crate::io::{SafetensorsFiles, TensorSource};
use crate::lm::config::read_json;
use crate::{Error, Result};

pub const SAFETENSORS_SINGLE: &str = "model.safetensors";
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
pub const PICKLE_SINGLE: &str = "pytorch_model.bin";
pub const PICKLE_INDEX: &str = "pytorch_model.bin.index.json";

/// Opens the weights of an HF model folder, trying in order `model.safetensors`,
/// `model.safetensors.index.json`, `pytorch_model.bin`, `pytorch_model.bin.index.json`.
pub fn open_weights_dir(dir: &Path) -> Result<Arc<dyn TensorSource>> {
    if !dir.is_dir() {
        return Err(Error::Weights(format!(
            "{} is not a folder (expected an HF model folder with {SAFETENSORS_SINGLE} or {PICKLE_SINGLE})",
            dir.display()
        )));
    }
    let single = dir.join(SAFETENSORS_SINGLE);
    if single.is_file() {
        return Ok(Arc::new(SafetensorsFiles::open(&[single])?));
    }
    let index = dir.join(SAFETENSORS_INDEX);
    if index.is_file() {
        return open_index(&index);
    }
    let single = dir.join(PICKLE_SINGLE);
    if single.is_file() {
        return Ok(Arc::new(PickleFile::open(&single)?));
    }
    let index = dir.join(PICKLE_INDEX);
    if index.is_file() {
        return open_index(&index);
    }
    // Name the formats we saw but cannot read: that is the actionable part of the error.
    let unreadable: Vec<&str> = [
        "tf_model.h5",
        "flax_model.msgpack",
        "model.ckpt.index",
        "consolidated.00.pth",
    ]
    .into_iter()
    .filter(|n| dir.join(n).exists())
    .collect();
    let hint = if unreadable.is_empty() {
        String::new()
    } else {
        format!(
            "; it has {}, which this engine cannot read: convert the model to safetensors (e.g. save_pretrained with safe_serialization=True)",
            unreadable.join(", ")
        )
    };
    Err(Error::Weights(format!(
        "no weights found in {}: looked for {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {PICKLE_SINGLE} and {PICKLE_INDEX}{hint}",
        dir.display()
    )))
}

/// Opens one weights file, choosing the reader by the file's content rather than its name
/// (a `.bin` may well be safetensors, and a `.pt` is always a pickle). A `*.index.json` opens
/// the shards it lists, and a folder is opened as an HF model folder.
pub fn open_weights_file(path: &Path) -> Result<Arc<dyn TensorSource>> {
    if path.is_dir() {
        return open_weights_dir(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".index.json") {
        return open_index(path);
    }
    match sniff(path)? {
        Format::Safetensors => Ok(Arc::new(SafetensorsFiles::open(&[path.to_path_buf()])?)),
        // PickleFile gives the precise error for legacy pickles and truncated zips.
        Format::Pickle => Ok(Arc::new(PickleFile::open(path)?)),
        Format::Unknown => Err(Error::Weights(format!(
            "{} is neither a safetensors file nor a PyTorch (torch.save) file",
            path.display()
        ))),
    }
}

enum Format {
    Safetensors,
    Pickle,
    Unknown,
}

/// safetensors: an 8-byte little-endian header length, then a JSON header starting with `{`.
/// torch.save: a zip (`PK\x03\x04`), or a legacy raw pickle (`\x80`, PROTO).
fn sniff(path: &Path) -> Result<Format> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK") || head.first() == Some(&0x80) {
        return Ok(Format::Pickle);
    }
    if n == 9 && head[8] == b'{' {
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[..8]);
        let header_len = u64::from_le_bytes(len);
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        if header_len > 0 && header_len <= file_len.saturating_sub(8) {
            return Ok(Format::Safetensors);
        }
        return Err(Error::corrupt(
            path,
            format!("a safetensors header of {header_len} bytes does not fit a file of {file_len} bytes (truncated?)"),
        ));
    }
    Ok(Format::Unknown)
}

/// An HF `*.index.json`: `{"weight_map": {"<tensor>": "<shard file>", …}}`.
fn open_index(index: &Path) -> Result<Arc<dyn TensorSource>> {
    let raw = read_json(index)?;
    let Some(map) = raw.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::Weights(format!(
            "{} has no \"weight_map\" object",
            index.display()
        )));
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shard_files: Vec<String> = Vec::new();
    let mut weight_map: HashMap<String, usize> = HashMap::new();
    for (key, file) in map {
        let Some(file) = file.as_str() else {
            return Err(Error::Weights(format!(
                "{}: weight_map[\"{key}\"] is not a file name",
                index.display()
            )));
        };
        let i = match shard_files.iter().position(|f| f == file) {
            Some(i) => i,
            None => {
                shard_files.push(file.to_string());
                shard_files.len() - 1
            }
        };
        weight_map.insert(key.clone(), i);
    }
    let paths: Vec<PathBuf> = shard_files.iter().map(|f| dir.join(f)).collect();
    let missing: Vec<&str> = shard_files
        .iter()
        .zip(&paths)
        .filter(|(_, p)| !p.is_file())
        .map(|(f, _)| f.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Weights(format!(
            "{} lists {} shard(s) that are not in {}: {}",
            index.display(),
            missing.len(),
            dir.display(),
            missing.join(", ")
        )));
    }
    let all_safetensors = shard_files.iter().all(|f| f.ends_with(".safetensors"));
    let shards: Vec<Arc<dyn TensorSource>> = if all_safetensors {
        // One multi-file source: SafetensorsFiles already indexes keys across files.
        vec![Arc::new(SafetensorsFiles::open(&paths)?)]
    } else {
        paths
            .iter()
            .map(|p| open_weights_file(p))
            .collect::<Result<_>>()?
    };
    let merged = ShardedTensors::new(index.display().to_string(), shards);
    // The index is the contract: every tensor it names must be where it says.
    let mut absent: Vec<&String> = weight_map.keys().filter(|k| !merged.contains(k)).collect();
    if !absent.is_empty() {
        absent.sort();
        return Err(Error::Weights(format!(
            "{} lists {} tensor(s) that its shards do not hold, first: {}",
            index.display(),
            absent.len(),
            absent[0]
        )));
    }
    Ok(Arc::new(merged))
}

/// Several sources seen as one (the shards of a sharded pickle checkpoint). A key held by more
/// than one shard is served by the first.
pub struct ShardedTensors {
    name: String,
    shards: Vec<Arc<dyn TensorSource>>,
    /// key -> shard index, and the keys in shard order.
    index: HashMap<String, usize>,
    order: Vec<String>,
}

impl ShardedTensors {
    pub fn new(name: impl Into<String>, shards: Vec<Arc<dyn TensorSource>>) -> Self {
        let mut index = HashMap::new();
        let mut order = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for k in s.keys() {
                if let std::collections::hash_map::Entry::Vacant(e) = index.entry(k.clone()) {
                    e.insert(i);
                    order.push(k);
                }
            }
        }
        Self {
            name: name.into(),
            shards,
            index,
            order,
        }
    }
}

impl TensorSource for ShardedTensors {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn keys(&self) -> Vec<String> {
        self.order.clone()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.index.get(key).and_then(|&i| self.shards[i].shape(key))
    }
    fn load(&self, key: &str) -> Result<Tensor> {
        match self.index.get(key) {
            Some(&i) => self.shards[i].load(key),
            None => Err(Error::Weights(format!(
                "{}: no tensor named {key}",
                self.name
            ))),
        }
    }
}
