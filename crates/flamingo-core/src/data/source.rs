//! Where samples come from: JSONL manifests and webdataset tar shards, indexed up front
//! (one small entry per sample) and read lazily, sample by sample. The record shapes each
//! accepts are documented in `data/mod.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;

use crate::data::tar::{self, Member, ShardIndex};
use crate::data::{DataKind, Skip, SkipReason};
use crate::{Error, Result};

/// A manifest file, mapped into memory; its lines are parsed when their sample is read.
struct Manifest {
    path: PathBuf,
    /// Image paths in the manifest are relative to this folder.
    dir: PathBuf,
    bytes: Option<Mmap>,
}

impl Manifest {
    fn bytes(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or(&[])
    }
}

/// One sample's place in its source.
#[derive(Clone, Copy, Debug)]
enum SampleRef {
    /// A manifest line: byte range and 1-based line number.
    Line {
        file: u32,
        start: u64,
        end: u64,
        line: u32,
    },
    /// A webdataset sample: shard and its sample number there.
    Tar { shard: u32, sample: u32 },
}

/// Where an image's bytes are.
#[derive(Clone, Debug)]
pub enum ImageLoc {
    File(PathBuf),
    Member {
        shard: u32,
        name: String,
        member: Member,
    },
    /// Decoded from the record's `image_base64` (the reference's MMC4 shards).
    Inline(Arc<Vec<u8>>),
}

/// An image of a document, with the sentence it precedes.
#[derive(Clone, Debug)]
pub struct DocImage {
    pub loc: ImageLoc,
    pub sentence: usize,
    /// MMC4's `matched_sim` (CLIP similarity to its sentence), when given.
    pub sim: Option<f64>,
}

/// A parsed sample.
#[derive(Clone, Debug)]
pub enum Record {
    Pair {
        image: ImageLoc,
        caption: String,
    },
    Document {
        texts: Vec<String>,
        images: Vec<DocImage>,
    },
}

/// Every sample of a dataset, in a fixed order (manifests first, then shards, each in the
/// order given, samples in file order).
pub struct DatasetIndex {
    manifests: Vec<Manifest>,
    shards: Vec<ShardIndex>,
    samples: Vec<SampleRef>,
}

fn invalid(detail: impl Into<String>) -> Skip {
    Skip::new(SkipReason::InvalidRecord, detail)
}

