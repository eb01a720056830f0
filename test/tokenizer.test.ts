/**
 * The tokenizer through the public API. Two tokenizers:
 * - `models/tiny/lm/tokenizer.json`, the repository's tiny model (word level, 44 entries,
 *   `<|endoftext|>` = 0, no pad token);
 * - a GPT-NeoX-style byte-level BPE written here (as crates/flamingo-core/tests/text_tokenizer.rs
 *   builds it), whose ids can be computed by hand:
 *     0          `<|endoftext|>`
 *     1 + b      the byte b ('a' = 98, ':' = 59, ' ' = 33, '.' = 47)
 *     257..=265  the merges below ("Output" = 261, " cat" = 264, "é" = 265)
 *   so the reference's procedure gives `<|endofchunk|>` = 266, `<image>` = 267, `<PAD>` = 268.
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { FlamingoError, Tokenizer } from "../ts/src/index.js";
import { REPO_ROOT, tempDir } from "./helpers/golden.js";

const TINY_TOKENIZER = join(REPO_ROOT, "models", "tiny", "lm", "tokenizer.json");

const BASE_LEN = 266;
const OUTPUT = 261;
const CAT = 264;
const E_ACUTE = 265;
const EOC = BASE_LEN;
const MEDIA = BASE_LEN + 1;
const PAD = BASE_LEN + 2;
const byteId = (char: string) => 1 + (char.codePointAt(0) as number);

/** GPT-2's `bytes_to_unicode`. */
function byteChar(b: number): string {
  const printable = (x: number) => (x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || x >= 0xae;
  if (printable(b)) return String.fromCodePoint(b);
  let rank = 0;
  for (let x = 0; x < b; x++) if (!printable(x)) rank++;
  return String.fromCodePoint(256 + rank);
}

const MERGES: [string, string][] = [
  ["O", "u"],
  ["Ou", "t"],
  ["Out", "p"],
  ["Outp", "u"],
  ["Outpu", "t"],
  ["Ġ", "c"],
  ["Ġc", "a"],
  ["Ġca", "t"],
  ["Ã", "©"],
];

function neoxJson(): string {
  return JSON.stringify(neoxObject());
}

/** The tokenizer.json object, for tests that change a part of it. */
function neoxObject(): Record<string, unknown> {
  const vocab: Record<string, number> = { "<|endoftext|>": 0 };
  for (let b = 0; b < 256; b++) vocab[byteChar(b)] = 1 + b;
  MERGES.forEach(([a, b], i) => {
    vocab[a + b] = 257 + i;
  });
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 0,
        content: "<|endoftext|>",
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: { type: "NFC" },
    pre_tokenizer: byteLevel,
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: MERGES.map(([a, b]) => `${a} ${b}`),
    },
  };
}

const tmp = tempDir("flamingo-tokenizer-");
let neox: Tokenizer;
let neoxDir: string;

beforeAll(async () => {
  neoxDir = join(tmp.path, "neox");
  mkdirSync(neoxDir);
  writeFileSync(join(neoxDir, "tokenizer.json"), neoxJson());
  neox = await Tokenizer.fromFile(join(neoxDir, "tokenizer.json"));
});
afterAll(() => tmp.cleanup());

