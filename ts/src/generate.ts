/**
 * Generation and scoring. The engine keeps a KV-cached generation session on the model's
 * engine thread; this module drives it one native call per token (streams) or per few
 * tokens (`generate`), so the JS thread stays free, tokens can be shown as they come, and
 * an `AbortSignal` stops the work within one token.
 *
 * Decoding follows the reference (`Flamingo.generate`, spec §4.4): the images are encoded
 * once, the prompt attends to its images by the running `<image>` count, and every generated
 * token attends to the last image of its row's prompt. Batches are left-padded with an
 * attention mask, and each row stops on its own.
 */

import { z } from "zod";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "./errors.js";
import type { NativeTensor } from "./native.js";
import { type FloatTensorInput, intTensorSchema, toFloat32, toInt32, VisionXSchema } from "./tensor.js";

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * The operation was cancelled through its `AbortSignal`. Like Node's own `AbortError`: `name`
 * is `"AbortError"` and `code` is `"ABORT_ERR"`; `cause` is the signal's `reason`.
 */
export class AbortError extends FlamingoError {
  constructor(message = "the operation was aborted", options?: { cause?: unknown }) {
    super(ErrorCode.Aborted, message, options);
    this.name = "AbortError";
  }
}

function abortError(signal: AbortSignal | undefined): AbortError {
  return new AbortError("the operation was aborted", { cause: signal?.reason });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Awaits a native call, re-raising its failure as a `FlamingoError` (an `AbortError` for `ABORT_ERR`). */
async function native<T>(call: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  try {
    return await call;
  } catch (error) {
    const e = fromNative(error);
    if (e.code === ErrorCode.Aborted) throw abortError(signal);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Options

const count = (name: string, min: number) =>
  z
    .number({ error: `${name} must be a number` })
    .int({ error: `${name} must be an integer` })
    .min(min, { error: `${name} must be at least ${min}` });
const tokenId = z.number().int().nonnegative().max(0x7fff_ffff);

/**
 * A tokenizer as generation uses it (the package's `Tokenizer` is one): text in for prompts
 * and continuations, text out for results.
 */
export interface TextCodec {
  /** Token ids of `text`, `<image>` and `<|endofchunk|>` included; BOS/EOS only with `addSpecialTokens`. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): ArrayLike<number>;
  /** The text of `ids`. */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
}

/** Generated text as the reference's evaluation decodes it: special tokens left out. */
const decodeText = (codec: TextCodec, ids: readonly number[]): string => codec.decode(ids, { skipSpecialTokens: true });

/** One generated token, as {@link Flamingo.stream} yields it and `onToken` receives it. */
export interface TokenEvent {
  /** Which returned sequence (prompt-major: prompt `i`'s `k`-th sequence is `i × numReturnSequences + k`). */
  row: number;
  /** The token id. */
  token: number;
  /** Position of the token among the row's generated tokens (0 for the first). */
  index: number;
  /**
   * The text this token adds to the row's decoded output, when a tokenizer is attached
   * (empty while a multi-byte character is still incomplete; it comes with a later token).
   */
  text?: string;
}

const generationOptionsShape = {
  /** Most tokens to generate per sequence (the stop token included). Default: 20. */
  maxNewTokens: count("maxNewTokens", 1).optional(),
  /** The stop tokens are banned until this many tokens were generated. Default: 0. */
  minNewTokens: count("minNewTokens", 0).optional(),
  /** 1: greedy decoding or sampling; more: beam search with this many beams. Default: 1. */
  numBeams: count("numBeams", 1).optional(),
  /**
   * Beam search ranks finished beams by `logprob / length ^ lengthPenalty` (the reference's
   * evaluation passes 0). Default: 1 (HF's default).
   */
  lengthPenalty: z.number().finite({ error: "lengthPenalty must be finite" }).optional(),
  /** Beam search stops once `numBeams` beams have finished (HF `early_stopping=True`). Default: `false`. */
  earlyStopping: z.boolean().optional(),
  /** Sequences returned per prompt: at most `numBeams` for beam search; with `doSample`, independent samples. Default: 1. */
  numReturnSequences: count("numReturnSequences", 1).optional(),
  /** Sample from the (temperature-, top-k- and top-p-filtered) distribution instead of taking the most likely token. Default: `false`. */
  doSample: z.boolean().optional(),
  /** Divides the logits before sampling; lower is greedier. Must be positive. Default: 1. */
  temperature: z
    .number()
    .positive({ error: "temperature must be a positive number" })
    .finite({ error: "temperature must be finite" })
    .optional(),
  /** Sample only among the `topK` most likely tokens; 0 disables. Default: 0. */
  topK: count("topK", 0).optional(),
  /** Nucleus sampling: the smallest set of tokens whose probability reaches `topP`, in (0, 1]. Default: 1 (off). */
  topP: z.number().gt(0, { error: "topP must be in (0, 1]" }).max(1, { error: "topP must be in (0, 1]" }).optional(),
  /** Seed of the sampler: the same seed, prompt and options give the same tokens. Default: 0. */
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  /** Divides positive (multiplies negative) logits of tokens already in the sequence; 1 disables. Default: 1. */
  repetitionPenalty: z.number().positive({ error: "repetitionPenalty must be a positive number" }).finite().optional(),
  /** Never repeat an n-gram of this size; 0 disables. Default: 0. */
  noRepeatNgramSize: count("noRepeatNgramSize", 0).optional(),
  /** Token ids that end a sequence. Default: `[<|endofchunk|>]`, as the reference. */
  eosTokenIds: z.array(tokenId).optional(),
  /** Written after a sequence ended, to right-pad the results. Default: the first stop token. */
  padTokenId: tokenId.optional(),
  /**
   * Let the model generate `<image>`. The reference does (rows that do then lose their image
   * attention, spec §4.4); here it is banned unless allowed. Default: `false`.
   */
  allowMediaToken: z.boolean().optional(),
  /**
   * Strings that end a sequence once its decoded text contains one (needs a tokenizer). The
   * sequence keeps the token that completed the string and is reported as `stopped`.
   * Default: none.
   */
  stopStrings: z.array(z.string().min(1, { error: "a stop string must not be empty" })).optional(),
  /** Cancels the generation: the call rejects with an {@link AbortError} within one token. */
  signal: z.custom<AbortSignal>((v) => v instanceof AbortSignal, { error: "expected an AbortSignal" }).optional(),
  /** Called with every generated token as it is made (greedy and sampling; beam search: at the end). */
  onToken: z
    .custom<(event: TokenEvent) => void>((v) => typeof v === "function", { error: "expected a function" })
    .optional(),
};

/** Options of {@link Flamingo.generate} and {@link Flamingo.stream}; each mirrors HF `generate`'s. */
export const GenerationOptionsSchema: z.ZodObject<typeof generationOptionsShape, z.core.$strict> = z
  .strictObject(generationOptionsShape)
  .superRefine((o, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: "custom", path: [path], message });
    const max = o.maxNewTokens ?? 20;
    if ((o.minNewTokens ?? 0) > max)
      issue("minNewTokens", `minNewTokens (${o.minNewTokens}) cannot exceed maxNewTokens (${max})`);
    const beams = o.numBeams ?? 1;
    const n = o.numReturnSequences ?? 1;
    if (beams > 1 && o.doSample)
      issue("doSample", "beam sampling is not supported: use numBeams > 1 or doSample, not both");
    if (beams > 1 && n > beams)
      issue("numReturnSequences", `numReturnSequences (${n}) cannot exceed numBeams (${beams})`);
    if (beams === 1 && !o.doSample && n > 1) {
      issue("numReturnSequences", "greedy decoding returns one sequence; use numBeams or doSample for more");
    }
  });
export type GenerationOptions = z.input<typeof GenerationOptionsSchema>;

const promptRowsSchema = z
  .array(z.array(tokenId).min(1, { error: "a prompt must not be empty" }))
  .min(1, { error: "at least one prompt is required" });

const generateInputShape = {
  /** Images, `[batch, images, 1, 3, height, width]`, CLIP-normalised; one sample per prompt. Required. */
  visionX: VisionXSchema,
  /**
   * Prompt ids: a `[batch, tokens]` tensor (already left-padded, with `attentionMask`), or one
   * id array per prompt (any lengths: they are left-padded here). Give this or `text`.
   */
  langX: z.union([intTensorSchema(2, "[batch, tokens]"), promptRowsSchema]).optional(),
  /** `[batch, tokens]`: 1 for prompt tokens, 0 for left padding; only with a tensor `langX`. Default: all ones. */
  attentionMask: intTensorSchema(2, "[batch, tokens]").optional(),
  /** Prompt text, one string per sample (needs a tokenizer). Give this or `langX`. */
  text: z.union([z.string(), z.array(z.string()).min(1)]).optional(),
};

/** Inputs of {@link Flamingo.generate} and {@link Flamingo.stream}. */
export const GenerateInputSchema: z.ZodObject<typeof generateInputShape, z.core.$strict> = z
  .strictObject(generateInputShape)
  .superRefine((v, ctx) => {
    if ((v.langX === undefined) === (v.text === undefined)) {
      ctx.addIssue({ code: "custom", path: ["langX"], message: "give either langX (token ids) or text" });
    }
    if (v.attentionMask && !(v.langX && "shape" in v.langX)) {
      ctx.addIssue({
        code: "custom",
        path: ["attentionMask"],
        message: "attentionMask goes with a [batch, tokens] langX tensor",
      });
    }
    if (v.attentionMask && v.langX && "shape" in v.langX) {
      const [a, b] = v.langX.shape;
      const [c, d] = v.attentionMask.shape;
      if (a !== c || b !== d) {
        ctx.addIssue({
          code: "custom",
          path: ["attentionMask", "shape"],
          message: `must match langX's shape [${a}, ${b}], got [${c}, ${d}]`,
        });
      }
    }
  });
export type GenerateInput = z.input<typeof GenerateInputSchema>;

/** Time spent, for profiling. */
export interface GenerationTiming {
  /** Engine time of the start: vision encoding and the prompt (prefill), ms. */
  prefillMs: number;
  /** Engine time of the decoding calls, ms. */
  decodeNativeMs: number;
  /** The same calls as JavaScript observed them (engine time plus the boundary crossing), ms. */
  decodeWallMs: number;
  /** Native decoding calls made. */
  calls: number;
  /** Decoding steps: tokens generated per sequence, at most. */
  steps: number;
}

/** What {@link Flamingo.generate} returns; arrays are per returned sequence, prompt-major. */
export interface GenerationResult {
  /** Prompt (as given, left padding included) + generated tokens, right-padded to one length (HF convention). */
  sequences: number[][];
  /** Generated tokens only, without padding; the stop token is included when one was reached. */
  newTokens: number[][];
  /**
   * Greedy and sampling: the sum of the generated tokens' log-probabilities (before any
   * logits processing); beam search: the beam's length-normalised score. A sequence cut by a
   * stop string keeps the score of every token the engine generated for it.
   */
  scores: number[];
  /** Whether each sequence ended on a stop token or stop string (rather than `maxNewTokens`). */
  stopped: boolean[];
  /** Decoded `newTokens`, when a tokenizer is attached. */
  text?: string[];
  timing: GenerationTiming;
}

/**
 * What {@link Flamingo.stream} returns: iterate it for the tokens as they are made; `result`
 * resolves with the whole result once the iteration has ended (it rejects with what the
 * iteration threw, or with an {@link AbortError} when the loop was left early).
 */
export interface GenerationStream extends AsyncIterable<TokenEvent> {
  readonly result: Promise<GenerationResult>;
}

// ---------------------------------------------------------------------------------------------
// The native surface (bindings/node/src/generate.rs)

interface NativeGenerationOptions {
  maxNewTokens?: number;
  minNewTokens?: number;
  numBeams?: number;
  lengthPenalty?: number;
  earlyStopping?: boolean;
  numReturnSequences?: number;
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  repetitionPenalty?: number;
  noRepeatNgramSize?: number;
  eosTokenIds?: number[];
  padTokenId?: number;
  allowMediaToken?: boolean;
}

/** The generation methods of the native model handle. */
export interface NativeGeneration {
  createOperation(): number;
  abortOperation(id: number): void;
  releaseOperation(id: number): void;
  generateStart(
    id: number,
    input: {
      visionX: NativeTensor<Float32Array>;
      langX: NativeTensor<Int32Array>;
      attentionMask?: NativeTensor<Int32Array>;
      options?: NativeGenerationOptions;
    },
  ): Promise<{ rows: number; nativeMs: number }>;
  generateStep(id: number, maxSteps: number): Promise<{ tokens: number[][]; done: boolean; nativeMs: number }>;
  generateFinish(
    id: number,
  ): Promise<{ sequences: number[][]; newTokens: number[][]; scores: number[]; stopped: boolean[] }>;
  score(
    id: number,
    input: {
      visionX: NativeTensor<Float32Array>;
      context: number[];
      contextMask?: number[];
      continuations: number[][];
    },
  ): Promise<{ sum: number[]; mean: number[]; tokenLogprobs: number[][] }>;
}

/** What the generation functions need from a model. */
export interface GenerationHost {
  native: NativeGeneration;
  /** The model's `<|endofchunk|>` id: the default stop and pad token. */
  endOfChunk: number;
  /** The attached tokenizer, if any. */
  codec: TextCodec | undefined;
}

// ---------------------------------------------------------------------------------------------
// Preparing the inputs

type ParsedOptions = z.output<typeof GenerationOptionsSchema>;

interface Prepared {
  options: ParsedOptions;
  visionX: NativeTensor<Float32Array>;
  langX: NativeTensor<Int32Array>;
  attentionMask: NativeTensor<Int32Array> | undefined;
  promptLength: number;
  pad: number;
  stopStrings: string[];
}

/** Left-pads ragged prompts into a `[batch, tokens]` tensor and its mask. */
function leftPad(
  rows: ArrayLike<number>[],
  pad: number,
): { ids: NativeTensor<Int32Array>; mask: NativeTensor<Int32Array> } {
  const width = Math.max(...rows.map((r) => r.length));
  const ids = new Int32Array(rows.length * width).fill(pad);
  const mask = new Int32Array(rows.length * width);
  rows.forEach((r, i) => {
    const offset = i * width + width - r.length;
    for (let j = 0; j < r.length; j++) {
      ids[offset + j] = r[j] as number;
      mask[offset + j] = 1;
    }
  });
  const shape = [rows.length, width];
  return { ids: { data: ids, shape }, mask: { data: mask, shape: [...shape] } };
}

function needCodec(host: GenerationHost, what: string): TextCodec {
  if (!host.codec) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `${what} needs a tokenizer: attach one to the model, or pass token ids instead`,
    );
  }
  return host.codec;
}

