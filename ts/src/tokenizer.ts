/**
 * `Tokenizer`: an HF `tokenizer.json` with OpenFlamingo's special tokens added exactly as the
 * reference's `create_model_and_transforms` adds them (spec §2.2 step 3: `<|endofchunk|>`,
 * then `<image>`, then `<PAD>` only when the tokenizer has no pad token), and transformers'
 * encode / pad / truncate / decode behaviour. The work is the engine's `FlamingoTokenizer`;
 * this class validates arguments and shapes results.
 *
 * Loading parses a file of megabytes and runs off the JS thread. Encoding and decoding are
 * synchronous: a prompt encodes in well under a millisecond, and a streaming step decodes one
 * token, so a Promise per call would cost more than the work.
 */

import { z } from "zod";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "./errors.js";
import { loadNative, type NativeBinding } from "./native.js";
import type { Tokens } from "./options.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

/** The ids and spellings of a tokenizer's special tokens. */
export interface SpecialTokens {
  /** `<image>`: one per image, right before the image's text. */
  media: number;
  /** `<|endofchunk|>`: closes the text of an image; generation's stop token. */
  endOfChunk: number;
  /** The pad id: the tokenizer's own pad token, or the `<PAD>` the reference adds. */
  pad: number;
  /** The pad token's text. */
  padToken: string;
  /** Whether `<PAD>` was added (the tokenizer defined no pad token: GPT-NeoX, LLaMA). */
  addedPadToken: boolean;
  /** End of text (`<|endoftext|>`, id 0, for the releases' GPT-NeoX tokenizer). */
  eos: number;
  eosToken: string;
  /** Beginning of text, when the tokenizer names one (whether it is prepended is the tokenizer's business). */
  bos?: number;
  bosToken?: string;
}

interface NativeSpecialTokens {
  media: number;
  endOfChunk: number;
  pad: number;
  padToken: string;
  addedPadToken: boolean;
  eos: number;
  eosToken: string;
  bos?: number | null;
  bosToken?: string | null;
}

interface NativeTextStream {
  push(id: number): string;
  flush(): string;
  ids(): Int32Array;
}

/** `bindings/node/src/text.rs`'s tokenizer. */
interface NativeTokenizer {
  len(): number;
  specialTokens(): NativeSpecialTokens;
  defaultPaddingSide(): string;
  tokenToId(token: string): number | null;
  idToToken(id: number): string | null;
  encode(text: string, addSpecialTokens?: boolean): Int32Array;
  encodeBatch(
    texts: string[],
    options?: {
      padding?: string;
      maxLength?: number;
      truncation?: boolean;
      padToMaxLength?: boolean;
      addSpecialTokens?: boolean;
    },
  ): { ids: Int32Array; attentionMask: Int32Array; shape: number[] };
  decode(ids: Int32Array, skipSpecialTokens?: boolean): string;
  decodeBatch(rows: Int32Array[], skipSpecialTokens?: boolean): string[];
  decodeStream(skipSpecialTokens?: boolean): NativeTextStream;
}

interface NativeText {
  loadTokenizer(path: string): Promise<NativeTokenizer>;
}

function native(): NativeText {
  return loadNative() as NativeBinding & NativeText;
}

const encodeShape = {
  /**
   * Let the tokenizer add its BOS/EOS around the text, as HF `tokenizer(text)` does (LLaMA
   * and OPT prepend BOS; the releases' GPT-NeoX tokenizer adds nothing). Default: `true`.
   */
  addSpecialTokens: z.boolean().optional(),
};
/** Options of {@link Tokenizer.encode}. */
export const EncodeOptionsSchema: Strict<typeof encodeShape> = z.strictObject(encodeShape);
export type EncodeOptions = z.infer<typeof EncodeOptionsSchema>;

const encodeBatchShape = {
  ...encodeShape,
  /**
   * Which end of a row gets the padding. `"left"` for generation and evaluation (every row's
   * last token is then its newest, as the reference's eval pads), `"right"` for training.
   * Default: the tokenizer's own side (`padding_side` in its config, else right).
   */
  padding: z.enum(["left", "right"]).optional(),
  /**
   * With `truncation`: the most tokens a row keeps, special tokens included. With
   * `padToMaxLength`: the padded width. Default: none.
   */
  maxLength: z.number().int().positive().optional(),
  /**
   * Cut rows to `maxLength` tokens (else to the config's `model_max_length`), from the
   * tokenizer's truncation side, as HF `truncation=True`. Default: `false`.
   */
  truncation: z.boolean().optional(),
  /** Pad every row to `maxLength` (HF `padding="max_length"`) instead of to the longest row. Default: `false`. */
  padToMaxLength: z.boolean().optional(),
};
/** Options of {@link Tokenizer.encodeBatch}; the defaults are HF `tokenizer(texts, padding="longest")`. */
export const EncodeBatchOptionsSchema: z.ZodObject<typeof encodeBatchShape, z.core.$strict> = z
  .strictObject(encodeBatchShape)
  .superRefine((v, ctx) => {
    if (v.padToMaxLength && v.maxLength === undefined) {
      ctx.addIssue({ code: "custom", path: ["maxLength"], message: "padToMaxLength needs maxLength" });
    }
  });
