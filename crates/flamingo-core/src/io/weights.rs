//! Named tensors from files, and the `Weights` view that models load their parameters from.
//!
//! A `TensorSource` knows which names exist, their shapes, and how to materialise one;
//! `Weights` adds a key prefix (`w.pp("model").pp("layers.0")`), a target dtype and device,
//! and shape checks whose errors name the key, the file and both shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// Anything that can hand out named tensors.
pub trait TensorSource: Send + Sync {
    /// Where the tensors come from, for error messages (a path or a description).
    fn describe(&self) -> String;
    /// Every tensor name this source holds.
    fn keys(&self) -> Vec<String>;
    /// The shape of `key`, if present, without loading it.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// Loads `key` on the CPU in its stored dtype.
    fn load(&self, key: &str) -> Result<Tensor>;
    fn contains(&self, key: &str) -> bool {
        self.shape(key).is_some()
    }
}

/// Tensors held in memory (tests, trainable parameters, converted checkpoints).
#[derive(Clone, Default)]
pub struct MemoryTensors {
    name: String,
    tensors: HashMap<String, Tensor>,
}

impl MemoryTensors {
    pub fn new(name: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            name: name.into(),
            tensors,
        }
    }

    pub fn insert(&mut self, key: impl Into<String>, t: Tensor) {
        self.tensors.insert(key.into(), t);
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }
}

impl TensorSource for MemoryTensors {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.dims().to_vec())
    }
    fn load(&self, key: &str) -> Result<Tensor> {
        self.tensors
            .get(key)
            .cloned()
            .ok_or_else(|| Error::Weights(format!("{}: no tensor named {key}", self.name)))
    }
}

struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

/// One or more memory-mapped safetensors files (a single file or the shards of an index).
pub struct SafetensorsFiles {
    files: Vec<MappedFile>,
    /// key -> (file index, shape)
    index: HashMap<String, (usize, Vec<usize>)>,
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only; weights files are not modified while loaded.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::corrupt(path, format!("not a valid safetensors file ({e})")))?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.shape().to_vec()));
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
            });
        }
        Ok(Self { files, index })
    }
}

impl TensorSource for SafetensorsFiles {
    fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!(
                "{} safetensors shards in {}",
                many.len(),
                many.first()
                    .and_then(|f| f.path.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
    fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.index.get(key).map(|(_, s)| s.clone())
    }
    fn load(&self, key: &str) -> Result<Tensor> {
        let (i, _) = self
            .index
            .get(key)
            .ok_or_else(|| Error::Weights(format!("{}: no tensor named {key}", self.describe())))?;
        let f = &self.files[*i];
        let st = safetensors::SafeTensors::deserialize(&f.mmap)
            .map_err(|e| Error::corrupt(&f.path, e.to_string()))?;
        let view = st
            .tensor(key)
            .map_err(|e| Error::corrupt(&f.path, format!("{key}: {e}")))?;
        Tensor::from_raw_buffer(
            view.data(),
            convert_dtype(view.dtype(), &f.path)?,
            view.shape(),
            &Device::Cpu,
        )
        .map_err(|e| Error::corrupt(&f.path, format!("{key}: {e}")))
    }
}

fn convert_dtype(dt: safetensors::Dtype, path: &Path) -> Result<DType> {
    use safetensors::Dtype as S;
    Ok(match dt {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        S::BOOL => DType::U8,
        other => {
            return Err(Error::Weights(format!(
                "{}: unsupported tensor dtype {other:?}",
                path.display()
            )))
        }
    })
}

/// A view of a tensor source under a key prefix, loading into one dtype on one device.
#[derive(Clone)]
pub struct Weights {
    source: Arc<dyn TensorSource>,
    prefix: String,
    dtype: DType,
    device: Device,
    /// Elements loaded through this view and every view derived from it (parameter counts).
    loaded: Arc<std::sync::atomic::AtomicU64>,
}

impl Weights {
    pub fn new(source: Arc<dyn TensorSource>, dtype: DType, device: &Device) -> Self {
        Self {
            source,
            prefix: String::new(),
            dtype,
            device: device.clone(),
            loaded: Arc::default(),
        }
    }

    /// Tensors from memory, e.g. in tests.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::new(
            Arc::new(MemoryTensors::new("in-memory tensors", tensors)),
            dtype,
            device,
        )
    }

    /// A child view: `w.pp("model").pp("layers.0")` reads `model.layers.0.*`.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The full key of `name` under this view's prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn source(&self) -> &Arc<dyn TensorSource> {
        &self.source
    }

    /// The same source and prefix, loading into another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        Self {
            dtype,
            ..self.clone()
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.source.shape(&self.key(name))
    }

    /// Loads `name` and checks its shape.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let shape: Shape = shape.into();
        let key = self.key(name);
        match self.source.shape(&key) {
            None => Err(Error::Weights(format!(
                "weight {key} is missing from {}",
                self.source.describe()
            ))),
            Some(found) if found != shape.dims() => Err(Error::Weights(format!(
                "weight {key} in {} has shape {:?}, but the config implies {:?}",
                self.source.describe(),
                found,
                shape.dims()
            ))),
            Some(_) => self.load_converted(&key),
        }
    }

    /// Loads `name` whatever its shape.
    pub fn get_unchecked(&self, name: &str) -> Result<Tensor> {
        let key = self.key(name);
        if !self.source.contains(&key) {
            return Err(Error::Weights(format!(
                "weight {key} is missing from {}",
                self.source.describe()
            )));
        }
        self.load_converted(&key)
    }

    /// Number of tensor elements loaded through this view and its children so far.
    pub fn loaded_elements(&self) -> u64 {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn load_converted(&self, key: &str) -> Result<Tensor> {
        let t = self.source.load(key)?;
        self.loaded
            .fetch_add(t.elem_count() as u64, std::sync::atomic::Ordering::Relaxed);
        let t = if t.dtype() != self.dtype && t.dtype().is_float() {
            t.to_dtype(self.dtype)?
        } else {
            t
        };
        Ok(t.to_device(&self.device)?)
    }
}

/// `overrides` shadow `base` for every key they hold — the caller decides which checkpoint
/// tensors apply (the reference's `load_state_dict(strict=False)` over a pretrained LM).
pub struct Overlay {
    pub base: Arc<dyn TensorSource>,
    pub overrides: Arc<dyn TensorSource>,
}

impl TensorSource for Overlay {
    fn describe(&self) -> String {
        format!(
            "{} (with overrides from {})",
            self.base.describe(),
            self.overrides.describe()
        )
    }
    fn keys(&self) -> Vec<String> {
        let mut k = self.base.keys();
        for o in self.overrides.keys() {
            if !self.base.contains(&o) {
                k.push(o);
            }
        }
        k
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.overrides.shape(key).or_else(|| self.base.shape(key))
    }
    fn load(&self, key: &str) -> Result<Tensor> {
        if self.overrides.contains(key) {
            self.overrides.load(key)
        } else {
            self.base.load(key)
        }
    }
}