function prepare(host: GenerationHost, input: GenerateInput, options: GenerationOptions): Prepared {
  const o = GenerationOptionsSchema.safeParse(options);
  if (!o.success) throw invalidInput("generation options", o.error);
  throwIfAborted(o.data.signal);
  const i = GenerateInputSchema.safeParse(input);
  if (!i.success) throw invalidInput("generation input", i.error);
  const opts = o.data;
  const stopStrings = opts.stopStrings ?? [];
  if (stopStrings.length > 0) needCodec(host, "stopStrings");
  const pad = opts.padTokenId ?? opts.eosTokenIds?.[0] ?? host.endOfChunk;

  let langX: NativeTensor<Int32Array>;
  let attentionMask: NativeTensor<Int32Array> | undefined;
  const { langX: ids, text } = i.data;
  if (ids !== undefined && "shape" in ids) {
    langX = toInt32(ids);
    attentionMask = i.data.attentionMask && toInt32(i.data.attentionMask);
    if (attentionMask?.data.some((m) => m !== 0 && m !== 1)) {
      throw new FlamingoError(ErrorCode.InvalidInput, "invalid generation input: attentionMask must hold only 0 and 1");
    }
  } else {
    let rows: ArrayLike<number>[];
    if (ids !== undefined) rows = ids;
    else {
      const codec = needCodec(host, "text input");
      const texts = typeof text === "string" ? [text] : (text ?? []);
      // As the reference's `tokenizer(prompts)`: with the tokenizer's BOS/EOS.
      rows = texts.map((t) => codec.encode(t));
      const empty = rows.findIndex((r) => r.length === 0);
      if (empty >= 0) throw new FlamingoError(ErrorCode.InvalidInput, `prompt ${empty} encodes to no tokens`);
    }
    const padded = leftPad(rows, pad);
    langX = padded.ids;
    // An unpadded batch needs no mask.
    attentionMask = padded.mask.data.every((m) => m === 1) ? undefined : padded.mask;
  }
  const visionX = toFloat32(i.data.visionX as FloatTensorInput);
  if (visionX.shape[0] !== langX.shape[0]) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `invalid generation input: visionX has ${visionX.shape[0]} samples but there are ${langX.shape[0]} prompts`,
    );
  }
  return { options: opts, visionX, langX, attentionMask, promptLength: langX.shape[1] as number, pad, stopStrings };
}

