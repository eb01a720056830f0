//! The training data pipeline: manifests and tar shards become the reference trainer's
//! batches (LAION text and masking for pairs, MMC4 assembly for documents), bad samples are
//! skipped and counted, the order is seeded per epoch, and a saved position resumes the
//! exact stream.

use std::path::{Path, PathBuf};

use flamingo_core::data::{
    rng, tar, Batch, DataConfig, DataKind, DataLoader, DataPosition, TooManyImages,
};
use flamingo_core::image::{hflip_chw, preprocess_bytes, PreprocessConfig};
use flamingo_core::text::prompts::{interleaved_labels, IGNORE_INDEX};
use flamingo_core::text::FlamingoTokenizer;

const SIZE: usize = 16;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const WORDS: [&str; 24] = [
    "a", "an", "the", "red", "green", "blue", "yellow", "black", "white", "square", "circle",
    "stripe", "is", "on", "and", "with", "picture", "of", "photo", "left", "right", "big", "small",
    ".",
];

/// A WordLevel tokenizer with 93 base tokens (`<unk>` 0, `</s>` 1, words, fillers), so
/// that the reference's added tokens get the golden models' ids: `<|endofchunk|>` 93,
/// `<image>` 94, `<PAD>` 95.
fn write_tokenizer(dir: &Path) -> FlamingoTokenizer {
    let mut vocab = serde_json::Map::new();
    let mut tokens: Vec<String> = vec!["<unk>".into(), "</s>".into()];
    tokens.extend(WORDS.iter().map(|w| w.to_string()));
    while tokens.len() < 93 {
        tokens.push(format!("w{}", tokens.len()));
    }
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i.into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>", "bos_token": null, "pad_token": null}"#,
    )
    .unwrap();
    let tok = FlamingoTokenizer::from_dir(dir).unwrap();
    assert_eq!(
        (
            tok.end_of_chunk_token_id(),
            tok.media_token_id(),
            tok.pad_token_id()
        ),
        (93, 94, 95)
    );
    tok
}

fn id(word: &str) -> u32 {
    match word {
        "</s>" => 1,
        w => WORDS.iter().position(|x| *x == w).unwrap() as u32 + 2,
    }
}

/// A 20×16 RGB PNG: background `rgb`, with a white left column so that a flip shows.
fn png(rgb: [u8; 3]) -> Vec<u8> {
    let (w, h) = (20u32, 16u32);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for _y in 0..h {
        for x in 0..w {
            pixels.extend_from_slice(if x < 3 { &[255, 255, 255] } else { &rgb });
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
    }
    out
}

fn color(i: usize) -> [u8; 3] {
    [
        (i * 40 % 256) as u8,
        (i * 90 % 256) as u8,
        (255 - i * 30 % 256) as u8,
    ]
}

fn preprocessed(bytes: &[u8]) -> Vec<f32> {
    preprocess_bytes(
        bytes,
        &PreprocessConfig {
            size: SIZE,
            apply_exif_orientation: false,
            ..PreprocessConfig::default()
        },
    )
    .unwrap()
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn config(kind: DataKind, dir: &Path, manifest: &str, batch_size: usize) -> DataConfig {
    DataConfig {
        manifests: vec![dir.join(manifest)],
        batch_size,
        shuffle: false,
        flip_probability: 0.0,
        image_size: SIZE,
        workers: 2,
        ..DataConfig::new(kind)
    }
}

fn all_batches(loader: &mut DataLoader) -> Vec<Batch> {
    std::iter::from_fn(|| loader.next_batch().unwrap()).collect()
}

/// Writes `n` pair images `img{i}.png` and returns their bytes.
fn pair_images(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let bytes = png(color(i));
            std::fs::write(dir.join(format!("img{i}.png")), &bytes).unwrap();
            bytes
        })
        .collect()
}