describe("the reference's special tokens", () => {
  it("are added after the vocabulary: <|endofchunk|>, <image>, then <PAD> because there was no pad token", () => {
    expect(neox.specialTokens).toEqual({
      media: MEDIA,
      endOfChunk: EOC,
      pad: PAD,
      padToken: "<PAD>",
      addedPadToken: true,
      eos: 0,
      eosToken: "<|endoftext|>",
    });
    expect(neox.len()).toBe(BASE_LEN + 3);
    expect(neox.bosTokenId).toBeUndefined();
    expect(neox.modelTokens).toEqual({ media: MEDIA, endOfChunk: EOC });
    expect(neox.paddingSide).toBe("right");
    expect(neox.tokenToId("<image>")).toBe(MEDIA);
    expect(neox.idToToken(OUTPUT)).toBe("Output");
    expect(neox.tokenToId("<nothing>")).toBeUndefined();
  });

  it("the tiny model's word-level tokenizer: 44 entries, so 44, 45, 46 and len 47", async () => {
    const tiny = await Tokenizer.fromFile(TINY_TOKENIZER);
    expect([tiny.endOfChunkTokenId, tiny.mediaTokenId, tiny.padTokenId]).toEqual([44, 45, 46]);
    expect(tiny.len()).toBe(47);
    expect(tiny.eosTokenId).toBe(0);
    // "Output" = 27, ":" = 28, "a" = 2, "red" = 9, "circle" = 17 in its vocabulary.
    expect(Array.from(tiny.encode("<image>Output: a red circle<|endofchunk|>"))).toEqual([45, 27, 28, 2, 9, 17, 44]);
  });

  it("fromDir reads dir/tokenizer.json", async () => {
    const t = await Tokenizer.fromDir(neoxDir);
    expect(t.len()).toBe(BASE_LEN + 3);
  });

  it("a missing file rejects with ERR_IO naming it", async () => {
    const missing = join(tmp.path, "nope", "tokenizer.json");
    const error = await Tokenizer.fromFile(missing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FlamingoError);
    expect((error as FlamingoError).code).toBe("ERR_IO");
    expect((error as FlamingoError).message).toContain(missing);
  });

  it("a tokenizer with a pad token gets <|endofchunk|> and <image> but no <PAD>", async () => {
    const dir = join(tmp.path, "neox-with-pad");
    mkdirSync(dir);
    writeFileSync(join(dir, "tokenizer.json"), neoxJson());
    // As the RedPajama tokenizers say it: the pad token is <|endoftext|> (id 0).
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ pad_token: "<|endoftext|>" }));
    const t = await Tokenizer.fromDir(dir);
    expect([t.endOfChunkTokenId, t.mediaTokenId]).toEqual([EOC, MEDIA]);
    expect(t.padTokenId).toBe(0);
    expect(t.specialTokens.addedPadToken).toBe(false);
    expect(t.tokenToId("<PAD>")).toBeUndefined();
    expect(t.len()).toBe(BASE_LEN + 2);
  });

  it("a tokenizer.json without its model section rejects with ERR_CONFIG saying so", async () => {
    const { model: _dropped, ...rest } = neoxObject();
    const bad = join(tmp.path, "no-model.json");
    writeFileSync(bad, JSON.stringify(rest));
    const error = await Tokenizer.fromFile(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FlamingoError);
    expect((error as FlamingoError).code).toBe("ERR_CONFIG");
    expect((error as FlamingoError).message).toContain(bad);
    expect((error as FlamingoError).message).toContain('has no "model" section');
  });

  it("a file that is not a tokenizer rejects with ERR_CONFIG", async () => {
    const bad = join(tmp.path, "bad.json");
    writeFileSync(bad, '{"model": 3}');
    const error = await Tokenizer.fromFile(bad).catch((e: unknown) => e);
    expect((error as FlamingoError).code).toBe("ERR_CONFIG");
  });
});

describe("encode and decode", () => {
  it("encodes the caption format with single ids for <image> and <|endofchunk|>", () => {
    const ids = neox.encode("<image>Output: cat<|endofchunk|>");
    expect(ids).toBeInstanceOf(Int32Array);
    expect(Array.from(ids)).toEqual([MEDIA, OUTPUT, byteId(":"), CAT, EOC]);
  });

  it("decodes, dropping special tokens when asked", () => {
    const ids = [MEDIA, OUTPUT, byteId(":"), CAT, EOC];
    expect(neox.decode(ids)).toBe("<image>Output: cat<|endofchunk|>");
    expect(neox.decode(Int32Array.from(ids), { skipSpecialTokens: true })).toBe("Output: cat");
    expect(neox.decode(Uint32Array.from([E_ACUTE]))).toBe("é");
  });

  it("round-trips text through encode and decode, bytes outside the merges included", () => {
    const texts = [
      "<image>Output: a cat on a mat.<|endofchunk|>",
      "Question: what is it? Short answer: cat",
      "café, naïve, 東京, 🐈",
      "  leading spaces and\ttabs\nand lines",
      "",
    ];
    for (const text of texts) {
      const ids = neox.encode(text);
      // (No " ." or " ,": decode applies transformers' clean-up, below.)
      expect(neox.decode(ids), text).toBe(text);
    }
    const batch = neox.encodeBatch(texts, { padding: "left" });
    expect(neox.decodeBatch({ data: batch.ids, shape: batch.shape }, { skipSpecialTokens: true })).toEqual(
      texts.map((t) => t.replace("<image>", "").replace("<|endofchunk|>", "")),
    );
  });

  it("applies transformers' clean-up of spaces before punctuation", () => {
    expect(neox.decode([byteId("a"), byteId(" "), byteId(".")])).toBe("a.");
  });

  it("refuses negative ids", () => {
    expect(() => neox.decode([1, -2])).toThrow(FlamingoError);
    expect(() => neox.decode(Int32Array.from([1, -2]))).toThrow(/must not be negative/);
  });

  it("decodeBatch takes id rows or a [batch, tokens] tensor", () => {
    const rows = [[OUTPUT], [CAT, PAD]];
    expect(neox.decodeBatch(rows, { skipSpecialTokens: true })).toEqual(["Output", " cat"]);
    const tensor = { data: Int32Array.from([PAD, OUTPUT, CAT, EOC]), shape: [2, 2] };
    expect(neox.decodeBatch(tensor)).toEqual(["<PAD>Output", " cat<|endofchunk|>"]);
    expect(() => neox.decodeBatch({ data: Int32Array.from([1, 2, 3]), shape: [2, 2] })).toThrow(/shape/);
  });
});