function nativeOptions(o: ParsedOptions, pad: number): NativeGenerationOptions {
  const { stopStrings: _s, signal: _g, onToken: _t, ...engine } = o;
  return { ...engine, padTokenId: pad };
}

// ---------------------------------------------------------------------------------------------
// Stop strings and incremental text

/** Tracks one row's decoded text: the delta each token adds, and where a stop string completes. */
class RowText {
  #emitted = "";

  constructor(
    readonly codec: TextCodec,
    readonly stopStrings: readonly string[],
  ) {}

  /** The text `tokens` (the row so far) adds beyond what was already emitted. */
  delta(tokens: readonly number[]): string {
    const full = decodeText(this.codec, tokens);
    // An incomplete multi-byte character decodes to U+FFFD: wait for the bytes that finish it.
    if (full.endsWith("\uFFFD")) return "";
    const add = full.startsWith(this.#emitted) ? full.slice(this.#emitted.length) : full;
    this.#emitted = full;
    return add;
  }

  /** Whether the decoded `tokens` contain a stop string. */
  stops(tokens: readonly number[]): boolean {
    if (this.stopStrings.length === 0) return false;
    const text = decodeText(this.codec, tokens);
    return this.stopStrings.some((s) => text.includes(s));
  }
}

/** The shortest prefix of `tokens` whose text contains a stop string, or `undefined`. */
function stopStringCut(
  codec: TextCodec,
  stopStrings: readonly string[],
  tokens: readonly number[],
): number | undefined {
  if (stopStrings.length === 0) return undefined;
  const text = decodeText(codec, tokens);
  if (!stopStrings.some((s) => text.includes(s))) return undefined;
  for (let n = 1; n <= tokens.length; n++) {
    const t = decodeText(codec, tokens.slice(0, n));
    if (stopStrings.some((s) => t.includes(s))) return n;
  }
  return tokens.length;
}

// ---------------------------------------------------------------------------------------------
// The decoding loop

/** Tokens per native call: one for streams (lowest latency), a few for `generate` (fewer crossings). */
const STREAM_STEPS_PER_CALL = 1;
const GENERATE_STEPS_PER_CALL = 4;

/**
 * Runs one generation, yielding each native call's tokens as events, and returns the result.
 * The operation is released however the loop ends (done, error, abort, or the consumer
 * leaving early).
 */
async function* decode(
  host: GenerationHost,
  p: Prepared,
  stepsPerCall: number,
): AsyncGenerator<TokenEvent[], GenerationResult> {
  const { signal } = p.options;
  const codec = host.codec;
  const beams = (p.options.numBeams ?? 1) > 1;
  throwIfAborted(signal);
  const id = host.native.createOperation();
  const onAbort = () => host.native.abortOperation(id);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const started = await native(
      host.native.generateStart(id, {
        visionX: p.visionX,
        langX: p.langX,
        attentionMask: p.attentionMask,
        options: nativeOptions(p.options, p.pad),
      }),
      signal,
    );
    throwIfAborted(signal);
    const timing: GenerationTiming = {
      prefillMs: started.nativeMs,
      decodeNativeMs: 0,
      decodeWallMs: 0,
      calls: 0,
      steps: 0,
    };
    const rows = started.rows;
    const tokens: number[][] = Array.from({ length: rows }, () => []);
    const texts = codec ? Array.from({ length: rows }, () => new RowText(codec, p.stopStrings)) : undefined;
    // A row is over when the engine stopped it (it got fewer tokens than the others in a
    // call) or a stop string completed in its text (the engine goes on; its tokens are dropped).
    const over: boolean[] = new Array(rows).fill(false);
    const cut: (number | undefined)[] = new Array(rows).fill(undefined);
    for (let done = false; !done; ) {
      const t0 = performance.now();
      const step = await native(host.native.generateStep(id, stepsPerCall), signal);
      timing.decodeWallMs += performance.now() - t0;
      timing.decodeNativeMs += step.nativeMs;
      timing.calls++;
      // The abort may have come after the engine's last check: honour it anyway.
      throwIfAborted(signal);
      done = step.done;
      const taken = Math.max(0, ...step.tokens.map((t) => t.length));
      timing.steps += taken;
      const events: TokenEvent[] = [];
      step.tokens.forEach((got, row) => {
        if (got.length < taken) over[row] = true;
        for (const token of got) {
          if (cut[row] !== undefined) break;
          const mine = tokens[row] as number[];
          mine.push(token);
          const event: TokenEvent = { row, token, index: mine.length - 1 };
          if (texts) {
            const rowText = texts[row] as RowText;
            event.text = rowText.delta(mine);
            if (rowText.stops(mine)) {
              cut[row] = mine.length;
              over[row] = true;
            }
          }
          events.push(event);
        }
      });
      if (events.length > 0) yield events;
      // Every row ended on a stop token or a stop string: no need to decode further.
      if (!done && !beams && over.every(Boolean)) break;
    }
    const r = await native(host.native.generateFinish(id), signal);
    const result = finishResult(host, p, r, cut, timing);
    if (beams) {
      timing.steps = Math.max(0, ...r.newTokens.map((t) => t.length));
      // Beam tokens are only final now.
      const events: TokenEvent[] = [];
      result.newTokens.forEach((row, r) => {
        const t = codec ? new RowText(codec, []) : undefined;
        row.forEach((token, index) => {
          const event: TokenEvent = { row: r, token, index };
          if (t) event.text = t.delta(row.slice(0, index + 1));
          events.push(event);
        });
      });
      if (events.length > 0) yield events;
    }
    return result;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    host.native.releaseOperation(id);
  }
}