#[test]
fn pairs_become_laion_text_right_padded_with_image_and_pad_masked() {
    let dir = scratch("pairs");
    let tok = write_tokenizer(&dir);
    let images = pair_images(&dir, 2);
    write_lines(
        &dir.join("pairs.jsonl"),
        &[
            serde_json::json!({"image": "img0.png", "caption": "  a red square. "}),
            serde_json::json!({"image": "img1.png", "caption": "blue"}),
        ],
    );
    let mut loader =
        DataLoader::open(config(DataKind::Pairs, &dir, "pairs.jsonl", 2), tok, None).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.rows, 2);
    assert_eq!(b.vision_shape, [2, 1, 1, 3, SIZE, SIZE]);
    // "<image>a red square.<|endofchunk|></s>" — caption stripped, no space after <image>.
    let row0 = vec![94, id("a"), id("red"), id("square"), id("."), 93, 1];
    let row1 = vec![94, id("blue"), 93, 1, 95, 95, 95];
    assert_eq!(b.seq_len, 7, "padded to the longest row");
    assert_eq!(b.input_ids, [row0.clone(), row1.clone()].concat());
    assert_eq!(
        b.attention_mask,
        [vec![1; 7], vec![1, 1, 1, 1, 0, 0, 0]].concat()
    );
    let mask = |row: &[u32]| -> Vec<i64> {
        row.iter()
            .map(|&t| {
                if t == 94 || t == 95 {
                    IGNORE_INDEX
                } else {
                    t as i64
                }
            })
            .collect()
    };
    assert_eq!(
        b.labels,
        [mask(&row0), mask(&row1)].concat(),
        "EOS stays a target"
    );
    let plane = 3 * SIZE * SIZE;
    assert_eq!(b.vision_x[..plane], preprocessed(&images[0])[..]);
    assert_eq!(b.vision_x[plane..], preprocessed(&images[1])[..]);
    assert_eq!(b.keys, vec!["pairs.jsonl:1", "pairs.jsonl:2"]);
    assert!(
        loader.next_batch().unwrap().is_none(),
        "one epoch by default"
    );
}

#[test]
fn pair_captions_are_truncated_to_max_length_tokens() {
    let dir = scratch("pairs-trunc");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 1);
    let caption = vec!["red"; 40].join(" ");
    write_lines(
        &dir.join("p.jsonl"),
        &[serde_json::json!({"image": "img0.png", "caption": caption})],
    );
    let mut loader =
        DataLoader::open(config(DataKind::Pairs, &dir, "p.jsonl", 1), tok, None).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(
        b.seq_len, 32,
        "the reference's max_length=32 cuts <|endofchunk|> and EOS off"
    );
    assert_eq!(b.input_ids[0], 94);
    assert!(b.input_ids[1..].iter().all(|&t| t == id("red")));
}

#[test]
fn documents_follow_the_mmc4_assembly_with_images_zero_padded_to_six() {
    let dir = scratch("docs");
    let tok = write_tokenizer(&dir);
    let images = pair_images(&dir, 3);
    write_lines(
        &dir.join("docs.jsonl"),
        &[
            // MMC4 shape: img2 matches sentence 0 and img0 sentence 2 (file order differs from
            // sentence order); img1 is under the 0.24 similarity threshold.
            serde_json::json!({
                "text_list": ["the red square .", "a circle", "blue stripe"],
                "image_info": [
                    {"image_name": "img0.png", "matched_text_index": 2, "matched_sim": 0.30},
                    {"image_name": "img1.png", "matched_text_index": 1, "matched_sim": 0.10},
                    {"image_name": "img2.png", "matched_text_index": 0, "matched_sim": 0.28}
                ]
            }),
            // images/texts shape: images[i] precedes texts[i].
            serde_json::json!({"images": [null, "img1.png"], "texts": ["a big", "green circle"]}),
        ],
    );
    let cfg = DataConfig {
        single_image_drop_probability: 0.0,
        ..config(DataKind::Documents, &dir, "docs.jsonl", 2)
    };
    let mut loader = DataLoader::open(cfg, tok, None).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.vision_shape, [2, 6, 1, 3, SIZE, SIZE]);
    assert_eq!(b.seq_len, 256);
    assert_eq!(b.num_images, vec![2, 1]);
    // "<image>the red square . a circle<|endofchunk|><image>blue stripe<|endofchunk|></s>"
    let row0 = [
        vec![
            94,
            id("the"),
            id("red"),
            id("square"),
            id("."),
            id("a"),
            id("circle"),
            93,
        ],
        vec![94, id("blue"), id("stripe"), 93, 1],
    ]
    .concat();
    // "a big<image>green circle<|endofchunk|></s>": text before the first image (the
    // reference removes the first <|endofchunk|>, the one that would open the text).
    let row1 = vec![id("a"), id("big"), 94, id("green"), id("circle"), 93, 1];
    for (r, row) in [row0, row1].iter().enumerate() {
        let ids = &b.input_ids[r * 256..(r + 1) * 256];
        assert_eq!(&ids[..row.len()], &row[..]);
        assert!(
            ids[row.len()..].iter().all(|&t| t == 95),
            "right padding to 256"
        );
        assert_eq!(
            b.labels[r * 256..(r + 1) * 256],
            interleaved_labels(ids, 95, 94, 93)[..]
        );
    }
    // Row 0, by sentence: img2 (sentence 0), then img0 (sentence 2), then zeros.
    let image_len = 3 * SIZE * SIZE;
    let slot =
        |r: usize, i: usize| &b.vision_x[(r * 6 + i) * image_len..(r * 6 + i + 1) * image_len];
    assert_eq!(slot(0, 0), &preprocessed(&images[2])[..]);
    assert_eq!(slot(0, 1), &preprocessed(&images[0])[..]);
    assert!(slot(0, 2).iter().all(|&v| v == 0.0));
    assert_eq!(slot(1, 0), &preprocessed(&images[1])[..]);
    assert!((1..6).all(|i| slot(1, i).iter().all(|&v| v == 0.0)));
    // The loss covers the text after each image, its <|endofchunk|> included, never EOS.
    let targets: Vec<i64> = b.labels[..256]
        .iter()
        .copied()
        .filter(|&l| l != IGNORE_INDEX)
        .collect();
    assert_eq!(
        targets,
        [
            id("the"),
            id("red"),
            id("square"),
            id("."),
            id("a"),
            id("circle"),
            93,
            id("blue"),
            id("stripe"),
            93
        ]
        .map(i64::from)
    );
}

