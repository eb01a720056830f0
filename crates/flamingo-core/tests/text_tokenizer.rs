//! The tokenizer with OpenFlamingo's special-token procedure (spec §2.2 step 3).
//!
//! GPT-NeoX-20B's real `tokenizer.json` is not available offline, so these tests build a
//! small tokenizer of the same kind here: byte-level BPE (GPT-2 byte↔char table), NFC
//! normalizer, ByteLevel pre-tokenizer/post-processor/decoder, `<|endoftext|>` as special
//! token 0 and no pad token. Its vocabulary is laid out so ids can be computed by hand:
//!   0            `<|endoftext|>`
//!   1 + b        the byte b (so 'a' = 98, ':' = 59, ' ' (Ġ) = 33, '.' = 47)
//!   257..=265    the merges below, in order ("Output" = 261, "Ġcat" = 264, "é" = 265)
//! so `BASE_LEN` = 266, the size before the procedure (`len(tokenizer)` in the reference).

use std::path::{Path, PathBuf};

use candle_core::Device;
use flamingo_core::text::{BatchOptions, FlamingoTokenizer, PaddingSide, Segment, TokenizerConfig};
use flamingo_core::Error;

const BASE_LEN: u32 = 266;
const OUTPUT: u32 = 261;
const CAT: u32 = 264; // "Ġcat" = " cat"
const E_ACUTE: u32 = 265; // "Ã©" = "é"

fn byte_id(b: u8) -> u32 {
    1 + b as u32
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the others to
/// U+0100 + their rank among the non-printable bytes.
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if printable(b) {
        b as char
    } else {
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).unwrap()
    }
}

const MERGES: [(&str, &str); 9] = [
    ("O", "u"),
    ("Ou", "t"),
    ("Out", "p"),
    ("Outp", "u"),
    ("Outpu", "t"),
    ("Ġ", "c"),
    ("Ġc", "a"),
    ("Ġca", "t"),
    ("Ã", "©"),
];

/// A GPT-NeoX-style `tokenizer.json`; `extra` sets top-level keys (padding, post_processor,
/// added_tokens) to other values.
fn neox_json(extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), byte_id(b).into());
    }
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), (257 + i as u32).into());
    }
    assert_eq!(vocab.len() as u32, BASE_LEN);
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let mut json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": merges
        }
    });
    for (k, v) in extra {
        json[*k] = v.clone();
    }
    json
}

fn neox(extra: &[(&str, serde_json::Value)], config: TokenizerConfig) -> FlamingoTokenizer {
    let bytes = serde_json::to_vec(&neox_json(extra)).unwrap();
    FlamingoTokenizer::from_bytes(&bytes, config).unwrap()
}

fn config(json: serde_json::Value) -> TokenizerConfig {
    serde_json::from_value(json).unwrap()
}