export type EncodeBatchOptions = z.infer<typeof EncodeBatchOptionsSchema>;

const decodeShape = {
  /** Leave special tokens (`<image>`, `<|endofchunk|>`, `<PAD>`, EOS, …) out of the text. Default: `false`. */
  skipSpecialTokens: z.boolean().optional(),
};
/** Options of {@link Tokenizer.decode}, {@link Tokenizer.decodeBatch} and {@link Tokenizer.decodeStream}. */
export const DecodeOptionsSchema: Strict<typeof decodeShape> = z.strictObject(decodeShape);
export type DecodeOptions = z.infer<typeof DecodeOptionsSchema>;

/** A padded batch: row-major `[batch, tokens]` ids and attention mask. */
export interface EncodedBatch {
  /** Token ids; padding positions hold the pad id. */
  ids: Int32Array;
  /** 1 for tokens, 0 for padding. */
  attentionMask: Int32Array;
  /** `[batch, tokens]`. */
  shape: [number, number];
}

/** Token ids as the decoders take them: a typed array or a plain array of non-negative integers. */
export type TokenIds = Int32Array | Uint32Array | readonly number[];

const idsSchema = z.union([
  z.custom<Int32Array>((v) => v instanceof Int32Array, { error: "expected an Int32Array" }),
  z.custom<Uint32Array>((v) => v instanceof Uint32Array, { error: "expected a Uint32Array" }),
  z.array(z.number().int().nonnegative().max(0x7fff_ffff)),
]);

function toIds(ids: TokenIds): Int32Array {
  if (ids instanceof Int32Array) return ids;
  return Int32Array.from(ids as ArrayLike<number>);
}

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value ?? {});
  if (!parsed.success) throw invalidInput(what, parsed.error);
  return parsed.data;
}

/** Calls into the binding, re-raising its errors as `FlamingoError`s. */
function call<T>(f: () => T): T {
  try {
    return f();
  } catch (error) {
    throw fromNative(error);
  }
}

/**
 * Turns generated ids into text one token at a time: `push(id)` returns the text that `id`
 * completes (`""` while a multi-byte character or a clean-up pattern is still open), and
 * `flush()` what is left once generation stops. The pieces concatenate to exactly
 * `tokenizer.decode(allIds)`.
 */
export class TextStream {
  readonly #native: NativeTextStream;

  /** @internal Made by {@link Tokenizer.decodeStream}. */
  constructor(native: NativeTextStream) {
    this.#native = native;
  }

  /** Adds one token id; returns the text it completes. */
  push(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id > 0x7fff_ffff) {
      throw new FlamingoError(ErrorCode.InvalidInput, `invalid token id: ${id} is not a non-negative 32-bit integer`);
    }
    return call(() => this.#native.push(id));
  }

  /** The text still held back; call once, after the last `push`. */
  flush(): string {
    return call(() => this.#native.flush());
  }

  /** Every id pushed so far. */
  get ids(): Int32Array {
    return this.#native.ids();
  }
}

/** The reference's tokenizer, with `<|endofchunk|>`, `<image>` and (if needed) `<PAD>` added. */
export class Tokenizer {
  readonly #native: NativeTokenizer;
  /** Ids and spellings of the special tokens. */
  readonly specialTokens: Readonly<SpecialTokens>;

  private constructor(native: NativeTokenizer) {
    this.#native = native;
    const s = native.specialTokens();
    const special: SpecialTokens = {
      media: s.media,
      endOfChunk: s.endOfChunk,
      pad: s.pad,
      padToken: s.padToken,
      addedPadToken: s.addedPadToken,
      eos: s.eos,
      eosToken: s.eosToken,
    };
    if (s.bos != null) special.bos = s.bos;
    if (s.bosToken != null) special.bosToken = s.bosToken;
    this.specialTokens = Object.freeze(special);
  }