#[test]
fn bad_samples_are_skipped_and_counted_by_reason() {
    let dir = scratch("skips");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 2);
    std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(
        dir.join("pairs.jsonl"),
        [
            r#"{"image": "img0.png", "caption": "a red square"}"#,
            r#"{"image": "missing.png", "caption": "a ghost"}"#,
            r#"{"image": "img1.png", "caption": "   "}"#,
            r#"{"image": "broken.png", "caption": "a broken image"}"#,
            r#"{"caption": "no image field"}"#,
            "this is not json",
            "",
            r#"{"image": "img1.png", "caption": "blue"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let mut loader = DataLoader::open(
        config(DataKind::Pairs, &dir, "pairs.jsonl", 2),
        tok.clone(),
        None,
    )
    .unwrap();
    assert_eq!(loader.len(), 7, "blank lines are not samples");
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.keys, vec!["pairs.jsonl:1", "pairs.jsonl:8"]);
    let skipped = &b.position.skipped;
    let counts: Vec<(String, u64)> = skipped
        .counts
        .iter()
        .map(|(k, v)| {
            (
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
                *v,
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("invalidRecord".to_string(), 2),
            ("missingImage".to_string(), 1),
            ("unreadableImage".to_string(), 1),
            ("emptyText".to_string(), 1),
        ]
    );
    assert!(
        skipped.examples[0].starts_with("pairs.jsonl:2: missingImage: ")
            && skipped.examples[0].contains("missing.png"),
        "{:?}",
        skipped.examples
    );

    // Documents: more images than allowed are skipped, or truncated as the reference does.
    let images: Vec<String> = (0..7).map(|i| format!("img{}.png", i % 2)).collect();
    let texts: Vec<String> = (0..7).map(|_| "a red square".to_string()).collect();
    write_lines(
        &dir.join("docs.jsonl"),
        &[serde_json::json!({"images": images, "texts": texts})],
    );
    let cfg = config(DataKind::Documents, &dir, "docs.jsonl", 1);
    let err = DataLoader::open(cfg.clone(), tok.clone(), None)
        .unwrap()
        .next_batch()
        .unwrap_err();
    assert!(err.to_string().contains("tooManyImages"), "{err}");
    let truncate = DataConfig {
        too_many_images: TooManyImages::Truncate,
        ..cfg
    };
    let b = DataLoader::open(truncate, tok, None)
        .unwrap()
        .next_batch()
        .unwrap()
        .unwrap();
    assert_eq!(b.num_images, vec![6]);
    assert_eq!(b.input_ids.iter().filter(|&&t| t == 94).count(), 6);
}