/// A fresh folder under the system temp dir, holding the given files.
fn folder(name: &str, files: &[(&str, String)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-text-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

#[test]
fn special_tokens_follow_the_vocabulary_in_the_reference_order_and_pad_is_added_when_missing() {
    let tok = neox(&[], TokenizerConfig::default());
    assert_eq!(tok.end_of_chunk_token_id(), BASE_LEN);
    assert_eq!(tok.media_token_id(), BASE_LEN + 1);
    assert_eq!(tok.pad_token_id(), BASE_LEN + 2);
    assert_eq!(tok.pad_token(), "<PAD>");
    assert!(tok.added_pad_token());
    assert_eq!(tok.len(), BASE_LEN as usize + 3);
    // GPT-NeoX: EOS is <|endoftext|> (id 0) and nothing is prepended.
    assert_eq!(tok.eos_token_id(), 0);
    assert_eq!(tok.eos_token(), "<|endoftext|>");
    assert_eq!(tok.bos_token_id(), None);
    assert_eq!(tok.default_padding_side(), PaddingSide::Right);
}

#[test]
fn an_existing_pad_token_from_the_padding_section_means_no_pad_is_added() {
    let padding = serde_json::json!({
        "strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"
    });
    let tok = neox(&[("padding", padding)], TokenizerConfig::default());
    assert_eq!(tok.end_of_chunk_token_id(), BASE_LEN);
    assert_eq!(tok.media_token_id(), BASE_LEN + 1);
    assert_eq!(tok.pad_token_id(), 0);
    assert!(!tok.added_pad_token());
    assert_eq!(tok.token_to_id("<PAD>"), None);
    assert_eq!(tok.len(), BASE_LEN as usize + 2);
    // transformers takes the default padding side from the same section.
    assert_eq!(tok.default_padding_side(), PaddingSide::Left);
}

#[test]
fn a_pad_token_named_by_tokenizer_config_beside_the_file_means_no_pad_is_added() {
    let dir = folder(
        "config-pad",
        &[
            ("tokenizer.json", neox_json(&[]).to_string()),
            (
                "tokenizer_config.json",
                r#"{"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                    "tokenizer_class": "GPTNeoXTokenizer"}"#
                    .to_string(),
            ),
        ],
    );
    let tok = FlamingoTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.pad_token_id(), 0);
    assert!(!tok.added_pad_token());
    assert_eq!(
        (tok.end_of_chunk_token_id(), tok.media_token_id()),
        (BASE_LEN, BASE_LEN + 1)
    );
    assert_eq!(tok.len(), BASE_LEN as usize + 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_declared_pad_token_missing_from_the_vocabulary_takes_the_next_id_before_the_flamingo_tokens() {
    // transformers registers declared special tokens at load, so "<pad>" gets 266 first.
    let dir = folder(
        "map-pad",
        &[
            ("tokenizer.json", neox_json(&[]).to_string()),
            (
                "special_tokens_map.json",
                r#"{"pad_token": {"content": "<pad>", "lstrip": false, "normalized": false,
                    "rstrip": false, "single_word": false}}"#
                    .to_string(),
            ),
        ],
    );
    let tok = FlamingoTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.pad_token_id(), BASE_LEN);
    assert_eq!(tok.end_of_chunk_token_id(), BASE_LEN + 1);
    assert_eq!(tok.media_token_id(), BASE_LEN + 2);
    assert_eq!(tok.len(), BASE_LEN as usize + 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn new_ids_follow_added_tokens_that_lie_beyond_the_model_vocabulary() {
    // Like GPT-NeoX-20B's extra added tokens: len(tokenizer) counts them, so <|endofchunk|>
    // comes after them.
    let added = serde_json::json!([
        {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true},
        {"id": 266, "content": "<|extra|>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true}
    ]);
    let tok = neox(&[("added_tokens", added)], TokenizerConfig::default());
    assert_eq!(tok.end_of_chunk_token_id(), 267);
    assert_eq!(tok.media_token_id(), 268);
    assert_eq!(tok.pad_token_id(), 269);
    assert_eq!(tok.len(), 270);
}

#[test]
fn the_procedure_is_idempotent_on_a_tokenizer_that_already_has_the_flamingo_tokens() {
    let added = serde_json::json!([
        {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true},
        {"id": 266, "content": "<|endofchunk|>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true},
        {"id": 267, "content": "<image>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true},
        {"id": 268, "content": "<PAD>", "single_word": false, "lstrip": false,
         "rstrip": false, "normalized": false, "special": true}
    ]);
    let tok = neox(
        &[("added_tokens", added)],
        config(serde_json::json!({"pad_token": "<PAD>"})),
    );
    assert_eq!(
        (
            tok.end_of_chunk_token_id(),
            tok.media_token_id(),
            tok.pad_token_id()
        ),
        (266, 267, 268)
    );
    assert_eq!(tok.len(), 269);
}

#[test]
fn flamingo_tokens_are_single_ids_inside_text() {
    let tok = neox(&[], TokenizerConfig::default());
    let ids = tok
        .encode("<image>Output:a cat<|endofchunk|>", true)
        .unwrap();
    let (media, eoc) = (tok.media_token_id(), tok.end_of_chunk_token_id());
    assert_eq!(
        ids,
        vec![media, OUTPUT, byte_id(b':'), byte_id(b'a'), CAT, eoc]
    );
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<image>Output:a cat<|endofchunk|>"
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "Output:a cat");
}

#[test]
fn non_ascii_text_round_trips_and_multi_byte_characters_split_into_byte_tokens() {
    let tok = neox(&[], TokenizerConfig::default());
    let text = "naïve café 🐱 Ωμέγα — «ok»";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    // "é" is merged into one token; "🐱" (F0 9F 90 B1) has no merges: four byte tokens.
    assert_eq!(tok.encode("é", false).unwrap(), vec![E_ACUTE]);
    assert_eq!(
        tok.encode("🐱", false).unwrap(),
        vec![byte_id(0xF0), byte_id(0x9F), byte_id(0x90), byte_id(0xB1)]
    );
}

#[test]
fn decode_applies_transformers_clean_up_by_default_and_not_when_the_config_disables_it() {
    let tok = neox(&[], TokenizerConfig::default());
    // " ." is its own pre-token: Ġ then '.'.
    let ids = vec![byte_id(b'a'), CAT, byte_id(b' '), byte_id(b'.')];
    assert_eq!(tok.encode("a cat .", true).unwrap(), ids);
    assert_eq!(tok.decode(&ids, true).unwrap(), "a cat.");
    let raw = neox(
        &[],
        config(serde_json::json!({"clean_up_tokenization_spaces": false})),
    );
    assert_eq!(raw.decode(&ids, true).unwrap(), "a cat .");
}

#[test]
fn a_batch_is_padded_on_the_requested_side_with_a_matching_mask() {
    let tok = neox(&[], TokenizerConfig::default());
    let pad = tok.pad_token_id();
    let (media, colon, a) = (tok.media_token_id(), byte_id(b':'), byte_id(b'a'));
    let texts = ["a cat", "<image>Output:"];

    let left = tok
        .encode_batch(&texts, PaddingSide::Left, None, false)
        .unwrap();
    assert_eq!(
        left.input_ids,
        vec![vec![pad, a, CAT], vec![media, OUTPUT, colon]]
    );
    assert_eq!(left.attention_mask, vec![vec![0, 1, 1], vec![1, 1, 1]]);

    let right = tok
        .encode_batch(&texts, PaddingSide::Right, None, false)
        .unwrap();
    assert_eq!(
        right.input_ids,
        vec![vec![a, CAT, pad], vec![media, OUTPUT, colon]]
    );
    assert_eq!(right.attention_mask, vec![vec![1, 1, 0], vec![1, 1, 1]]);

    let (ids, mask) = left.to_tensors(&Device::Cpu).unwrap();
    assert_eq!(ids.dims(), &[2, 3]);
    assert_eq!(mask.to_vec2::<u32>().unwrap(), left.attention_mask);
}

#[test]
fn truncation_cuts_rows_to_max_length_and_max_length_padding_fills_every_row() {
    let tok = neox(&[], TokenizerConfig::default());
    let pad = tok.pad_token_id();
    let (media, a) = (tok.media_token_id(), byte_id(b'a'));
    let texts = ["a cat", "<image>Output:"];

    let cut = tok
        .encode_batch(&texts, PaddingSide::Right, Some(2), true)
        .unwrap();
    assert_eq!(cut.input_ids, vec![vec![a, CAT], vec![media, OUTPUT]]);
    // max_length without truncation only matters for max_length padding.
    let uncut = tok
        .encode_batch(&texts, PaddingSide::Right, Some(2), false)
        .unwrap();
    assert_eq!(uncut.seq_len(), 3);

    let options = BatchOptions {
        padding_side: Some(PaddingSide::Right),
        truncation: true,
        max_length: Some(5),
        pad_to_max_length: true,
        add_special_tokens: true,
    };
    let full = tok.encode_batch_with(&texts, &options).unwrap();
    assert_eq!(full.input_ids[0], vec![a, CAT, pad, pad, pad]);
    assert_eq!(full.attention_mask[1], vec![1, 1, 1, 0, 0]);
}

#[test]
fn add_bos_token_in_the_config_prepends_bos_and_truncation_keeps_room_for_it() {
    let tok = neox(
        &[],
        config(serde_json::json!({
            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": true
        })),
    );
    let a = byte_id(b'a');
    assert_eq!(tok.bos_token_id(), Some(0));
    assert_eq!(tok.encode("a cat", true).unwrap(), vec![0, a, CAT]);
    assert_eq!(tok.encode("a cat", false).unwrap(), vec![a, CAT]);
    let cut = tok
        .encode_batch(&["a cat"], PaddingSide::Left, Some(2), true)
        .unwrap();
    assert_eq!(cut.input_ids, vec![vec![0, a]]);
    // The procedure is unchanged: the media id is still the last id of encode("<image>").
    assert_eq!(
        *tok.encode("<image>", true).unwrap().last().unwrap(),
        tok.media_token_id()
    );
}

#[test]
fn a_bos_prepended_by_the_tokenizer_json_template_is_detected_without_a_config() {
    // LLaMA-style: the post-processor is a template "<bos> $A".
    let template = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                                             "tokens": ["<|endoftext|>"]}}
    });
    let tok = neox(&[("post_processor", template)], TokenizerConfig::default());
    assert_eq!(tok.bos_token_id(), Some(0));
    assert_eq!(
        tok.encode("<image>", true).unwrap(),
        vec![0, tok.media_token_id()]
    );
}