/** The engine's result with stop-string cuts applied and the text decoded. */
function finishResult(
  host: GenerationHost,
  p: Prepared,
  r: { sequences: number[][]; newTokens: number[][]; scores: number[]; stopped: boolean[] },
  cutInFlight: (number | undefined)[],
  timing: GenerationTiming,
): GenerationResult {
  const newTokens = r.newTokens.map((t) => [...t]);
  const stopped = [...r.stopped];
  if (host.codec && p.stopStrings.length > 0) {
    newTokens.forEach((t, i) => {
      const cut = cutInFlight[i] ?? stopStringCut(host.codec as TextCodec, p.stopStrings, t);
      if (cut !== undefined && cut <= t.length) {
        newTokens[i] = t.slice(0, cut);
        stopped[i] = true;
      }
    });
  }
  const longest = Math.max(0, ...newTokens.map((t) => t.length));
  const sequences = r.sequences.map((s, i) => {
    const row = s.slice(0, p.promptLength).concat(newTokens[i] as number[]);
    while (row.length < p.promptLength + longest) row.push(p.pad);
    return row;
  });
  const result: GenerationResult = { sequences, newTokens, scores: [...r.scores], stopped, timing };
  if (host.codec) {
    const codec = host.codec;
    result.text = newTokens.map((t) => decodeText(codec, t));
  }
  return result;
}