#[test]
fn single_image_documents_follow_the_reference_rejection_rules() {
    let dir = scratch("single");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 2);
    let docs: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"images": [format!("img{}.png", i % 2)], "texts": ["a red square"]}))
        .collect();
    write_lines(&dir.join("docs.jsonl"), &docs);
    let cfg = config(DataKind::Documents, &dir, "docs.jsonl", 1);
    let mut loader = DataLoader::open(cfg.clone(), tok.clone(), None).unwrap();
    let kept = all_batches(&mut loader).len() as u64;
    let dropped = loader.skipped().total();
    assert_eq!(kept + dropped, 40);
    // Seeded draws of probability 0.5: 40 trials land well inside [8, 32].
    assert!((8..=32).contains(&dropped), "{dropped} of 40 dropped");

    // An <image> truncated away leaves too few images; a lone trailing <image> has no target.
    write_lines(
        &dir.join("edge.jsonl"),
        &[
            // "a a a a<image>red…" cut to 5 tokens ends with the <image>.
            serde_json::json!({"images": [null, "img0.png"], "texts": ["a a a a", "red"]}),
            // "a a a a a<image>red…" cut to 5 tokens has no <image> left.
            serde_json::json!({"images": [null, "img0.png"], "texts": ["a a a a a", "red"]}),
        ],
    );
    let edge = DataConfig {
        max_length: 5,
        single_image_drop_probability: 0.0,
        drop_last: false,
        ..config(DataKind::Documents, &dir, "edge.jsonl", 2)
    };
    let err = DataLoader::open(edge, tok, None)
        .unwrap()
        .next_batch()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tooFewImages") && err.contains("singleImageAtEnd"),
        "{err}"
    );
}

#[test]
fn the_order_is_a_seeded_permutation_per_epoch() {
    let dir = scratch("order");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 1);
    let lines: Vec<_> = (0..10)
        .map(|_| serde_json::json!({"image": "img0.png", "caption": "red"}))
        .collect();
    write_lines(&dir.join("p.jsonl"), &lines);
    let keys = |seed: u64, epochs: u64| -> Vec<Vec<String>> {
        let cfg = DataConfig {
            shuffle: true,
            seed,
            epochs: Some(epochs),
            ..config(DataKind::Pairs, &dir, "p.jsonl", 5)
        };
        let mut loader = DataLoader::open(cfg, tok.clone(), None).unwrap();
        all_batches(&mut loader)
            .into_iter()
            .map(|b| b.keys)
            .collect()
    };
    let a = keys(3, 2);
    assert_eq!(a.len(), 4);
    assert_eq!(a, keys(3, 2), "same seed, same order");
    assert_ne!(a, keys(4, 2), "another seed, another order");
    let epoch0: Vec<_> = a[0].iter().chain(&a[1]).cloned().collect();
    let epoch1: Vec<_> = a[2].iter().chain(&a[3]).cloned().collect();
    assert_ne!(epoch0, epoch1, "each epoch is reshuffled");
    for epoch in [epoch0, epoch1] {
        let mut sorted = epoch.clone();
        sorted.sort();
        let mut all: Vec<String> = (1..=10).map(|i| format!("p.jsonl:{i}")).collect();
        all.sort();
        assert_eq!(sorted, all, "every sample once per epoch");
    }
    let expected: Vec<String> = rng::epoch_order(10, 3, 0, true)
        .iter()
        .map(|&i| format!("p.jsonl:{}", i + 1))
        .collect();
    assert_eq!(a[0], expected[..5]);
}

#[test]
fn an_incomplete_last_batch_is_dropped_unless_asked_for() {
    let dir = scratch("partial");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 1);
    let lines: Vec<_> = (0..5)
        .map(|_| serde_json::json!({"image": "img0.png", "caption": "red"}))
        .collect();
    write_lines(&dir.join("p.jsonl"), &lines);
    let sizes = |drop_last: bool| -> Vec<usize> {
        let cfg = DataConfig {
            drop_last,
            epochs: Some(2),
            ..config(DataKind::Pairs, &dir, "p.jsonl", 2)
        };
        all_batches(&mut DataLoader::open(cfg, tok.clone(), None).unwrap())
            .iter()
            .map(|b| b.rows)
            .collect()
    };
    assert_eq!(sizes(true), vec![2, 2, 2, 2]);
    assert_eq!(sizes(false), vec![2, 2, 1, 2, 2, 1]);
}