describe("encodeBatch", () => {
  const texts = ["Output:", " cat"];

  it("pads on the left for generation", () => {
    const b = neox.encodeBatch(texts, { padding: "left" });
    expect(b.shape).toEqual([2, 2]);
    expect(Array.from(b.ids)).toEqual([OUTPUT, byteId(":"), PAD, CAT]);
    expect(Array.from(b.attentionMask)).toEqual([1, 1, 0, 1]);
  });

  it("pads on the tokenizer's side (right) by default, as training does", () => {
    const b = neox.encodeBatch(texts);
    expect(Array.from(b.ids)).toEqual([OUTPUT, byteId(":"), CAT, PAD]);
    expect(Array.from(b.attentionMask)).toEqual([1, 1, 1, 0]);
  });

  it("truncates to maxLength, and pads to it with padToMaxLength", () => {
    const cut = neox.encodeBatch(texts, { truncation: true, maxLength: 1 });
    expect(cut.shape).toEqual([2, 1]);
    expect(Array.from(cut.ids)).toEqual([OUTPUT, CAT]);
    const wide = neox.encodeBatch([" cat"], { padding: "right", maxLength: 3, padToMaxLength: true });
    expect(Array.from(wide.ids)).toEqual([CAT, PAD, PAD]);
    expect(Array.from(wide.attentionMask)).toEqual([1, 0, 0]);
  });

  it("checks its options", () => {
    expect(() => neox.encodeBatch(texts, { padToMaxLength: true })).toThrow(/padToMaxLength needs maxLength/);
    expect(() => neox.encodeBatch(texts, { padding: "middle" as "left" })).toThrow(FlamingoError);
  });
});

describe("decodeStream", () => {
  it("holds back the first byte of a two-byte character until its second arrives", () => {
    const stream = neox.decodeStream();
    // "é" as two byte tokens (0xC3, 0xA9) rather than its merge.
    expect(stream.push(OUTPUT)).toBe("Output");
    expect(stream.push(1 + 0xc3)).toBe("");
    expect(stream.push(1 + 0xa9)).toBe("é");
    expect(stream.flush()).toBe("");
    expect(Array.from(stream.ids)).toEqual([OUTPUT, 1 + 0xc3, 1 + 0xa9]);
  });

  it("concatenates to exactly decode(ids), clean-up included", () => {
    const ids = [byteId("a"), byteId(" "), byteId("."), CAT, byteId(" "), EOC];
    const stream = neox.decodeStream({ skipSpecialTokens: true });
    const pieces = ids.map((id) => stream.push(id));
    pieces.push(stream.flush());
    // A trailing space waits: " ." becomes "." once the "." arrives; the last one waits for
    // the flush (the skipped <|endofchunk|> adds no text).
    expect(pieces).toEqual(["a", "", ".", " cat", "", "", " "]);
    expect(pieces.join("")).toBe(neox.decode(ids, { skipSpecialTokens: true }));
  });

  it("refuses an id that is not a token id", () => {
    expect(() => neox.decodeStream().push(-1)).toThrow(FlamingoError);
    expect(() => neox.decodeStream().push(1.5)).toThrow(FlamingoError);
  });
});