#[test]
fn streaming_decode_holds_a_multi_byte_character_until_its_last_byte() {
    // Clean-up off: every complete piece is emitted as soon as it is complete.
    let tok = neox(
        &[],
        config(serde_json::json!({"clean_up_tokenization_spaces": false})),
    );
    let ids = tok.encode("a 🐱", false).unwrap();
    assert_eq!(
        ids,
        vec![
            byte_id(b'a'),
            byte_id(b' '),
            byte_id(0xF0),
            byte_id(0x9F),
            byte_id(0x90),
            byte_id(0xB1)
        ]
    );
    let mut stream = tok.decode_stream(true);
    let steps: Vec<Option<String>> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    let expected = [Some("a"), Some(" "), None, None, None, Some("🐱")];
    assert_eq!(steps, expected.map(|s| s.map(String::from)));
    assert_eq!(stream.finish().unwrap(), None);
}

#[test]
fn streaming_decode_with_clean_up_holds_a_trailing_space_and_matches_decode() {
    let tok = neox(&[], TokenizerConfig::default());
    let mut ids = tok.encode("a cat . é 🐱", false).unwrap();
    ids.push(tok.end_of_chunk_token_id());
    let mut stream = tok.decode_stream(true);
    let mut steps = Vec::new();
    for &id in &ids {
        steps.push(stream.step(id).unwrap());
    }
    // "a", " cat", " " held (it may be eaten by " ." → "."), ".", " " held, " é",
    // " " held, 3 partial bytes held, " 🐱", <|endofchunk|> skipped.
    let expected = [
        Some("a"),
        Some(" cat"),
        None,
        Some("."),
        None,
        Some(" é"),
        None,
        None,
        None,
        None,
        Some(" 🐱"),
        None,
    ];
    assert_eq!(steps, expected.map(|s| s.map(String::from)));
    assert_eq!(stream.finish().unwrap(), None);
    let streamed: String = steps.into_iter().flatten().collect();
    assert_eq!(streamed, tok.decode(&ids, true).unwrap());
    assert_eq!(streamed, "a cat. é 🐱");
}

