//! PyTorch `.pt`/`.bin` files (`torch.save` ≥ 1.6: a zip holding `<archive>/data.pkl` and one
//! `<archive>/data/<key>` entry per storage), read by a small pickle machine written from the
//! pickle protocol spec (CPython `Lib/pickletools.py`) that never executes anything.
//!
//! A pickle is a program: `GLOBAL` imports any callable and `REDUCE` calls it, which is how
//! `torch.load` of an untrusted file runs arbitrary code. Here globals resolve only against an
//! allow-list of the names `torch.save` uses to describe tensors (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, storage types, …); anything else stops the parse with
//! [`Error::UnsafePickle`] at the opcode that names it. The allow-listed callables are never
//! called either: `REDUCE` on them builds a symbolic value (an empty dict, a tensor
//! description), and storages are persistent ids that only name a zip entry.
//!
//! Opening a file parses `data.pkl` once and keeps, per tensor, its storage entry, dtype,
//! offset, shape and strides; [`TensorSource::load`] then reads only that storage's entry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::io::TensorSource;
use crate::{Error, Result};

/// The element type of a torch storage, as named by its pickled storage class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// `torch.FloatStorage` and friends: the class names torch pickles for typed storages.
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// `torch.float32` and friends (pickled as `torch` module attributes).
    fn from_dtype_name(name: &str) -> Option<Self> {
        Some(match name {
            "float32" | "float" => Self::F32,
            "float64" | "double" => Self::F64,
            "float16" | "half" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" | "long" => Self::I64,
            "int32" | "int" => Self::I32,
            "int16" | "short" => Self::I16,
            "int8" => Self::I8,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            _ => return None,
        })
    }
}

/// The globals a `torch.save`d state dict may reference. Everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch._tensor.Tensor` / `torch.Tensor`: only as the `new_type` of `_rebuild_from_type_v2`.
    TensorClass,
    /// `torch.nn.parameter.Parameter`: likewise.
    ParameterClass,
    StorageClass(StorageDtype),
    Dtype(StorageDtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Self::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Self::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Self::RebuildFromTypeV2,
            ("torch._tensor", "Tensor") | ("torch", "Tensor") => Self::TensorClass,
            ("torch.nn.parameter", "Parameter") => Self::ParameterClass,
            ("torch", n) => {
                if let Some(d) = StorageDtype::from_storage_class(n) {
                    Self::StorageClass(d)
                } else {
                    Self::Dtype(StorageDtype::from_dtype_name(n)?)
                }
            }
            _ => return None,
        })
    }
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: StorageDtype,
}

/// What `_rebuild_tensor_v2(storage, offset, size, stride, …)` describes.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A value on the pickle machine's stack. Containers are shared (`Rc`) because the memo and
/// the stack refer to the same object, which later opcodes (`SETITEMS`, `APPENDS`) fill in.
#[derive(Clone, Debug)]
enum Value {
    None,
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Values a state dict carries but tensors never need (floats, bools, bytes).
    Opaque(&'static str),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Int(_) => "int",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Opaque(kind) => kind,
        }
    }
}

