/**
 * Prompts in the reference's formats (spec §6) and model inputs made from them.
 *
 * The exact strings come from the engine (`flamingo_core::text::prompts`, tested there
 * against the reference), so they have one implementation: no space after `<image>`,
 * each demonstration closed by `<|endofchunk|>` and followed by `"\n"`, the query left open.
 * A {@link Prompt} is that text plus its images in `<image>` order; {@link encodePrompts}
 * turns a batch of them into `{ langX, attentionMask, visionX }`, left-padded for
 * generation as the reference's eval pads.
 */

import { z } from "zod";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "./errors.js";
import {
  type GenerateInput,
  type GenerationOptions,
  GenerationOptionsSchema,
  type GenerationResult,
} from "./generate.js";
import {
  type ImageInput,
  ImageInputSchema,
  type ImageOptions,
  ImageOptionsSchema,
  PreprocessedImageSchema,
  preprocessImages,
  RawImageSchema,
} from "./images.js";
import { loadNative, type NativeBinding } from "./native.js";
import type { FloatTensor } from "./tensor.js";
import { EncodeBatchOptionsSchema, Tokenizer } from "./tokenizer.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

/** `bindings/node/src/text.rs`'s prompt functions. */
interface NativePrompts {
  captionPromptText(demoCaptions: string[], textOnlyDemos: boolean): string;
  vqaPromptText(demos: { question: string; answer: string }[], question: string, textOnlyDemos: boolean): string;
  postprocessCaption(text: string): string;
  postprocessVqa(text: string): string;
  interleavedPromptText(segments: { text?: string; image?: number }[]): { text: string; imageOrder: number[] };
}

function native(): NativePrompts {
  return loadNative() as NativeBinding & NativePrompts;
}

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw invalidInput(what, parsed.error);
  return parsed.data;
}

const promptShape = {
  /** The text, with one `<image>` token per image. */
  text: z.string(),
  /** The images, in the order of the `<image>` tokens in `text`. */
  images: z.array(ImageInputSchema),
};
/** Text in the reference's format and the images its `<image>` tokens stand for. */
export const PromptSchema: Strict<typeof promptShape> = z.strictObject(promptShape);
export type Prompt = z.infer<typeof PromptSchema>;

const textOnlyDemos = z.boolean().optional();

const captionDemoShape = {
  /** The demonstration's image. Required unless `textOnlyDemos`. */
  image: ImageInputSchema.optional(),
  /** Its caption (stripped of surrounding whitespace, as the reference does). */
  caption: z.string(),
};
const captionPromptShape = {
  /** Few-shot demonstrations, shown before the query in this order. Default: none. */
  demos: z.array(z.strictObject(captionDemoShape)).optional(),
  /** The image to caption. Required. */
  query: ImageInputSchema,
  /**
   * Show the demonstrations as text only: their `<image>` tags removed and their images not
   * passed. This is the reference's zero-shot protocol, which still shows 2 demonstrations
   * (`compute_effective_num_shots`). Default: `false`.
   */
  textOnlyDemos,
};
/** Options of {@link captionPrompt}. */
export const CaptionPromptOptionsSchema: Strict<typeof captionPromptShape> = z.strictObject(captionPromptShape);
export type CaptionPromptOptions = z.infer<typeof CaptionPromptOptionsSchema>;

const vqaDemoShape = {
  /** The demonstration's image. Required unless `textOnlyDemos`. */
  image: ImageInputSchema.optional(),
  question: z.string(),
  /** The answer shown (the reference shows the first annotated answer). */
  answer: z.string(),
};
const vqaQueryShape = {
  /** The image asked about. */
  image: ImageInputSchema,
  question: z.string(),
};
const vqaPromptShape = {
  /** Few-shot demonstrations, shown before the query in this order. Default: none. */
  demos: z.array(z.strictObject(vqaDemoShape)).optional(),
  /** The image and the question to answer. Required. */
  query: z.strictObject(vqaQueryShape),
  /** As in {@link CaptionPromptOptions.textOnlyDemos}. Default: `false`. */
  textOnlyDemos,
};
/** Options of {@link vqaPrompt}. */
export const VqaPromptOptionsSchema: Strict<typeof vqaPromptShape> = z.strictObject(vqaPromptShape);
export type VqaPromptOptions = z.infer<typeof VqaPromptOptionsSchema>;

/** The demos' images in order, or an error naming the first demo without one. */
function demoImages(demos: { image?: ImageInput | undefined }[], textOnly: boolean): ImageInput[] {
  if (textOnly) return [];
  return demos.map((d, i) => {
    if (d.image === undefined) {
      throw new FlamingoError(
        ErrorCode.InvalidInput,
        `demo ${i} has no image; give every demo an image, or set textOnlyDemos to show the demos as text only`,
      );
    }
    return d.image;
  });
}