impl DatasetIndex {
    /// Indexes the manifests (every non-blank line is a sample) and the shards (every
    /// group of members sharing a key). Unreadable or corrupt files are errors; bad
    /// samples inside them are found, and skipped, when read.
    pub fn open(manifests: &[PathBuf], shards: &[PathBuf]) -> Result<Self> {
        if manifests.is_empty() && shards.is_empty() {
            crate::invalid_input!("no data: give at least one manifest or shard");
        }
        let mut index = DatasetIndex {
            manifests: Vec::with_capacity(manifests.len()),
            shards: Vec::with_capacity(shards.len()),
            samples: Vec::new(),
        };
        for path in manifests {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            // SAFETY: the map is read-only and private to this process; a manifest changed
            // while training is a user error that at worst yields garbled lines, which the
            // JSON parser rejects.
            let bytes = if len == 0 {
                None
            } else {
                Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
            };
            let file_no = index.manifests.len() as u32;
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            let manifest = Manifest {
                path: path.clone(),
                dir,
                bytes,
            };
            let mut start = 0usize;
            let text = manifest.bytes();
            for (line_no, chunk) in text.split(|&b| b == b'\n').enumerate() {
                let end = start + chunk.len();
                if !chunk.iter().all(u8::is_ascii_whitespace) {
                    index.samples.push(SampleRef::Line {
                        file: file_no,
                        start: start as u64,
                        end: end as u64,
                        line: line_no as u32 + 1,
                    });
                }
                start = end + 1;
            }
            index.manifests.push(manifest);
        }
        for path in shards {
            let shard = tar::index_shard(path)?;
            let shard_no = index.shards.len() as u32;
            index.samples.extend(
                (0..shard.samples.len() as u32).map(|sample| SampleRef::Tar {
                    shard: shard_no,
                    sample,
                }),
            );
            index.shards.push(shard);
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The file names of the sources, in order (for the data position's fingerprint).
    pub fn source_names(&self) -> Vec<String> {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        self.manifests
            .iter()
            .map(|m| name(&m.path))
            .chain(self.shards.iter().map(|s| name(&s.path)))
            .collect()
    }

    /// A short human-readable location: `train.jsonl:12` or `shard-0.tar:000001`.
    pub fn describe(&self, sample: usize) -> String {
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        match self.samples[sample] {
            SampleRef::Line { file, line, .. } => {
                format!("{}:{line}", file_name(&self.manifests[file as usize].path))
            }
            SampleRef::Tar { shard, sample } => {
                let s = &self.shards[shard as usize];
                format!("{}:{}", file_name(&s.path), s.samples[sample as usize].key)
            }
        }
    }

    /// Parses sample `sample` as `kind`.
    pub fn record(&self, sample: usize, kind: DataKind) -> std::result::Result<Record, Skip> {
        match self.samples[sample] {
            SampleRef::Line {
                file, start, end, ..
            } => {
                let m = &self.manifests[file as usize];
                let line = &m.bytes()[start as usize..end as usize];
                let value: Value = serde_json::from_slice(line)
                    .map_err(|e| invalid(format!("not a JSON object: {e}")))?;
                let resolve = |name: &str| Ok(ImageLoc::File(m.dir.join(name)));
                parse_record(&value, kind, &resolve)
            }
            SampleRef::Tar { shard, sample } => {
                self.tar_record(shard, &self.shards[shard as usize], sample as usize, kind)
            }
        }
    }

    fn tar_record(
        &self,
        shard_no: u32,
        shard: &ShardIndex,
        sample: usize,
        kind: DataKind,
    ) -> std::result::Result<Record, Skip> {
        let s = &shard.samples[sample];
        let file = |ext: &str| s.files.iter().find(|(e, _)| e == ext).map(|(_, m)| *m);
        let read = |member: Member, ext: &str| {
            tar::read_member(&shard.path, member).map_err(|e| {
                Skip::new(
                    SkipReason::InvalidRecord,
                    format!("cannot read {}.{ext}: {e}", s.key),
                )
            })
        };
        let json = |member: Member| -> std::result::Result<Value, Skip> {
            serde_json::from_slice(&read(member, "json")?)
                .map_err(|e| invalid(format!("{}.json is not valid JSON: {e}", s.key)))
        };
        match kind {
            DataKind::Pairs => {
                // The reference's `rename(image="jpg;png;jpeg;webp", text="txt")`, widened
                // to every format the decoder reads.
                let image = ["jpg", "png", "jpeg", "webp", "gif", "bmp"]
                    .iter()
                    .find_map(|ext| file(ext).map(|m| (*ext, m)))
                    .ok_or_else(|| {
                        Skip::new(
                            SkipReason::MissingImage,
                            "no .jpg/.png/.jpeg/.webp/.gif/.bmp member",
                        )
                    })?;
                let caption = if let Some(m) = file("txt") {
                    String::from_utf8_lossy(&read(m, "txt")?).into_owned()
                } else if let Some(m) = file("json") {
                    let v = json(m)?;
                    string_field(&v, &["caption", "text"])
                        .ok_or_else(|| invalid("the .json has no \"caption\" string"))?
                } else {
                    return Err(invalid("no .txt or .json caption member"));
                };
                Ok(Record::Pair {
                    image: ImageLoc::Member {
                        shard: shard_no,
                        name: format!("{}.{}", s.key, image.0),
                        member: image.1,
                    },
                    caption,
                })
            }
            DataKind::Documents => {
                let member = file("json").ok_or_else(|| invalid("no .json member"))?;
                let value = json(member)?;
                let dir = s.key.rfind('/').map_or("", |i| &s.key[..=i]);
                let resolve = |name: &str| {
                    let found = shard
                        .by_name
                        .get(name)
                        .map(|m| (name.to_string(), *m))
                        .or_else(|| {
                            let full = format!("{dir}{name}");
                            shard.by_name.get(&full).map(|m| (full, *m))
                        });
                    match found {
                        Some((name, member)) => Ok(ImageLoc::Member {
                            shard: shard_no,
                            name,
                            member,
                        }),
                        None => Err(Skip::new(
                            SkipReason::MissingImage,
                            format!("image \"{name}\" is not in the shard"),
                        )),
                    }
                };
                parse_record(&value, kind, &resolve)
            }
        }
    }

    /// The bytes of an image.
    pub fn image_bytes(&self, loc: &ImageLoc) -> std::result::Result<Arc<Vec<u8>>, Skip> {
        match loc {
            ImageLoc::File(path) => std::fs::read(path).map(Arc::new).map_err(|e| {
                let reason = if e.kind() == std::io::ErrorKind::NotFound {
                    SkipReason::MissingImage
                } else {
                    SkipReason::UnreadableImage
                };
                Skip::new(reason, format!("{}: {e}", path.display()))
            }),
            ImageLoc::Member {
                shard,
                name,
                member,
            } => tar::read_member(&self.shards[*shard as usize].path, *member)
                .map(Arc::new)
                .map_err(|e| Skip::new(SkipReason::UnreadableImage, format!("{name}: {e}"))),
            ImageLoc::Inline(bytes) => Ok(bytes.clone()),
        }
    }
}

fn string_field(v: &Value, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| v.get(*n).and_then(Value::as_str).map(str::to_string))
}

/// Parses one record (a manifest line, or a shard's `.json`). `resolve` turns an image
/// name into its location.
fn parse_record(
    value: &Value,
    kind: DataKind,
    resolve: &dyn Fn(&str) -> std::result::Result<ImageLoc, Skip>,
) -> std::result::Result<Record, Skip> {
    if !value.is_object() {
        return Err(invalid("a record must be a JSON object"));
    }
    match kind {
        DataKind::Pairs => {
            let image = value
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("no \"image\" string (the image's path)"))?;
            let caption = string_field(value, &["caption", "text"])
                .ok_or_else(|| invalid("no \"caption\" string"))?;
            Ok(Record::Pair {
                image: resolve(image)?,
                caption,
            })
        }
        DataKind::Documents => {
            if let Some(list) = value.get("text_list") {
                parse_mmc4(value, list, resolve)
            } else if let Some(texts) = value.get("texts") {
                parse_images_texts(value, texts, resolve)
            } else {
                Err(invalid(
                    "a document needs \"texts\" (with \"images\") or MMC4's \"text_list\" (with \"image_info\")",
                ))
            }
        }
    }
}

fn strings(v: &Value, what: &str) -> std::result::Result<Vec<String>, Skip> {
    v.as_array()
        .ok_or_else(|| invalid(format!("\"{what}\" must be an array of strings")))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("\"{what}\" must be an array of strings")))
        })
        .collect()
}