  /**
   * Loads a `tokenizer.json`, with `tokenizer_config.json` and `special_tokens_map.json` from
   * the same folder when they are there (they name the special tokens and padding side).
   * Slow-only tokenizers (`tokenizer.model`, `vocab.json` + `merges.txt`) are not read: save
   * the fast tokenizer once from Python.
   */
  static async fromFile(path: string): Promise<Tokenizer> {
    const p = parse(z.string().min(1), path, "tokenizer path");
    try {
      return new Tokenizer(await native().loadTokenizer(p));
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Loads `dir/tokenizer.json` (see {@link Tokenizer.fromFile}). */
  static async fromDir(dir: string): Promise<Tokenizer> {
    return Tokenizer.fromFile(parse(z.string().min(1), dir, "tokenizer folder"));
  }

  /** `len(tokenizer)`: the vocabulary with the added tokens. The model's embeddings are resized to it. */
  len(): number {
    return this.#native.len();
  }

  /** Id of `<image>`. */
  get mediaTokenId(): number {
    return this.specialTokens.media;
  }

  /** Id of `<|endofchunk|>`. */
  get endOfChunkTokenId(): number {
    return this.specialTokens.endOfChunk;
  }

  /** Id of the pad token. */
  get padTokenId(): number {
    return this.specialTokens.pad;
  }

  /** Id of the end-of-text token. */
  get eosTokenId(): number {
    return this.specialTokens.eos;
  }

  /** Id of the beginning-of-text token, when the tokenizer names one. */
  get bosTokenId(): number | undefined {
    return this.specialTokens.bos;
  }

  /** The ids {@link Flamingo.load} needs (`tokens`). */
  get modelTokens(): Tokens {
    return { media: this.specialTokens.media, endOfChunk: this.specialTokens.endOfChunk };
  }

  /** The side {@link encodeBatch} pads on when not told. */
  get paddingSide(): "left" | "right" {
    return this.#native.defaultPaddingSide() === "left" ? "left" : "right";
  }

  /** The id of a token (a whole vocabulary entry, e.g. `"<image>"`), if the vocabulary has it. */
  tokenToId(token: string): number | undefined {
    return this.#native.tokenToId(token) ?? undefined;
  }

  /** The vocabulary entry of an id, if there is one. */
  idToToken(id: number): string | undefined {
    return this.#native.idToToken(id) ?? undefined;
  }

  /** Token ids of one text. `<image>` and `<|endofchunk|>` in the text become their single ids. */
  encode(text: string, options?: EncodeOptions): Int32Array {
    const t = parse(z.string(), text, "text");
    const o = parse(EncodeOptionsSchema, options, "encode options");
    return call(() => this.#native.encode(t, o.addSpecialTokens));
  }

  /**
   * A padded batch, as HF `tokenizer(texts, padding="longest", truncation=…, max_length=…)`.
   * The reference's eval uses `{ padding: "left", truncation: true, maxLength: 2000 }`.
   */
  encodeBatch(texts: readonly string[], options?: EncodeBatchOptions): EncodedBatch {
    const t = parse(z.array(z.string()), texts, "texts");
    const o = parse(EncodeBatchOptionsSchema, options, "encodeBatch options");
    const out = call(() => this.#native.encodeBatch(t, o));
    return { ids: out.ids, attentionMask: out.attentionMask, shape: [out.shape[0] ?? 0, out.shape[1] ?? 0] };
  }

  /**
   * The text of `ids`, as HF `tokenizer.decode(ids, skip_special_tokens=…)` (with
   * transformers' `clean_up_tokenization` when the tokenizer's config asks for it). Ids
   * outside the vocabulary are dropped.
   */
  decode(ids: TokenIds, options?: DecodeOptions): string {
    const i = toIds(parse(idsSchema, ids, "token ids"));
    const o = parse(DecodeOptionsSchema, options, "decode options");
    return call(() => this.#native.decode(i, o.skipSpecialTokens));
  }

  /**
   * {@link decode} for each row: an array of id rows, or a `{ data, shape: [batch, tokens] }`
   * tensor (padding is decoded too unless `skipSpecialTokens` drops it).
   */
  decodeBatch(
    rows: readonly TokenIds[] | { data: Int32Array; shape: readonly number[] },
    options?: DecodeOptions,
  ): string[] {
    const o = parse(DecodeOptionsSchema, options, "decode options");
    let list: Int32Array[];
    if (!Array.isArray(rows) && "shape" in rows) {
      const [batch = 0, tokens = 0] = rows.shape;
      if (rows.shape.length !== 2 || batch * tokens !== rows.data.length) {
        throw new FlamingoError(
          ErrorCode.InvalidInput,
          `invalid token rows: expected a shape [batch, tokens] holding ${rows.data.length} ids, got [${rows.shape.join(", ")}]`,
        );
      }
      list = Array.from({ length: batch }, (_, b) => rows.data.subarray(b * tokens, (b + 1) * tokens));
    } else {
      list = parse(z.array(idsSchema), rows, "token rows").map(toIds);
    }
    return call(() => this.#native.decodeBatch(list, o.skipSpecialTokens));
  }

  /** A decoder for generated ids, one at a time (see {@link TextStream}). */
  decodeStream(options?: DecodeOptions): TextStream {
    const o = parse(DecodeOptionsSchema, options, "decode options");
    return new TextStream(this.#native.decodeStream(o.skipSpecialTokens));
  }
}