/**
 * The reference's captioning prompt (COCO, Flickr30k): each demo as
 * `"<image>Output:{caption}<|endofchunk|>\n"`, then `"<image>Output:"` for the query.
 * Generate up to 20 new tokens, stop at `<|endofchunk|>`, and clean the text with
 * {@link postprocessCaption}.
 */
export function captionPrompt(options: CaptionPromptOptions): Prompt {
  const o = parse(CaptionPromptOptionsSchema, options, "captionPrompt options");
  const demos = o.demos ?? [];
  const textOnly = o.textOnlyDemos ?? false;
  const images = [...demoImages(demos, textOnly), o.query];
  const text = native().captionPromptText(
    demos.map((d) => d.caption),
    textOnly,
  );
  return { text, images };
}

/**
 * The reference's VQA prompt (VQAv2, OK-VQA, VizWiz, TextVQA): each demo as
 * `"<image>Question:{q} Short answer:{a}<|endofchunk|>\n"`, then
 * `"<image>Question:{q} Short answer:"`. Generate up to 5 new tokens (10 for TextVQA) and
 * clean the text with {@link postprocessVqa}.
 */
export function vqaPrompt(options: VqaPromptOptions): Prompt {
  const o = parse(VqaPromptOptionsSchema, options, "vqaPrompt options");
  const demos = o.demos ?? [];
  const textOnly = o.textOnlyDemos ?? false;
  const images = [...demoImages(demos, textOnly), o.query.image];
  const text = native().vqaPromptText(
    demos.map((d) => ({ question: d.question, answer: d.answer })),
    o.query.question,
    textOnly,
  );
  return { text, images };
}

/** The reference's caption clean-up: the text before the first `"Output"`, without `"` characters. */
export function postprocessCaption(text: string): string {
  return native().postprocessCaption(parse(z.string(), text, "text"));
}

/**
 * The reference's VQA clean-up: the text before the first `"Question"`, `"Answer"` or
 * `"Short"`, then before the first `", "`.
 */
export function postprocessVqa(text: string): string {
  return native().postprocessVqa(parse(z.string(), text, "text"));
}

/**
 * One piece of interleaved input: a string is text; anything else is an image: a `Buffer` /
 * `Uint8Array` of an encoded file, raw pixels, a preprocessed tensor, or `{ image }` wrapping
 * any {@link ImageInput} (the way to pass a file path, since a bare string is text).
 */
export const SegmentSchema = z.union([
  z.string(),
  z.strictObject({ image: ImageInputSchema }),
  z.custom<Uint8Array>((v) => v instanceof Uint8Array || v instanceof Uint8ClampedArray, {
    error: "expected text, an image, or { image }",
  }),
  RawImageSchema,
  PreprocessedImageSchema,
]);
export type Segment = z.infer<typeof SegmentSchema>;

/** `{ image }`, as opposed to an image given directly. */
function isWrapped(s: Exclude<Segment, string>): s is { image: ImageInput } {
  return !(s instanceof Uint8Array || s instanceof Uint8ClampedArray) && "image" in s;
}

/**
 * `[image, "text", image, "text", …]` as a {@link Prompt} in the reference's format: each
 * image becomes `<image>` directly followed by its text (no space is added), each image after
 * the first closes the previous chunk with `<|endofchunk|>` (unless the text already ends
 * with one), and the last chunk is left open for generation. Text containing `<image>` is
 * refused: every `<image>` token needs its image.
 *
 * `[cats, "An image of two cats.", sink, "An image of a bathroom sink.", query, "An image of"]`
 * gives the README's demo prompt.
 */
export function interleave(segments: readonly Segment[]): Prompt {
  const parsed = parse(z.array(SegmentSchema), segments, "interleaved input");
  const images: ImageInput[] = [];
  const pieces = parsed.map((s) => {
    if (typeof s === "string") return { text: s };
    images.push(isWrapped(s) ? s.image : s);
    return { image: images.length - 1 };
  });
  let out: { text: string; imageOrder: number[] };
  try {
    out = native().interleavedPromptText(pieces);
  } catch (error) {
    throw fromNative(error);
  }
  return { text: out.text, images: out.imageOrder.map((i) => images[i] as ImageInput) };
}