/// `{"images": [path | null, …], "texts": [string, …]}`: `images[i]` precedes `texts[i]`.
fn parse_images_texts(
    value: &Value,
    texts: &Value,
    resolve: &dyn Fn(&str) -> std::result::Result<ImageLoc, Skip>,
) -> std::result::Result<Record, Skip> {
    let texts = strings(texts, "texts")?;
    let images = match value.get("images") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| invalid("\"images\" must be an array of paths (or nulls)"))?
            .clone(),
    };
    if images.len() > texts.len() {
        return Err(invalid(format!(
            "{} images but {} texts: images[i] goes before texts[i] (use null for a text without an image)",
            images.len(),
            texts.len()
        )));
    }
    let mut doc_images = Vec::new();
    for (sentence, image) in images.iter().enumerate() {
        match image {
            Value::Null => {}
            Value::String(name) => doc_images.push(DocImage {
                loc: resolve(name)?,
                sentence,
                sim: None,
            }),
            _ => return Err(invalid("\"images\" entries must be paths or null")),
        }
    }
    Ok(Record::Document {
        texts,
        images: doc_images,
    })
}

/// MMC4: `{"text_list": [...], "image_info": [{"image_name" | "image_base64",
/// "matched_text_index", "matched_sim"}, …]}`.
fn parse_mmc4(
    value: &Value,
    list: &Value,
    resolve: &dyn Fn(&str) -> std::result::Result<ImageLoc, Skip>,
) -> std::result::Result<Record, Skip> {
    let texts = strings(list, "text_list")?;
    let infos = match value.get("image_info") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| invalid("\"image_info\" must be an array"))?
            .clone(),
    };
    let mut images = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let sentence = info
            .get("matched_text_index")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                invalid(format!(
                    "image_info[{i}] has no \"matched_text_index\" (a non-negative integer)"
                ))
            })? as usize;
        if sentence >= texts.len() {
            return Err(invalid(format!(
                "image_info[{i}].matched_text_index is {sentence}, but there are {} texts",
                texts.len()
            )));
        }
        let sim =
            match info.get("matched_sim") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    invalid(format!("image_info[{i}].matched_sim must be a number"))
                })?),
            };
        let loc = if let Some(b64) = info.get("image_base64").and_then(Value::as_str) {
            ImageLoc::Inline(Arc::new(base64_decode(b64).ok_or_else(|| {
                Skip::new(
                    SkipReason::UnreadableImage,
                    format!("image_info[{i}].image_base64 is not valid base64"),
                )
            })?))
        } else if let Some(name) = info.get("image_name").and_then(Value::as_str) {
            resolve(name)?
        } else {
            // The reference skips an image without its bytes and keeps the document.
            continue;
        };
        images.push(DocImage { loc, sentence, sim });
    }
    Ok(Record::Document { texts, images })
}

/// Standard base64 (RFC 4648, `+/`, optional `=` padding; whitespace ignored).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        if padding > 0 {
            return None;
        }
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if padding > 2 || bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_text() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("TQ").unwrap(), b"M");
        assert_eq!(base64_decode("aGVs\nbG8=").unwrap(), b"hello");
        assert!(base64_decode("a$==").is_none());
        assert!(base64_decode("T").is_none());
    }
}