#[test]
fn a_saved_position_resumes_the_exact_stream_flips_included() {
    let dir = scratch("resume");
    let tok = write_tokenizer(&dir);
    pair_images(&dir, 2);
    let lines: Vec<_> = (0..9)
        .map(|i| {
            if i == 4 {
                serde_json::json!({"image": "gone.png", "caption": "red"})
            } else {
                serde_json::json!({"image": format!("img{}.png", i % 2), "caption": WORDS[i]})
            }
        })
        .collect();
    write_lines(&dir.join("p.jsonl"), &lines);
    let cfg = DataConfig {
        shuffle: true,
        flip_probability: 0.5,
        epochs: Some(3),
        ..config(DataKind::Pairs, &dir, "p.jsonl", 3)
    };
    let straight = all_batches(&mut DataLoader::open(cfg.clone(), tok.clone(), None).unwrap());
    assert!(straight.len() >= 6);
    assert!(straight.iter().any(|b| b.flipped[0]) && straight.iter().any(|b| !b.flipped[0]));
    for cut in [1, 2, 4] {
        // The position goes through JSON, as in a training state.
        let saved: DataPosition =
            serde_json::from_value(serde_json::to_value(&straight[cut - 1].position).unwrap())
                .unwrap();
        let resumed =
            all_batches(&mut DataLoader::open(cfg.clone(), tok.clone(), Some(saved)).unwrap());
        assert_eq!(resumed.len(), straight.len() - cut);
        for (a, b) in straight[cut..].iter().zip(&resumed) {
            assert_eq!(a.keys, b.keys);
            assert_eq!(a.flipped, b.flipped);
            assert_eq!(a.input_ids, b.input_ids);
            assert!(a
                .vision_x
                .iter()
                .zip(&b.vision_x)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            assert_eq!(a.position, b.position, "skip counts carry over too");
        }
    }
    // A position from other settings is refused.
    let other = DataConfig { seed: 7, ..cfg };
    let err = DataLoader::open(other, tok, Some(straight[0].position.clone()))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("belongs to other data or settings"),
        "{err}"
    );
}