const encodePromptsShape = {
  /** Padding side of the token rows. Default: `"left"` (generation; the reference's eval). */
  padding: EncodeBatchOptionsSchema.shape.padding,
  /** Let the tokenizer add BOS/EOS (LLaMA/OPT prepend BOS), as the reference's eval does. Default: `true`. */
  addSpecialTokens: z.boolean().optional(),
  /** How the images are preprocessed. Default: the reference's transform (224 px, CLIP normalisation). */
  image: ImageOptionsSchema.optional(),
};
/** Options of {@link encodePrompts} and {@link encodeInterleaved}. */
export const EncodePromptsOptionsSchema: Strict<typeof encodePromptsShape> = z.strictObject(encodePromptsShape);
export type EncodePromptsOptions = z.infer<typeof EncodePromptsOptionsSchema>;

/** A batch ready for {@link Flamingo.forward} (and generation). */
export interface ModelInput {
  /** `[batch, tokens]` token ids, padded with the pad id. */
  langX: { data: Int32Array; shape: [number, number] };
  /** `[batch, tokens]`: 1 for tokens, 0 for padding. */
  attentionMask: { data: Int32Array; shape: [number, number] };
  /** `[batch, images, 1, 3, S, S]`, rows with fewer images padded with zero images. */
  visionX: FloatTensor;
}

/**
 * Tokenizes a batch of prompts (padded on the left by default) and loads their images into
 * one `visionX`, as the reference's evaluation prepares a batch. Each row must tokenize to
 * as many `<image>` tokens as it has images.
 */
export async function encodePrompts(
  tokenizer: Tokenizer,
  prompts: readonly Prompt[],
  options?: EncodePromptsOptions,
): Promise<ModelInput> {
  if (!(tokenizer instanceof Tokenizer)) {
    throw new FlamingoError(ErrorCode.InvalidInput, "encodePrompts needs a Tokenizer (Tokenizer.fromFile)");
  }
  const rows = parse(z.array(PromptSchema).min(1, "needs at least one prompt"), prompts, "prompts");
  const o = parse(EncodePromptsOptionsSchema, options ?? {}, "encodePrompts options");
  const batch = tokenizer.encodeBatch(
    rows.map((r) => r.text),
    { padding: o.padding ?? "left", addSpecialTokens: o.addSpecialTokens ?? true },
  );
  const [size, width] = batch.shape;
  const media = tokenizer.mediaTokenId;
  for (let b = 0; b < size; b++) {
    const row = batch.ids.subarray(b * width, (b + 1) * width);
    const found = row.reduce((n, id) => (id === media ? n + 1 : n), 0);
    const expected = rows[b]?.images.length ?? 0;
    if (found !== expected) {
      throw new FlamingoError(
        ErrorCode.InvalidInput,
        `prompt ${b} has ${expected} image${expected === 1 ? "" : "s"} but tokenizes to ${found} <image> token${found === 1 ? "" : "s"}`,
      );
    }
  }
  const visionX = await preprocessImages(
    rows.map((r) => r.images),
    o.image,
  );
  return {
    langX: { data: batch.ids, shape: [size, width] },
    attentionMask: { data: batch.attentionMask, shape: [size, width] },
    visionX,
  };
}

/**
 * Typed interleaved rows → `{ langX, attentionMask, visionX }`: {@link interleave} for each
 * row, then {@link encodePrompts}.
 */
export async function encodeInterleaved(
  tokenizer: Tokenizer,
  rows: readonly (readonly Segment[])[],
  options?: EncodePromptsOptions,
): Promise<ModelInput> {
  const parsed = parse(z.array(z.array(z.unknown())).min(1, "needs at least one row"), rows, "interleaved rows");
  return encodePrompts(
    tokenizer,
    parsed.map((r) => interleave(r as Segment[])),
    options,
  );
}

// ---------------------------------------------------------------------------------------------
// Captioning and VQA on a model (Flamingo.caption, Flamingo.vqa)

// Every generation option but `numReturnSequences`: one answer per image.
const { numReturnSequences: _one, ...generationShape } = GenerationOptionsSchema.shape;

const taskShape = {
  ...generationShape,
  /** Beam search with this many beams; 1 for greedy decoding. Default: 3, as the reference's evaluation. */
  numBeams: generationShape.numBeams,
  /** Beam scores are divided by `length ^ lengthPenalty`. Default: 0, as the reference's evaluation. */
  lengthPenalty: generationShape.lengthPenalty,
  /** Show the demonstrations as text only (the reference's zero-shot protocol). Default: `false`. */
  textOnlyDemos,
  /** How the images are preprocessed. Default: the model's ({@link Flamingo.imageOptions}): its image size, mean and std. */
  image: ImageOptionsSchema.omit({ size: true }).optional(),
};