/**
 * Runs `decode` to its end, handing each call's events to `each`; however this ends (done,
 * an error, an abort, `each` throwing), the generation is closed and its operation released.
 */
async function drain(
  run: AsyncGenerator<TokenEvent[], GenerationResult>,
  each: (events: TokenEvent[]) => void | Promise<void>,
): Promise<GenerationResult> {
  let finished = false;
  try {
    for (;;) {
      const next = await run.next();
      if (next.done) {
        finished = true;
        return next.value;
      }
      await each(next.value);
    }
  } finally {
    // Runs `decode`'s `finally` (which releases the operation) when it was left mid-way.
    if (!finished) await run.return(undefined as never).catch(() => {});
  }
}

/** `Flamingo.generate`: decodes to the end and returns every sequence. */
export async function generate(
  host: GenerationHost,
  input: GenerateInput,
  options: GenerationOptions = {},
): Promise<GenerationResult> {
  const p = prepare(host, input, options);
  const onToken = p.options.onToken;
  const run = decode(host, p, onToken ? STREAM_STEPS_PER_CALL : GENERATE_STEPS_PER_CALL);
  return drain(run, (events) => {
    if (onToken) for (const e of events) onToken(e);
  });
}

/** `Flamingo.stream`: the tokens as they are made, and the result at the end. */
export function stream(host: GenerationHost, input: GenerateInput, options: GenerationOptions = {}): GenerationStream {
  let settle!: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void };
  const result = new Promise<GenerationResult>((resolve, reject) => {
    settle = { resolve, reject };
  });
  // The caller may never look at `result`: do not let its rejection go unhandled.
  result.catch(() => {});
  let iterated = false;
  async function* events(): AsyncGenerator<TokenEvent, void, undefined> {
    let settled = false;
    let run: AsyncGenerator<TokenEvent[], GenerationResult> | undefined;
    try {
      const p = prepare(host, input, options);
      run = decode(host, p, STREAM_STEPS_PER_CALL);
      for (;;) {
        const next = await run.next();
        if (next.done) {
          settled = true;
          settle.resolve(next.value);
          return;
        }
        for (const e of next.value) {
          // The consumer may abort while handling the previous event: no more events then.
          throwIfAborted(p.options.signal);
          p.options.onToken?.(e);
          yield e;
        }
      }
    } catch (error) {
      settled = true;
      settle.reject(error);
      throw error;
    } finally {
      if (!settled) {
        // The consumer left the loop early: cancel the generation.
        settle.reject(new AbortError("the stream was closed before the generation ended"));
      }
      await run?.return(undefined as never).catch(() => {});
    }
  }
  return {
    result,
    [Symbol.asyncIterator]() {
      if (iterated) throw new FlamingoError(ErrorCode.InvalidInput, "a generation stream can be iterated only once");
      iterated = true;
      return events();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Scoring

const tokenRow = z.union([
  z.string(),
  z.array(tokenId).min(1, { error: "must not be empty" }),
  z.custom<Int32Array>((v) => v instanceof Int32Array && v.length > 0, { error: "expected a non-empty Int32Array" }),
]);

const scoreInputShape = {
  /** The context's images, `[1, images, 1, 3, height, width]`, CLIP-normalised. Required. */
  visionX: VisionXSchema,
  /** The shared context: ids (with its `<image>` tokens) or text (needs a tokenizer). Required. */
  context: tokenRow,
  /** 0/1 per context token: 0 marks padding, which stays masked. Default: all ones. */
  contextMask: z.array(z.number().int().min(0).max(1, { error: "mask values must be 0 or 1" })).optional(),
  /** What to score after the context: ids or text (no `<image>`), any lengths. Required. */
  continuations: z.array(tokenRow).min(1, { error: "at least one continuation is required" }),
};

/** Inputs of {@link Flamingo.score}. */
export const ScoreInputSchema: z.ZodObject<typeof scoreInputShape, z.core.$strict> = z
  .strictObject(scoreInputShape)
  .superRefine((v, ctx) => {
    if (v.visionX.shape[0] !== 1) {
      ctx.addIssue({
        code: "custom",
        path: ["visionX", "shape"],
        message: `holds the images of one context: batch must be 1, got ${v.visionX.shape[0]}`,
      });
    }
    if (v.contextMask && typeof v.context !== "string" && v.contextMask.length !== v.context.length) {
      ctx.addIssue({
        code: "custom",
        path: ["contextMask"],
        message: `has ${v.contextMask.length} entries but the context has ${v.context.length} tokens`,
      });
    }
  });
export type ScoreInput = z.input<typeof ScoreInputSchema>;

/** Options of {@link Flamingo.score}. */
export interface ScoreOptions {
  /** Cancels the call: it rejects with an {@link AbortError}. */
  signal?: AbortSignal;
}

/** The log-likelihood of one continuation after the context. */
export interface ContinuationScore {
  /** Sum of the continuation's token log-probabilities: its log-likelihood. */
  sum: number;
  /** Mean token log-probability (the reference's length-normalised rank-classification score). */
  mean: number;
  /** Each token's log-probability given the context and the tokens before it. */
  tokenLogprobs: number[];
}

/** `Flamingo.score`: one log-likelihood per continuation, in order. */
export async function score(
  host: GenerationHost,
  input: ScoreInput,
  options: ScoreOptions = {},
): Promise<ContinuationScore[]> {
  const { signal } = options;
  throwIfAborted(signal);
  const parsed = ScoreInputSchema.safeParse(input);
  if (!parsed.success) throw invalidInput("score input", parsed.error);
  const v = parsed.data;
  // Text is encoded as the reference's rank classification does: the context with the
  // tokenizer's BOS/EOS, continuations without (`add_special_tokens=False`).
  const ids = (row: string | ArrayLike<number>, addSpecialTokens: boolean): number[] => {
    if (typeof row !== "string") return Array.from(row);
    const encoded = Array.from(needCodec(host, "text input").encode(row, { addSpecialTokens }));
    if (encoded.length === 0) throw new FlamingoError(ErrorCode.InvalidInput, `"${row}" encodes to no tokens`);
    return encoded;
  };
  const context = ids(v.context, true);
  if (v.contextMask && v.contextMask.length !== context.length) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `invalid score input: contextMask has ${v.contextMask.length} entries but the context has ${context.length} tokens`,
    );
  }
  const continuations = v.continuations.map((c) => ids(c, false));
  throwIfAborted(signal);
  const id = host.native.createOperation();
  const onAbort = () => host.native.abortOperation(id);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const out = await native(
      host.native.score(id, {
        visionX: toFloat32(v.visionX as FloatTensorInput),
        context,
        contextMask: v.contextMask,
        continuations,
      }),
      signal,
    );
    throwIfAborted(signal);
    return out.sum.map((sum, i) => ({
      sum,
      mean: out.mean[i] as number,
      tokenLogprobs: out.tokenLogprobs[i] as number[],
    }));
  } finally {
    signal?.removeEventListener("abort", onAbort);
    host.native.releaseOperation(id);
  }
}