/// The pickle virtual machine: a stack, a mark stack and a memo, over `data.pkl`'s bytes.
struct Machine<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(path: &'a Path, data: &'a [u8]) -> Self {
        Self {
            path,
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn corrupt(&self, message: impl std::fmt::Display) -> Error {
        Error::corrupt(self.path, format!("data.pkl, byte {}: {message}", self.pos))
    }

    fn unsafe_pickle(&self, message: impl Into<String>) -> Error {
        Error::UnsafePickle {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.corrupt(format!(
                "needs {n} more bytes but the pickle ends (the file is truncated)"
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_u64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.corrupt(format!("length {n} is out of range")))
    }

    /// A text line (the arguments of `GLOBAL`), without its newline.
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.corrupt("a GLOBAL name is not terminated by a newline"));
        };
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.corrupt("a GLOBAL name is not valid UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.corrupt("a string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    /// Python 2 `str` (`BINSTRING`, `SHORT_BINSTRING`): bytes decoded as latin-1.
    fn latin1(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s: String = b.iter().map(|&c| char::from(c)).collect();
        Ok(Value::Str(Rc::from(s.as_str())))
    }

    /// `LONG1`/`LONG4`: little-endian two's complement of `n` bytes.
    fn long(&mut self, n: usize) -> Result<Value> {
        if n > 8 {
            return Err(self.corrupt(format!("an integer of {n} bytes does not fit 64 bits")));
        }
        let b = self.take(n)?;
        if n == 0 {
            return Ok(Value::Int(0));
        }
        let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..n].copy_from_slice(b);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) && !self.marks.is_empty() {
            return Err(self.corrupt("pops past a MARK"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.corrupt("pops from an empty stack"))
    }

    fn top(&self) -> Result<&Value> {
        self.stack
            .last()
            .ok_or_else(|| self.corrupt("reads the top of an empty stack"))
    }

    /// Everything pushed since the last `MARK`, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("uses a MARK that was never set"))?;
        if mark > self.stack.len() {
            return Err(self.corrupt("a MARK points past the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.corrupt(format!("reads memo slot {i}, which was never written")))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Value> {
        match Global::resolve(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(self.unsafe_pickle(format!(
                "it references the global {module}.{name}, which is not one of the names torch.save \
                 uses to describe tensors (collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
                 torch.*Storage, …); a file that needs it is not a plain state dict"
            ))),
        }
    }

    fn set_items(&self, target: &Value, items: Vec<Value>) -> Result<()> {
        let Value::Dict(d) = target else {
            return Err(self.corrupt(format!("sets items on a {}", target.kind())));
        };
        if !items.len().is_multiple_of(2) {
            return Err(self.corrupt("SETITEMS has an odd number of values"));
        }
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&self, target: &Value, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = target else {
            return Err(self.corrupt(format!("appends to a {}", target.kind())));
        };
        l.borrow_mut().extend(items);
        Ok(())
    }

    fn int_arg(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) if *i >= 0 => {
                usize::try_from(*i).map_err(|_| self.corrupt(format!("{what} {i} is out of range")))
            }
            other => Err(self.corrupt(format!(
                "{what} should be a non-negative int, found {}",
                other.kind()
            ))),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(t) => t.iter().map(|x| self.int_arg(x, what)).collect(),
            other => Err(self.corrupt(format!("{what} should be a tuple, found {}", other.kind()))),
        }
    }

    /// `BINPERSID`: torch's persistent id for a storage.
    fn persistent_load(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(t) = &pid else {
            return Err(self.corrupt(format!(
                "a persistent id should be a tuple, found {}",
                pid.kind()
            )));
        };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(Global::StorageClass(dtype)), Value::Str(key), _location, _numel]
                if &**tag == "storage" =>
            {
                Ok(Value::Storage(Rc::new(StorageRef {
                    key: key.to_string(),
                    dtype: *dtype,
                })))
            }
            _ => Err(self.corrupt(
                "a persistent id is not ('storage', torch.<Type>Storage, key, location, numel)",
            )),
        }
    }

    /// `REDUCE` (and `NEWOBJ`): "applies" an allow-listed callable symbolically.
    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(self.unsafe_pickle(format!(
                "it calls a {}, which a state dict never does",
                callable.kind()
            )));
        };
        let args: Vec<Value> = match args {
            Value::Tuple(t) => t.as_ref().clone(),
            other => {
                return Err(self.corrupt(format!(
                    "call arguments should be a tuple, found {}",
                    other.kind()
                )))
            }
        };
        match g {
            Global::OrderedDict => {
                let dict = Rc::new(RefCell::new(Vec::new()));
                // `OrderedDict([(k, v), ...])`; torch itself writes `OrderedDict()` + SETITEMS.
                if let Some(Value::List(pairs)) = args.first() {
                    for p in pairs.borrow().iter() {
                        match p {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                dict.borrow_mut().push((kv[0].clone(), kv[1].clone()))
                            }
                            _ => return Err(self.corrupt("OrderedDict items are not pairs")),
                        }
                    }
                }
                Ok(Value::Dict(dict))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                let [storage, offset, size, stride, ..] = args.as_slice() else {
                    return Err(self.corrupt("_rebuild_tensor_v2 has fewer than 4 arguments"));
                };
                let Value::Storage(storage) = storage else {
                    return Err(self.corrupt(format!(
                        "_rebuild_tensor_v2's storage is a {}",
                        storage.kind()
                    )));
                };
                let shape = self.int_tuple(size, "a tensor size")?;
                let stride = self.int_tuple(stride, "a tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.corrupt("a tensor's size and stride differ in length"));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: self.int_arg(offset, "a storage offset")?,
                    shape,
                    stride,
                })))
            }
            // (data, requires_grad, backward_hooks[, state]): a Parameter is its data.
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.corrupt("_rebuild_parameter's data is not a tensor")),
            },
            // (func, new_type, args, state): a tensor subclass, rebuilt by `func(*args)`.
            Global::RebuildFromTypeV2 => match args.as_slice() {
                [func @ Value::Global(
                    Global::RebuildTensorV2
                    | Global::RebuildParameter
                    | Global::RebuildParameterWithState,
                ), Value::Global(Global::TensorClass | Global::ParameterClass), inner, ..] => {
                    self.reduce(func.clone(), inner.clone())
                }
                _ => Err(self.unsafe_pickle(
                    "_rebuild_from_type_v2 is asked to build something other than a torch.Tensor",
                )),
            },
            other => {
                Err(self
                    .unsafe_pickle(format!("it calls {other:?}, which a state dict never does")))
            }
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    self.u8()?;
                }
                // FRAME: a length hint for buffered reading; nothing to do.
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 | 0x89 => self.push(Value::Opaque("bool")),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.push(v);
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let v = self.long(n)?;
                    self.push(v);
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Opaque("float"));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.latin1(n)?;
                    self.push(v);
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.latin1(n)?;
                    self.push(v);
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push(Value::Opaque("bytes"));
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.corrupt("TUPLE needs more values than the stack has"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = Value::Dict(Rc::new(RefCell::new(Vec::new())));
                    self.set_items(&dict, items)?;
                    self.push(dict);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(self.top()?, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(self.top()?, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(self.top()?, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(self.top()?, items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| self.corrupt("too many memo entries"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.corrupt("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.push(g);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                // NEWOBJ: `cls.__new__(cls, *args)`; only OrderedDict is allowed to get here.
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if !matches!(cls, Value::Global(Global::OrderedDict)) {
                        return Err(self.unsafe_pickle(format!(
                            "it instantiates a {} with NEWOBJ, which a state dict never does",
                            cls.kind()
                        )));
                    }
                    let v = self.reduce(cls, args)?;
                    self.push(v);
                }
                // BUILD: sets an object's state, e.g. a state dict's `_metadata` attribute or a
                // parameter's extra attributes. Nothing a tensor's values depend on.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                // INST, OBJ, EXT1/2/4, NEWOBJ_EX: ways to import or instantiate classes that
                // torch.save does not use for state dicts.
                b'i' | b'o' | 0x82..=0x84 | 0x92 => {
                    return Err(self.unsafe_pickle(format!(
                        "it uses the pickle opcode 0x{op:02x} (instantiate/extension), which a state dict never needs"
                    )))
                }
                _ => {
                    return Err(self.corrupt(format!(
                        "unsupported pickle opcode 0x{op:02x} (torch.save writes protocol 2; is this a PyTorch file?)"
                    )))
                }
            }
        }
    }
}

/// Where a tensor's bytes live and how to read them.
#[derive(Clone, Debug)]
struct TensorInfo {
    /// The zip entry of its storage, e.g. `archive/data/3`.
    entry: String,
    dtype: StorageDtype,
    /// In elements of `dtype`.
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorInfo {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            // A dimension of size 1 (or an empty tensor) can carry any stride.
            if size != 1 && stride != expected {
                return self.numel() == 0;
            }
            expected *= size;
        }
        true
    }
}

/// A `torch.save`d state dict (zip format), parsed without executing anything.
///
/// Accepts a flat dict of tensors (the released OpenFlamingo `checkpoint.pt`, HF
/// `pytorch_model.bin`) or a dict whose `model_state_dict` (or `state_dict`) entry is one (the
/// trainer's resume files); a leading `module.` (DDP) is stripped from every key. Values that
/// are not tensors (epochs, optimizer state) are ignored.
pub struct PickleFile {
    path: PathBuf,
    archive: Mutex<zip::ZipArchive<File>>,
    /// Tensor names in the order the pickle lists them.
    order: Vec<String>,
    tensors: HashMap<String, TensorInfo>,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const EMPTY_ZIP_MAGIC: &[u8] = b"PK\x05\x06";

impl PickleFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
        let magic = &magic[..n];
        if magic.first() == Some(&0x80) {
            return Err(Error::Weights(format!(
                "{} is a legacy PyTorch file (written by torch < 1.6 or with \
                 _use_new_zipfile_serialization=False), which this engine does not read; re-save it \
                 with torch >= 1.6 (torch.save(torch.load(p), p)) or convert it to safetensors",
                path.display()
            )));
        }
        if magic != ZIP_MAGIC && magic != EMPTY_ZIP_MAGIC {
            return Err(Error::corrupt(
                path,
                "not a PyTorch file: a torch.save file is a zip archive, and this one does not start with a zip header",
            ));
        }
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            Error::corrupt(
                path,
                format!("not a readable zip archive ({e}); the file is probably truncated"),
            )
        })?;

        let pkl_name = find_data_pkl(&archive).ok_or_else(|| {
            Error::Weights(format!(
                "{} is a zip archive without a data.pkl entry: not a torch.save file \
                 (TorchScript archives are not supported)",
                path.display()
            ))
        })?;
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

        if let Some(order) = read_entry_opt(&mut archive, &format!("{prefix}byteorder"), path)? {
            if order.trim_ascii() != b"little" {
                return Err(Error::Weights(format!(
                    "{} stores its tensors big-endian, which this engine does not read; re-save it on a little-endian machine",
                    path.display()
                )));
            }
        }

        let pkl = read_entry_opt(&mut archive, &pkl_name, path)?
            .ok_or_else(|| Error::corrupt(path, format!("cannot read {pkl_name}")))?;
        let root = Machine::new(path, &pkl).run()?;
        let (order, tensors) = collect_tensors(root, &prefix, path)?;

        // Every storage must exist and be large enough: a damaged file fails here, not at the
        // first load of an unlucky tensor.
        for name in &order {
            let info = &tensors[name];
            let Some(size) = archive
                .index_for_name(&info.entry)
                .and_then(|i| archive.by_index_data(i).ok())
                .map(|e| e.size())
            else {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "tensor {name}: its storage {} is missing from the zip",
                        info.entry
                    ),
                ));
            };
            if info.is_contiguous() {
                let needed = (info.offset + info.numel()) * info.dtype.size_in_bytes();
                if (size as u128) < needed as u128 {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "tensor {name} needs {needed} bytes of storage {} but it holds {size}",
                            info.entry
                        ),
                    ));
                }
            }
        }

        Ok(Self {
            path: path.to_path_buf(),
            archive: Mutex::new(archive),
            order,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `<archive>/data.pkl`, the one pickle of a `torch.save` file (the archive folder is named
/// after the file at save time, or `archive` in recent torch).
fn find_data_pkl(archive: &zip::ZipArchive<File>) -> Option<String> {
    archive
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.into_owned())
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
}

fn read_entry_opt(
    archive: &mut zip::ZipArchive<File>,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<u8>>> {
    let Some(i) = archive.index_for_name(name) else {
        return Ok(None);
    };
    let mut f = archive
        .by_index(i)
        .map_err(|e| Error::corrupt(path, format!("cannot read {name} ({e})")))?;
    let mut buf = Vec::with_capacity(f.size().min(1 << 30) as usize);
    f.read_to_end(&mut buf)
        .map_err(|e| Error::corrupt(path, format!("cannot read {name} ({e})")))?;
    Ok(Some(buf))
}

/// The tensors of the state dict: the top-level dict, or its `model_state_dict` / `state_dict`.
fn collect_tensors(
    root: Value,
    prefix: &str,
    path: &Path,
) -> Result<(Vec<String>, HashMap<String, TensorInfo>)> {
    let Value::Dict(top) = root else {
        return Err(Error::Weights(format!(
            "{} holds a {}, not a dict of tensors (a state dict)",
            path.display(),
            root.kind()
        )));
    };
    let lookup = |name: &str| -> Option<Value> {
        top.borrow()
            .iter()
            .rev()
            .find(|(k, v)| {
                matches!(k, Value::Str(s) if &**s == name) && matches!(v, Value::Dict(_))
            })
            .map(|(_, v)| v.clone())
    };
    // The trainer's resume files wrap the model next to optimizer state (spec §7.7).
    let dict = match lookup("model_state_dict").or_else(|| lookup("state_dict")) {
        Some(Value::Dict(inner)) => inner,
        _ => top.clone(),
    };

    let mut order = Vec::new();
    let mut tensors = HashMap::new();
    let mut other_keys = Vec::new();
    for (k, v) in dict.borrow().iter() {
        let (Value::Str(k), Value::Tensor(t)) = (k, v) else {
            if let Value::Str(k) = k {
                other_keys.push(k.to_string());
            }
            continue;
        };
        // DistributedDataParallel saves its wrapped model under `module.`.
        let name = k.strip_prefix("module.").unwrap_or(k).to_string();
        let info = TensorInfo {
            entry: format!("{prefix}data/{}", t.storage.key),
            dtype: t.storage.dtype,
            offset: t.offset,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
        };
        if tensors.insert(name.clone(), info).is_none() {
            order.push(name);
        }
    }
    if order.is_empty() {
        let shown: Vec<_> = other_keys.iter().take(8).map(String::as_str).collect();
        return Err(Error::Weights(format!(
            "{} holds no tensors at the top level of its dict (nor under model_state_dict); its keys are: {}",
            path.display(),
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        )));
    }
    Ok((order, tensors))
}

impl TensorSource for PickleFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn keys(&self) -> Vec<String> {
        self.order.clone()
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.clone())
    }

    fn load(&self, key: &str) -> Result<Tensor> {
        let info = self.tensors.get(key).ok_or_else(|| {
            Error::Weights(format!("{}: no tensor named {key}", self.path.display()))
        })?;
        if !info.is_contiguous() {
            return Err(Error::Weights(format!(
                "{}: tensor {key} is not contiguous (size {:?}, stride {:?}); re-save it after calling .contiguous() on it",
                self.path.display(),
                info.shape,
                info.stride
            )));
        }
        let bytes = {
            // A poisoned lock only means another load panicked; the archive itself is intact.
            let mut archive = self.archive.lock().unwrap_or_else(|e| e.into_inner());
            read_entry_opt(&mut archive, &info.entry, &self.path)?.ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    format!("{key}: storage {} is missing", info.entry),
                )
            })?
        };
        let es = info.dtype.size_in_bytes();
        let start = info.offset * es;
        let end = start + info.numel() * es;
        let Some(data) = bytes.get(start..end) else {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "{key}: storage {} holds {} bytes, the tensor needs bytes {start}..{end}",
                    info.entry,
                    bytes.len()
                ),
            ));
        };
        let dtype = match info.dtype {
            StorageDtype::F32 => DType::F32,
            StorageDtype::F64 => DType::F64,
            StorageDtype::F16 => DType::F16,
            StorageDtype::BF16 => DType::BF16,
            StorageDtype::I64 => DType::I64,
            StorageDtype::I32 => DType::I32,
            StorageDtype::I16 => DType::I16,
            StorageDtype::U8 | StorageDtype::Bool => DType::U8,
            // candle has no i8: widen losslessly.
            StorageDtype::I8 => {
                let v: Vec<i16> = data.iter().map(|&b| i16::from(b as i8)).collect();
                return Ok(Tensor::from_vec(v, info.shape.as_slice(), &Device::Cpu)?);
            }
        };
        Tensor::from_raw_buffer(data, dtype, &info.shape, &Device::Cpu)
            .map_err(|e| Error::corrupt(&self.path, format!("{key}: {e}")))
    }
}