#[test]
fn finish_flushes_text_still_held_back() {
    let tok = neox(&[], TokenizerConfig::default());
    let mut stream = tok.decode_stream(false);
    assert_eq!(stream.step(byte_id(b'a')).unwrap(), Some("a".into()));
    assert_eq!(stream.step(byte_id(b' ')).unwrap(), None);
    assert_eq!(stream.step(byte_id(0xF0)).unwrap(), None);
    assert_eq!(stream.finish().unwrap(), Some(" \u{FFFD}".into()));
}

#[test]
fn interleaved_segments_become_ids_with_the_image_order() {
    let tok = neox(&[], TokenizerConfig::default());
    let (media, eoc, colon, a) = (
        tok.media_token_id(),
        tok.end_of_chunk_token_id(),
        byte_id(b':'),
        byte_id(b'a'),
    );
    let segments = [
        Segment::Image(1),
        Segment::text("Output:a cat"),
        Segment::Image(0),
        Segment::text("Output:"),
    ];
    let enc = tok.encode_interleaved(&segments, true).unwrap();
    assert_eq!(
        enc.input_ids,
        vec![media, OUTPUT, colon, a, CAT, eoc, media, OUTPUT, colon]
    );
    assert_eq!(enc.attention_mask, vec![1; 9]);
    assert_eq!(enc.image_order, vec![1, 0]);

    let (batch, orders) = tok
        .encode_interleaved_batch(
            &[
                segments.to_vec(),
                vec![Segment::Image(0), Segment::text("a")],
            ],
            PaddingSide::Left,
            true,
        )
        .unwrap();
    assert_eq!(batch.input_ids[1][7..], [media, a]);
    assert_eq!(batch.attention_mask[1], [vec![0; 7], vec![1; 2]].concat());
    assert_eq!(orders, vec![vec![1, 0], vec![0]]);
}

#[test]
fn a_tokenizer_json_without_a_model_is_refused_with_the_file_named() {
    let dir = folder(
        "bad",
        &[(
            "tokenizer.json",
            r#"{"version": "1.0", "added_tokens": []}"#.to_string(),
        )],
    );
    let path = dir.join("tokenizer.json");
    let err = FlamingoTokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("\"model\""), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn invalid_json_and_missing_files_are_refused_with_the_file_named() {
    let dir = folder("garbage", &[("tokenizer.json", "{ not json".to_string())]);
    let err = FlamingoTokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(err.to_string().contains("not valid JSON"), "{err}");

    let missing: &Path = &dir.join("nope").join("tokenizer.json");
    let err = FlamingoTokenizer::from_file(missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");

    // A model of the wrong shape is caught by the tokenizers parser, still naming the file.
    let mut broken = neox_json(&[]);
    broken["model"]["merges"] = serde_json::json!(42);
    std::fs::write(dir.join("tokenizer.json"), broken.to_string()).unwrap();
    let err = FlamingoTokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