const captionShape = {
  ...taskShape,
  /** Most new tokens per caption. Default: 20, as the reference's COCO/Flickr evaluation. */
  maxNewTokens: generationShape.maxNewTokens,
  /** Few-shot demonstrations shown before each image, in this order. Default: none (zero-shot). */
  demos: z.array(z.strictObject(captionDemoShape)).optional(),
};
/** Options of {@link Flamingo.caption}: the prompt's demonstrations and the generation options. */
export const CaptionOptionsSchema: Strict<typeof captionShape> = z.strictObject(captionShape);
export type CaptionOptions = z.input<typeof CaptionOptionsSchema>;

const vqaShape = {
  ...taskShape,
  /** Most new tokens per answer. Default: 5, as the reference's VQAv2 evaluation (TextVQA: 10). */
  maxNewTokens: generationShape.maxNewTokens,
  /** Few-shot demonstrations shown before the question, in this order. Default: none (zero-shot). */
  demos: z.array(z.strictObject(vqaDemoShape)).optional(),
};
/** Options of {@link Flamingo.vqa}: the prompt's demonstrations and the generation options. */
export const VqaOptionsSchema: Strict<typeof vqaShape> = z.strictObject(vqaShape);
export type VqaOptions = z.input<typeof VqaOptionsSchema>;

/** What captioning and VQA need from a model. */
export interface TaskHost {
  tokenizer: Tokenizer | undefined;
  /** The model's image preprocessing (its vision tower's side, its mean and std). */
  imageOptions: ImageOptions;
  generate(input: GenerateInput, options: GenerationOptions): Promise<GenerationResult>;
}

function needTokenizer(host: TaskHost, what: string): Tokenizer {
  if (host.tokenizer === undefined) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `${what} needs the model's tokenizer: load the model with Flamingo.fromPretrained, or pass tokenizer to Flamingo.load`,
    );
  }
  return host.tokenizer;
}

/** Generates after each prompt with the reference's decoding defaults and returns the decoded texts. */
async function generateTexts(
  host: TaskHost,
  tokenizer: Tokenizer,
  prompts: Prompt[],
  generation: GenerationOptions,
  image: ImageOptions | undefined,
): Promise<string[]> {
  const input = await encodePrompts(tokenizer, prompts, {
    padding: "left",
    image: { ...host.imageOptions, ...image, size: host.imageOptions.size },
  });
  const result = await host.generate(
    { visionX: input.visionX, langX: input.langX, attentionMask: input.attentionMask },
    generation,
  );
  return result.text ?? [];
}

/**
 * Captions each image as the reference's COCO evaluation does: {@link captionPrompt} with the
 * demos, left-padded batch, 3 beams, `lengthPenalty` 0, at most 20 new tokens, stopping at
 * `<|endofchunk|>`, new tokens decoded without special tokens, then {@link postprocessCaption}.
 */
export async function captionImages(
  host: TaskHost,
  images: readonly ImageInput[],
  options: CaptionOptions = {},
): Promise<string[]> {
  const tokenizer = needTokenizer(host, "caption");
  const list = parse(z.array(ImageInputSchema).min(1, "needs at least one image"), images, "images");
  const {
    demos,
    textOnlyDemos: textOnly,
    image,
    ...generation
  } = parse(CaptionOptionsSchema, options, "caption options");
  const prompts = list.map((query) => captionPrompt({ demos, query, textOnlyDemos: textOnly }));
  const texts = await generateTexts(
    host,
    tokenizer,
    prompts,
    { numBeams: 3, lengthPenalty: 0, maxNewTokens: 20, ...generation },
    image,
  );
  return texts.map(postprocessCaption);
}

/**
 * Answers a question about an image as the reference's VQAv2 evaluation does: {@link vqaPrompt}
 * with the demos, 3 beams, `lengthPenalty` 0, at most 5 new tokens, stopping at
 * `<|endofchunk|>`, then {@link postprocessVqa}.
 */
export async function answerQuestion(
  host: TaskHost,
  image: ImageInput,
  question: string,
  options: VqaOptions = {},
): Promise<string> {
  const tokenizer = needTokenizer(host, "vqa");
  const query = { image: parse(ImageInputSchema, image, "image"), question: parse(z.string(), question, "question") };
  const {
    demos,
    textOnlyDemos: textOnly,
    image: imageOptions,
    ...generation
  } = parse(VqaOptionsSchema, options, "vqa options");
  const [text = ""] = await generateTexts(
    host,
    tokenizer,
    [vqaPrompt({ demos, query, textOnlyDemos: textOnly })],
    { numBeams: 3, lengthPenalty: 0, maxNewTokens: 5, ...generation },
    imageOptions,
  );
  return postprocessVqa(text);
}
