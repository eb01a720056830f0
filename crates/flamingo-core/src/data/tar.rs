//! A small reader for the tar shards of webdataset (the reference trainer's data format):
//! POSIX ustar headers, with the GNU long-name (`L`) and pax (`x`) extensions that
//! Python's `tarfile` and GNU tar write for long paths. Only the member index is read up
//! front (headers, seeking over the contents); a member's bytes are read when a sample
//! needs them.
//!
//! webdataset groups members into samples by key: the path up to the first `.` of its
//! last component (`base_plus_ext`: `a/000001.jpg` → key `a/000001`, extension `jpg`);
//! consecutive members with the same key form one sample, and extensions are compared in
//! lower case.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const BLOCK: u64 = 512;

/// Where a member's contents lie in its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub size: u64,
}

/// One regular file of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub member: Member,
}

/// webdataset's `base_plus_ext`: `(key, extension)`, or `None` for a name without a `.`
/// in its last component (webdataset ignores such members).
pub fn split_key(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_start..].find('.')? + base_start;
    if dot == base_start {
        // A hidden file (`.DS_Store`) has an empty key.
        return None;
    }
    Some((&name[..dot], &name[dot + 1..]))
}

fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::corrupt(path, message)
}

/// Parses a numeric header field: octal ASCII (NUL/space terminated), or GNU's base-256
/// (high bit of the first byte set) for sizes of 8 GiB and more.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The pax `path` record of an extended header (`"<len> path=<value>\n"` records), if any.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

/// Reads the index of every regular file in a tar archive, in archive order.
pub fn read_index(path: &Path) -> Result<Vec<Entry>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; BLOCK as usize];
    loop {
        if offset + BLOCK > file_len {
            if offset == file_len {
                // No end-of-archive blocks: accepted, as Python's tarfile does.
                break;
            }
            return Err(corrupt(
                path,
                format!("truncated tar header at byte {offset}"),
            ));
        }
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| Error::io(path, e))?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let stored = parse_number(&header[148..156]).ok_or_else(|| {
            corrupt(
                path,
                format!("bad tar header checksum field at byte {offset}"),
            )
        })?;
        let computed: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != computed {
            return Err(corrupt(
                path,
                format!(
                    "tar header checksum mismatch at byte {offset} (not a tar file, or corrupt)"
                ),
            ));
        }
        let size = parse_number(&header[124..136])
            .ok_or_else(|| corrupt(path, format!("bad member size at byte {offset}")))?;
        let data_offset = offset + BLOCK;
        if data_offset + size > file_len {
            return Err(corrupt(
                path,
                format!("member at byte {offset} claims {size} bytes, past the end of the file"),
            ));
        }
        let typeflag = header[156];
        let read_data = |file: &mut File| -> Result<Vec<u8>> {
            let mut data = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(data_offset))
                .and_then(|_| file.read_exact(&mut data))
                .map_err(|e| Error::io(path, e))?;
            Ok(data)
        };
        match typeflag {
            b'L' => {
                let data = read_data(&mut file)?;
                long_name = Some(c_string(&data));
            }
            b'x' => {
                let data = read_data(&mut file)?;
                if let Some(p) = pax_path(&data) {
                    long_name = Some(p);
                }
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| {
                    let name = c_string(&header[0..100]);
                    let ustar = &header[257..262] == b"ustar";
                    let prefix = if ustar {
                        c_string(&header[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                });
                entries.push(Entry {
                    name,
                    member: Member {
                        offset: data_offset,
                        size,
                    },
                });
            }
            // Directories, links, global pax headers and the rest carry no sample data.
            _ => long_name = None,
        }
        offset = data_offset + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(entries)
}

/// Reads one member's bytes.
pub fn read_member(path: &Path, member: Member) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(member.offset))?;
    let mut data = vec![0u8; member.size as usize];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// The members of one webdataset sample: its key and `(extension, member)` in archive order.
#[derive(Clone, Debug)]
pub struct TarSample {
    pub key: String,
    pub files: Vec<(String, Member)>,
}

/// A shard's index: its samples, and every member by name (documents may name images
/// stored elsewhere in the shard).
#[derive(Debug)]
pub struct ShardIndex {
    pub path: PathBuf,
    pub samples: Vec<TarSample>,
    pub by_name: std::collections::HashMap<String, Member>,
}

/// Indexes a shard and groups its members into samples as webdataset's `group_by_keys` does.
pub fn index_shard(path: &Path) -> Result<ShardIndex> {
    let entries = read_index(path)?;
    let mut samples: Vec<TarSample> = Vec::new();
    let mut by_name = std::collections::HashMap::with_capacity(entries.len());
    for entry in entries {
        by_name.insert(entry.name.clone(), entry.member);
        let Some((key, ext)) = split_key(&entry.name) else {
            continue;
        };
        let ext = ext.to_lowercase();
        match samples.last_mut() {
            Some(last) if last.key == key => last.files.push((ext, entry.member)),
            _ => samples.push(TarSample {
                key: key.to_string(),
                files: vec![(ext, entry.member)],
            }),
        }
    }
    Ok(ShardIndex {
        path: path.to_path_buf(),
        samples,
        by_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_dot_of_the_last_component() {
        assert_eq!(split_key("000001.jpg"), Some(("000001", "jpg")));
        assert_eq!(
            split_key("a.b/000001.seg.png"),
            Some(("a.b/000001", "seg.png"))
        );
        assert_eq!(split_key("dir/noext"), None);
        assert_eq!(split_key(".hidden"), None);
    }

    #[test]
    fn numbers_parse_as_octal_or_base_256() {
        assert_eq!(parse_number(b"00000001750\0"), Some(1000));
        assert_eq!(parse_number(b"      17 \0"), Some(15));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]),
            Some(256)
        );
    }

    #[test]
    fn pax_records_give_the_path() {
        let rec = b"30 mtime=1700000000.123456789\n26 path=dir/long_name.txt\n";
        assert_eq!(pax_path(rec).as_deref(), Some("dir/long_name.txt"));
    }
}