#[test]
fn a_pair_batch_flips_all_its_images_with_one_decision() {
    let dir = scratch("flip");
    let tok = write_tokenizer(&dir);
    let images = pair_images(&dir, 2);
    let lines: Vec<_> = (0..40)
        .map(|i| serde_json::json!({"image": format!("img{}.png", i % 2), "caption": "red"}))
        .collect();
    write_lines(&dir.join("p.jsonl"), &lines);
    let cfg = DataConfig {
        flip_probability: 0.5,
        ..config(DataKind::Pairs, &dir, "p.jsonl", 4)
    };
    let batches = all_batches(&mut DataLoader::open(cfg, tok, None).unwrap());
    let flipped = batches.iter().filter(|b| b.flipped[0]).count();
    assert!(
        (1..=9).contains(&flipped),
        "{flipped} of 10 batches flipped"
    );
    let plane = 3 * SIZE * SIZE;
    for b in &batches {
        assert!(b.flipped.iter().all(|&f| f == b.flipped[0]));
        for r in 0..4 {
            let mut expected = preprocessed(&images[r % 2]);
            if b.flipped[0] {
                hflip_chw(&mut expected, SIZE);
            }
            assert_eq!(b.vision_x[r * plane..(r + 1) * plane], expected[..]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tar shards
// ---------------------------------------------------------------------------------------

fn tar_header(name: &str, size: usize, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14500000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A ustar archive of `files`; names over 100 bytes get a pax `path` record.
fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut out = Vec::new();
    let mut add = |name: &str, data: &[u8], flag: u8| {
        out.extend_from_slice(&tar_header(name, data.len(), flag));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    };
    for (name, data) in files {
        if name.len() > 100 {
            let body = format!(" path={name}\n");
            let mut len = body.len() + 2;
            if format!("{len}{body}").len() != len {
                len += 1;
            }
            add("PaxHeader", format!("{len}{body}").as_bytes(), b'x');
            add(&name[..100], data, b'0');
        } else {
            add(name, data, b'0');
        }
    }
    out.resize(out.len() + 1024, 0);
    std::fs::write(path, out).unwrap();
}

#[test]
fn tar_shards_read_the_same_samples_as_the_equivalent_manifest() {
    let dir = scratch("tar");
    let tok = write_tokenizer(&dir);
    let images = pair_images(&dir, 3);
    let captions = [
        "a red square",
        "blue circle",
        "the green stripe",
        "big white photo",
    ];
    write_lines(
        &dir.join("pairs.jsonl"),
        &captions
            .iter()
            .enumerate()
            .map(|(i, c)| serde_json::json!({"image": format!("img{}.png", i % 3), "caption": c}))
            .collect::<Vec<_>>(),
    );
    // Two shards; sample 1's caption in a .json, sample 3 under a folder with a long name.
    let long_dir = format!("{}/", "d".repeat(110));
    let key = |i: usize| {
        if i == 3 {
            format!("{long_dir}{i:06}")
        } else {
            format!("{i:06}")
        }
    };
    let member = |i: usize| -> Vec<(String, Vec<u8>)> {
        let caption = if i == 1 {
            (
                format!("{}.json", key(i)),
                serde_json::to_vec(&serde_json::json!({"caption": captions[i]})).unwrap(),
            )
        } else {
            (format!("{}.txt", key(i)), captions[i].as_bytes().to_vec())
        };
        vec![(format!("{}.png", key(i)), images[i % 3].clone()), caption]
    };
    write_tar(&dir.join("shard-0.tar"), &[member(0), member(1)].concat());
    write_tar(&dir.join("shard-1.tar"), &[member(2), member(3)].concat());
    let index = tar::read_index(&dir.join("shard-1.tar")).unwrap();
    assert_eq!(index[2].name, format!("{long_dir}000003.png"));

    let manifest = config(DataKind::Pairs, &dir, "pairs.jsonl", 2);
    let shards = DataConfig {
        manifests: vec![],
        shards: vec![dir.join("shard-0.tar"), dir.join("shard-1.tar")],
        ..manifest.clone()
    };
    let from_manifest = all_batches(&mut DataLoader::open(manifest, tok.clone(), None).unwrap());
    let from_shards = all_batches(&mut DataLoader::open(shards, tok.clone(), None).unwrap());
    assert_eq!(from_manifest.len(), 2);
    assert_eq!(from_shards.len(), 2);
    for (a, b) in from_manifest.iter().zip(&from_shards) {
        assert_eq!(a.input_ids, b.input_ids);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.vision_x, b.vision_x);
    }
    assert_eq!(
        from_shards[0].keys,
        vec!["shard-0.tar:000000", "shard-0.tar:000001"]
    );

    // Documents in a shard: the .json names images stored in the same shard.
    let doc = serde_json::json!({
        "text_list": ["a red square", "blue circle"],
        "image_info": [{"image_name": "pic.png", "matched_text_index": 1, "matched_sim": 0.3}]
    });
    write_tar(
        &dir.join("docs.tar"),
        &[
            ("000000.json".into(), serde_json::to_vec(&doc).unwrap()),
            ("pic.png".into(), images[1].clone()),
        ],
    );
    write_lines(
        &dir.join("docs.jsonl"),
        &[{
            let mut d = doc.clone();
            d["image_info"][0]["image_name"] = "img1.png".into();
            d
        }],
    );
    let docs_manifest = DataConfig {
        single_image_drop_probability: 0.0,
        ..config(DataKind::Documents, &dir, "docs.jsonl", 1)
    };
    let docs_shard = DataConfig {
        manifests: vec![],
        shards: vec![dir.join("docs.tar")],
        ..docs_manifest.clone()
    };
    let a = DataLoader::open(docs_manifest, tok.clone(), None)
        .unwrap()
        .next_batch()
        .unwrap()
        .unwrap();
    let mut shard_loader = DataLoader::open(docs_shard, tok, None).unwrap();
    assert_eq!(
        shard_loader.len(),
        2,
        "the image member forms a (non-document) sample of its own"
    );
    let b = shard_loader.next_batch().unwrap().unwrap();
    assert_eq!(a.input_ids, b.input_ids);
    assert_eq!(a.vision_x, b.vision_x);
    assert!(shard_loader.next_batch().unwrap().is_none());
    assert_eq!(
        shard_loader.skipped().total(),
        1,
        "pic.png has no .json: skipped as invalid"
    );
}

#[test]
fn a_corrupt_tar_is_an_error_naming_the_file() {
    let dir = scratch("badtar");
    let tok = write_tokenizer(&dir);
    std::fs::write(dir.join("bad.tar"), vec![7u8; 1024]).unwrap();
    let cfg = DataConfig {
        manifests: vec![],
        shards: vec![dir.join("bad.tar")],
        ..DataConfig::new(DataKind::Pairs)
    };
    let err = DataLoader::open(cfg, tok, None).err().unwrap().to_string();
    assert!(err.contains("bad.tar") && err.contains("checksum"), "{err}");
}
