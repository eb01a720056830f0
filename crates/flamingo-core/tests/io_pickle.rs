//! The PyTorch pickle reader and HF folder layouts.
//!
//! Golden fixtures: /work/shared/golden/<family>/checkpoint.pt, written by `torch.save` in
//! `shared/golden/tools/make_golden.py` (PyTorch 2.11, transformers 5.17; see the golden
//! README). `candle_core::pickle::read_all` serves as an independent oracle for their values.
//! Everything else (resume files, malicious pickles, shards) is built byte by byte here from
//! the pickle protocol-2 opcodes `torch.save` emits, since there is no torch in this build.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use flamingo_core::io::checkpoint::FlamingoCheckpoint;
use flamingo_core::io::hf::{open_weights_dir, open_weights_file};
use flamingo_core::io::pickle::PickleFile;
use flamingo_core::io::TensorSource;
use flamingo_core::Error;

const FAMILIES: [&str; 4] = ["llama", "opt", "gpt_neox", "mpt"];

fn golden(family: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden"
    ))
    .join(family)
}

fn meta_checkpoint_keys(family: &str) -> Vec<String> {
    let text = std::fs::read_to_string(golden(family).join("meta.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta["checkpoint_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// A fresh, empty folder for one test.
fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flamingo-io-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Same dtype, shape and bytes.
fn assert_bit_identical(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let bytes = |t: &Tensor| -> Vec<u8> {
        let t = t.flatten_all().unwrap();
        match t.dtype() {
            DType::F32 => t
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            DType::U8 => t.to_vec1::<u8>().unwrap(),
            DType::I64 => t
                .to_vec1::<i64>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            other => panic!("{what}: compare {other:?} by hand"),
        }
    };
    assert!(bytes(a) == bytes(b), "{what}: values differ");
}

// ---------------------------------------------------------------------------------------------
// A minimal writer of the pickle opcodes torch.save uses (protocol 2), and of its zip layout.

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn new() -> Self {
        Self { out: vec![0x80, 2] }
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.out.push(b);
        self
    }
    fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, i: u32) -> &mut Self {
        if i < 256 {
            self.op(b'K').op(i as u8)
        } else {
            self.op(b'J');
            self.out.extend_from_slice(&(i as i32).to_le_bytes());
            self
        }
    }
    fn float(&mut self, x: f64) -> &mut Self {
        self.op(b'G');
        self.out.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn put(&mut self, i: u8) -> &mut Self {
        self.op(b'q').op(i)
    }
    fn get(&mut self, i: u8) -> &mut Self {
        self.op(b'h').op(i)
    }
    fn tuple_of(&mut self, ints: &[u32]) -> &mut Self {
        self.mark();
        for &i in ints {
            self.int(i);
        }
        self.op(b't')
    }
    fn empty_ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` as torch writes it.
    fn tensor(
        &mut self,
        storage_class: &str,
        key: &str,
        numel: u32,
        offset: u32,
        shape: &[u32],
        stride: &[u32],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", storage_class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q');
        self.int(offset).tuple_of(shape).tuple_of(stride).op(0x89);
        self.empty_ordered_dict().op(b't').op(b'R')
    }
    /// An `nn.Parameter` around a float tensor.
    fn parameter(&mut self, key: &str, shape: &[u32]) -> &mut Self {
        let numel = shape.iter().product();
        let stride = contiguous_stride(shape);
        self.global("torch._utils", "_rebuild_parameter").mark();
        self.tensor("FloatStorage", key, numel, 0, shape, &stride)
            .op(0x89)
            .empty_ordered_dict()
            .op(b't')
            .op(b'R')
    }
    fn finish(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.out)
    }
}

fn contiguous_stride(shape: &[u32]) -> Vec<u32> {
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn write_torch_zip(path: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| i as f32 * scale - 1.0).collect()
}

// ---------------------------------------------------------------------------------------------
// Golden checkpoints

#[test]
fn golden_checkpoints_list_the_meta_keys_and_match_candles_reader_bit_for_bit() {
    for family in FAMILIES {
        let path = golden(family).join("checkpoint.pt");
        let pf = PickleFile::open(&path).unwrap();
        let expected = meta_checkpoint_keys(family);
        assert_eq!(sorted(pf.keys()), expected, "{family}: keys");

        let oracle: HashMap<String, Tensor> = candle_core::pickle::read_all(&path)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(oracle.len(), expected.len(), "{family}: oracle key count");
        for key in &expected {
            let ours = pf.load(key).unwrap();
            assert_eq!(
                pf.shape(key).unwrap(),
                ours.dims(),
                "{family}: {key}: shape()"
            );
            assert_bit_identical(&ours, &oracle[key], &format!("{family}: {key}"));
        }
        println!(
            "{family}: {} tensors bit-identical to candle's reader",
            expected.len()
        );
    }
}

#[test]
fn a_golden_checkpoint_copied_as_pytorch_model_bin_is_read_by_content() {
    let dir = temp_dir("bin-copy");
    let bin = dir.join("pytorch_model.bin");
    std::fs::copy(golden("opt").join("checkpoint.pt"), &bin).unwrap();
    let src = open_weights_dir(&dir).unwrap();
    assert_eq!(sorted(src.keys()), meta_checkpoint_keys("opt"));
    let oracle = candle_core::pickle::read_all(&bin).unwrap();
    for (k, t) in &oracle {
        assert_bit_identical(&src.load(k).unwrap(), t, k);
    }
}

// ---------------------------------------------------------------------------------------------
// Structures torch.save produces beyond a flat dict

#[test]
fn resume_file_with_model_state_dict_and_module_prefix_is_unwrapped() {
    let dir = temp_dir("resume");
    let path = dir.join("checkpoint_3.pt");
    let latents = ramp(6, 0.5);
    let gate = [0.25f32];
    let step = [7.0f32];
    let exp_avg = ramp(6, -0.1);

    let mut p = Pickler::new();
    p.op(b'}').put(0).mark();
    p.str("epoch").int(3);
    // model_state_dict: an OrderedDict of DDP-prefixed parameters, as ddp_model.state_dict().
    p.str("model_state_dict").empty_ordered_dict().put(1).mark();
    p.str("module.perceiver.latents").parameter("0", &[2, 3]);
    p.str("module.lang_encoder.gated_cross_attn_layers.1.attn_gate")
        .parameter("1", &[1]);
    p.op(b'u');
    // optimizer_state_dict: tensors (which must not leak into the weights), floats, tuples, lists.
    p.str("optimizer_state_dict").op(b'}').mark();
    p.str("state").op(b'}').mark();
    p.int(0).op(b'}').mark();
    p.str("step").tensor("FloatStorage", "2", 1, 0, &[], &[]);
    p.str("exp_avg")
        .tensor("FloatStorage", "3", 6, 0, &[2, 3], &[3, 1]);
    p.op(b'u').op(b'u');
    p.str("param_groups").op(b']').mark();
    p.op(b'}').mark();
    p.str("lr").float(1e-4);
    p.str("betas").float(0.9).float(0.999).op(0x86);
    p.str("amsgrad").op(0x89);
    p.str("params").op(b']').int(0).op(b'a');
    p.str("foreach").op(b'N');
    p.op(b'u').op(b'e');
    p.op(b'u');
    p.str("lr_scheduler_state_dict").op(b'}').mark();
    p.str("last_epoch")
        .int(300)
        .str("base_lrs")
        .op(b']')
        .float(1e-4)
        .op(b'a');
    p.op(b'u');
    p.op(b'u');
    write_torch_zip(
        &path,
        &p.finish(),
        &[
            ("0", f32_bytes(&latents)),
            ("1", f32_bytes(&gate)),
            ("2", f32_bytes(&step)),
            ("3", f32_bytes(&exp_avg)),
        ],
    );

    let pf = PickleFile::open(&path).unwrap();
    assert_eq!(
        sorted(pf.keys()),
        [
            "lang_encoder.gated_cross_attn_layers.1.attn_gate",
            "perceiver.latents"
        ]
    );
    let t = pf.load("perceiver.latents").unwrap();
    assert_eq!(t.dims(), [2, 3]);
    assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), latents);
    let g = pf
        .load("lang_encoder.gated_cross_attn_layers.1.attn_gate")
        .unwrap();
    assert_eq!(g.to_vec1::<f32>().unwrap(), gate);

    // The same file through the checkpoint loader: the alias spelling fills layer 1.
    let ck = FlamingoCheckpoint::open(&path, "model.layers").unwrap();
    assert_eq!(ck.perceiver.keys(), ["latents"]);
    assert_eq!(ck.cross_attn.keys().copied().collect::<Vec<_>>(), [1]);
    assert!(ck.unexpected.is_empty(), "{:?}", ck.unexpected);
}

#[test]
fn ordered_dict_state_with_metadata_half_precision_views_and_bool_buffers() {
    let dir = temp_dir("ordered");
    let path = dir.join("weights.pt");
    // Storage "0": 8 f16 values; "a" views elements 0..4 as (2, 2), "b" elements 4..8 as (4,),
    // as tied or sliced weights share one storage.
    let halfs: Vec<half::f16> = (0..8)
        .map(|i| half::f16::from_f32(i as f32 * 0.5))
        .collect();
    let half_bytes: Vec<u8> = halfs.iter().flat_map(|h| h.to_le_bytes()).collect();
    let bf: Vec<half::bf16> = (0..3)
        .map(|i| half::bf16::from_f32(i as f32 - 1.5))
        .collect();
    let bf_bytes: Vec<u8> = bf.iter().flat_map(|h| h.to_le_bytes()).collect();

    let mut p = Pickler::new();
    // OrderedDict(), memoised, filled by SETITEMS, then BUILD with its `_metadata` attribute,
    // as `model.state_dict()` pickles.
    p.empty_ordered_dict().put(0).mark();
    p.str("a")
        .tensor("HalfStorage", "0", 8, 0, &[2, 2], &[2, 1]);
    p.str("b").tensor("HalfStorage", "0", 8, 4, &[4], &[1]);
    p.str("c")
        .tensor("BFloat16Storage", "1", 3, 0, &[3, 1], &[1, 1]);
    p.str("mask")
        .tensor("BoolStorage", "2", 4, 0, &[1, 1, 2, 2], &[4, 4, 2, 1]);
    p.str("ids").tensor("LongStorage", "3", 2, 0, &[2], &[1]);
    // A tensor subclass goes through _rebuild_from_type_v2(func, type, args, state).
    p.str("d")
        .global("torch._tensor", "_rebuild_from_type_v2")
        .mark();
    p.global("torch._utils", "_rebuild_tensor_v2").put(9);
    p.global("torch._tensor", "Tensor");
    p.mark()
        .mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("4")
        .str("cpu")
        .int(2)
        .op(b't')
        .op(b'Q');
    p.int(0)
        .tuple_of(&[2])
        .tuple_of(&[1])
        .op(0x89)
        .empty_ordered_dict()
        .op(b't');
    p.op(b'}').op(b't').op(b'R');
    // torch memoises the rebuild function once and refers back to it (BINGET) for later tensors.
    p.str("e").get(9).mark();
    p.mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("4")
        .str("cpu")
        .int(2)
        .op(b't')
        .op(b'Q');
    p.int(1)
        .tuple_of(&[1])
        .tuple_of(&[1])
        .op(0x89)
        .empty_ordered_dict()
        .op(b't')
        .op(b'R');
    p.op(b'u');
    p.op(b'}')
        .mark()
        .str("_metadata")
        .empty_ordered_dict()
        .mark();
    p.str("").op(b'}').str("version").int(1).op(b's');
    p.op(b'u').op(b'u');
    p.op(b'b');
    write_torch_zip(
        &path,
        &p.finish(),
        &[
            ("0", half_bytes),
            ("1", bf_bytes),
            ("2", vec![1, 0, 1, 1]),
            (
                "3",
                [5i64, -7].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("4", f32_bytes(&[3.5, -2.0])),
        ],
    );

    let pf = PickleFile::open(&path).unwrap();
    assert_eq!(pf.keys(), ["a", "b", "c", "mask", "ids", "d", "e"]);
    let a = pf.load("a").unwrap();
    assert_eq!((a.dtype(), a.dims()), (DType::F16, &[2usize, 2][..]));
    let f = |t: Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(f(a), [0.0, 0.5, 1.0, 1.5]);
    assert_eq!(f(pf.load("b").unwrap()), [2.0, 2.5, 3.0, 3.5]);
    let c = pf.load("c").unwrap();
    assert_eq!((c.dtype(), c.dims()), (DType::BF16, &[3usize, 1][..]));
    assert_eq!(f(c), [-1.5, -0.5, 0.5]);
    let mask = pf.load("mask").unwrap();
    assert_eq!(mask.dtype(), DType::U8);
    assert_eq!(
        mask.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        [1, 0, 1, 1]
    );
    assert_eq!(pf.load("ids").unwrap().to_vec1::<i64>().unwrap(), [5, -7]);
    assert_eq!(f(pf.load("d").unwrap()), [3.5, -2.0]);
    assert_eq!(f(pf.load("e").unwrap()), [-2.0]);
}

#[test]
fn non_contiguous_tensor_is_refused_with_its_strides_on_load() {
    let dir = temp_dir("strided");
    let path = dir.join("t.pt");
    let mut p = Pickler::new();
    p.op(b'}').mark();
    p.str("ok")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    // A transposed view: size (3, 2), stride (1, 3).
    p.str("transposed")
        .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.op(b'u');
    write_torch_zip(&path, &p.finish(), &[("0", f32_bytes(&ramp(6, 1.0)))]);
    let pf = PickleFile::open(&path).unwrap();
    assert!(pf.load("ok").is_ok());
    let err = pf.load("transposed").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Weights(_)), "{msg}");
    assert!(
        msg.contains("transposed") && msg.contains("[1, 3]") && msg.contains("contiguous"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals

fn marker(test: &str) -> PathBuf {
    let m = std::env::temp_dir().join(format!("flamingo-pwned-{}-{test}", std::process::id()));
    let _ = std::fs::remove_file(&m);
    m
}

#[test]
fn pickle_calling_os_system_is_refused_and_nothing_runs() {
    let dir = temp_dir("evil");
    let m = marker("os-system");
    // The classic payload: os.system("touch <marker>") via GLOBAL + REDUCE.
    let mut p = Pickler::new();
    p.global("os", "system")
        .str(&format!("touch {}", m.display()))
        .op(0x85)
        .op(b'R');
    let evil = dir.join("evil.pt");
    write_torch_zip(&evil, &p.finish(), &[]);

    for result in [
        PickleFile::open(&evil).map(|_| ()),
        open_weights_file(&evil).map(|_| ()),
        FlamingoCheckpoint::open(&evil, "model.layers").map(|_| ()),
    ] {
        let err = result.expect_err("the malicious pickle must be refused");
        assert_eq!(err.code(), "ERR_UNSAFE_PICKLE");
        assert!(err.to_string().contains("os.system"), "{err}");
    }
    assert!(!m.exists(), "the payload ran: {} exists", m.display());
}

#[test]
fn dangerous_globals_are_refused_wherever_they_hide() {
    let dir = temp_dir("evil-variants");
    let m = marker("variants");
    let cmd = format!("touch {}", m.display());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // builtins.eval through STACK_GLOBAL (protocol 4 style).
        ("builtins.eval", {
            let mut p = Pickler::new();
            p.str("builtins")
                .str("eval")
                .op(0x93)
                .str(&cmd)
                .op(0x85)
                .op(b'R');
            p.finish()
        }),
        // Python 2's __builtin__.exec.
        ("__builtin__.exec", {
            let mut p = Pickler::new();
            p.global("__builtin__", "exec").str(&cmd).op(0x85).op(b'R');
            p.finish()
        }),
        // subprocess.Popen after two genuine tensors, as the value of a state-dict entry.
        ("subprocess.Popen", {
            let mut p = Pickler::new();
            p.op(b'}').mark();
            p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
            p.str("v").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
            p.str("x").global("subprocess", "Popen");
            p.mark()
                .str("sh")
                .str("-c")
                .str(&cmd)
                .op(b'l')
                .op(0x85)
                .op(b'R');
            p.op(b'u');
            p.finish()
        }),
        // A torch-looking name that is not on the allow-list.
        ("torch.load", {
            let mut p = Pickler::new();
            p.global("torch", "load")
                .str("/etc/passwd")
                .op(0x85)
                .op(b'R');
            p.finish()
        }),
    ];
    for (name, pkl) in cases {
        let path = dir.join(format!("{name}.pt"));
        write_torch_zip(&path, &pkl, &[("0", f32_bytes(&[1.0, 2.0]))]);
        let err = PickleFile::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(matches!(err, Error::UnsafePickle { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // Opcodes that import by themselves (INST) are refused too.
    let mut p = Pickler::new();
    p.mark().op(b'i');
    p.out.extend_from_slice(b"os\nsystem\n");
    let path = dir.join("inst.pt");
    write_torch_zip(&path, &p.finish(), &[]);
    assert!(matches!(
        PickleFile::open(&path),
        Err(Error::UnsafePickle { .. })
    ));
    assert!(!m.exists(), "a payload ran");
}

#[test]
fn truncated_checkpoint_is_reported_corrupt() {
    let dir = temp_dir("truncated");
    let bytes = std::fs::read(golden("mpt").join("checkpoint.pt")).unwrap();
    for (name, len) in [
        ("half", bytes.len() / 2),
        ("most", bytes.len() - 100),
        ("head", 10),
    ] {
        let path = dir.join(format!("{name}.pt"));
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = PickleFile::open(&path)
            .err()
            .expect("a truncated file must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        assert_eq!(err.code(), "ERR_CORRUPT_FILE");
        let err = FlamingoCheckpoint::open(&path, "transformer.blocks")
            .err()
            .expect("a truncated file must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
    }
    // An intact zip whose pickle stops mid-way.
    let mut p = Pickler::new();
    p.op(b'}').mark().str("w");
    let mut pkl = p.out.clone();
    pkl.extend_from_slice(&[b'X', 200, 0, 0, 0, b'a']);
    let path = dir.join("short-pickle.pt");
    write_torch_zip(&path, &pkl, &[]);
    let err = PickleFile::open(&path).err().expect("must fail");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // A storage shorter than its tensor.
    let mut p = Pickler::new();
    p.op(b'}')
        .str("w")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .op(b's');
    let path = dir.join("short-storage.pt");
    write_torch_zip(&path, &p.finish(), &[("0", f32_bytes(&[1.0, 2.0]))]);
    let err = PickleFile::open(&path).err().expect("must fail");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn legacy_torch_file_is_refused_with_advice_to_resave() {
    let dir = temp_dir("legacy");
    let path = dir.join("old.pt");
    // Legacy torch.save: a raw pickle stream that starts with the magic number 0x1950a86a20f9469cfc6c.
    let mut bytes = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8,
    ];
    bytes.extend_from_slice(&[0x50, 0x19, b'.']);
    std::fs::write(&path, bytes).unwrap();
    let err = PickleFile::open(&path).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::Weights(_)), "{msg}");
    assert!(
        msg.contains("legacy") && msg.contains("torch >= 1.6"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// HF folder layouts

#[test]
fn open_weights_dir_reads_each_golden_lm_folder() {
    for family in FAMILIES {
        let dir = golden(family).join("lm");
        let src = open_weights_dir(&dir).unwrap();
        let oracle =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(
            sorted(src.keys()),
            sorted(oracle.keys().cloned().collect()),
            "{family}"
        );
        for (k, t) in &oracle {
            assert_eq!(src.shape(k).unwrap(), t.dims(), "{family}: {k}");
            assert_bit_identical(&src.load(k).unwrap(), t, &format!("{family}: {k}"));
        }
        println!("{family}/lm: {} tensors", oracle.len());
    }
}

#[test]
fn open_weights_dir_reads_a_sharded_safetensors_index() {
    let dir = temp_dir("st-shards");
    let oracle =
        candle_core::safetensors::load(golden("llama").join("lm/model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut keys: Vec<&String> = oracle.keys().collect();
    keys.sort();
    let (first, second) = keys.split_at(keys.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|k| ((*k).clone(), oracle[*k].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for k in part {
            weight_map.insert((*k).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let src = open_weights_dir(&dir).unwrap();
    assert_eq!(sorted(src.keys()), sorted(oracle.keys().cloned().collect()));
    for (k, t) in &oracle {
        assert_bit_identical(&src.load(k).unwrap(), t, k);
    }

    // An index naming a shard that is not there says which.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = open_weights_dir(&dir).err().expect("must fail");
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn open_weights_dir_reads_sharded_pytorch_bins() {
    let dir = temp_dir("bin-shards");
    for (file, key, values) in [
        (
            "pytorch_model-00001-of-00002.bin",
            "model.embed_tokens.weight",
            [1.0f32, 2.0],
        ),
        (
            "pytorch_model-00002-of-00002.bin",
            "lm_head.weight",
            [3.0f32, 4.0],
        ),
    ] {
        let mut p = Pickler::new();
        p.empty_ordered_dict().mark();
        p.str(key)
            .tensor("FloatStorage", "0", 2, 0, &[1, 2], &[2, 1]);
        p.op(b'u');
        write_torch_zip(&dir.join(file), &p.finish(), &[("0", f32_bytes(&values))]);
    }
    let index = serde_json::json!({"weight_map": {
        "model.embed_tokens.weight": "pytorch_model-00001-of-00002.bin",
        "lm_head.weight": "pytorch_model-00002-of-00002.bin"}});
    std::fs::write(dir.join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
    let src = open_weights_dir(&dir).unwrap();
    assert_eq!(
        sorted(src.keys()),
        ["lm_head.weight", "model.embed_tokens.weight"]
    );
    let t = src.load("lm_head.weight").unwrap();
    assert_eq!(
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [3.0, 4.0]
    );
}

#[test]
fn open_weights_dir_prefers_safetensors_over_pytorch_bin() {
    let dir = temp_dir("prefer");
    std::fs::copy(
        golden("opt").join("lm/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        golden("opt").join("checkpoint.pt"),
        dir.join("pytorch_model.bin"),
    )
    .unwrap();
    let src = open_weights_dir(&dir).unwrap();
    assert!(
        src.describe().ends_with("model.safetensors"),
        "{}",
        src.describe()
    );
    assert!(src.contains("model.decoder.final_layer_norm.weight"));
}

#[test]
fn open_weights_dir_without_weights_names_what_it_looked_for() {
    let dir = temp_dir("empty");
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    std::fs::write(dir.join("tf_model.h5"), "not really").unwrap();
    let err = open_weights_dir(&dir).err().expect("must fail");
    let msg = err.to_string();
    assert_eq!(err.code(), "ERR_WEIGHTS");
    for name in [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tf_model.h5",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn open_weights_file_chooses_the_reader_by_content_not_extension() {
    let dir = temp_dir("sniff");
    // safetensors bytes under a pickle-ish name, and a pickle under a safetensors name.
    let st = dir.join("weights.bin");
    std::fs::copy(golden("mpt").join("lm/model.safetensors"), &st).unwrap();
    let pt = dir.join("checkpoint.safetensors");
    std::fs::copy(golden("mpt").join("checkpoint.pt"), &pt).unwrap();

    let a = open_weights_file(&st).unwrap();
    assert!(a.contains("transformer.wte.weight"));
    let b = open_weights_file(&pt).unwrap();
    assert_eq!(sorted(b.keys()), meta_checkpoint_keys("mpt"));

    let junk = dir.join("notes.txt");
    std::fs::write(&junk, "hello, world").unwrap();
    let err = open_weights_file(&junk).err().expect("must fail");
    assert!(err.to_string().contains("neither"), "{err}");
}
