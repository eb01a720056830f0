/**
 * The JSON bodies of the service's routes, as zod schemas (the single source of their
 * types), and how a multipart form becomes the same object. Images arrive as base64 strings
 * (a `data:` URL prefix is allowed) or, from a form, as file bytes; they are always decoded
 * to bytes here, so a string from a client is never read as a file path.
 */

import { z } from "zod";

import { GenerationOptionsSchema } from "../generate.js";
import type { FormPart } from "./multipart.js";

const bytes = z.custom<Uint8Array>((v) => v instanceof Uint8Array, { error: "expected image bytes" });
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** An image: base64 text (optionally a `data:image/…;base64,` URL) or, from a form, bytes. */
const imageField = z.union([
  z
    .string({ error: "an image must be a base64 string" })
    .min(1, { error: "an image must not be empty" })
    .transform((s, ctx) => {
      const payload = s.replace(/^data:[^,]*;base64,/, "").replace(/\s+/g, "");
      if (!BASE64.test(payload)) {
        ctx.addIssue({ code: "custom", message: "an image must be base64 (the file's bytes), not a path or URL" });
        return z.NEVER;
      }
      return new Uint8Array(Buffer.from(payload, "base64"));
    }),
  bytes,
]);

const g = GenerationOptionsSchema.shape;

/** Limits the service puts on what one request may ask for. */
export interface RequestLimits {
  /** Most new tokens a request may ask for. */
  maxNewTokens: number;
  /** Most images in one request (demos included). */
  maxImages: number;
}

function generationFields(limits: RequestLimits) {
  return {
    maxNewTokens: g.maxNewTokens.refine((n) => n === undefined || n <= limits.maxNewTokens, {
      error: `maxNewTokens may be at most ${limits.maxNewTokens} on this server`,
    }),
    minNewTokens: g.minNewTokens,
    numBeams: z.number().int().min(1).max(8, { error: "numBeams may be at most 8" }).optional(),
    lengthPenalty: g.lengthPenalty,
    doSample: g.doSample,
    temperature: g.temperature,
    topK: g.topK,
    topP: g.topP,
    seed: g.seed,
    repetitionPenalty: g.repetitionPenalty,
    noRepeatNgramSize: g.noRepeatNgramSize,
    stopStrings: z.array(z.string().min(1).max(200)).max(8).optional(),
    /** Answer as Server-Sent Events, one `token` event per token and a `done` event. Default: `false`. */
    stream: z.boolean().optional(),
  };
}

/** Fields of a request that are generation options (the rest describe the prompt). */
export const GENERATION_KEYS = [
  "maxNewTokens",
  "minNewTokens",
  "numBeams",
  "lengthPenalty",
  "doSample",
  "temperature",
  "topK",
  "topP",
  "seed",
  "repetitionPenalty",
  "noRepeatNgramSize",
  "stopStrings",
] as const;

/** The request schemas for `limits`. */
export function requestSchemas(limits: RequestLimits) {
  const images = (what: string) =>
    z.array(imageField).max(limits.maxImages, { error: `at most ${limits.maxImages} ${what}` });
  const caption = z
    .strictObject({
      /** One image to caption. Give this or `images`. */
      image: imageField.optional(),
      /** Images to caption, one caption each. */
      images: images("images").min(1, { error: "images must not be empty" }).optional(),
      /** Few-shot demonstrations. */
      demos: z
        .array(z.strictObject({ image: imageField.optional(), caption: z.string() }))
        .max(limits.maxImages)
        .optional(),
      textOnlyDemos: z.boolean().optional(),
      ...generationFields(limits),
    })
    .refine((r) => (r.image === undefined) !== (r.images === undefined), {
      error: "give either image or images",
      path: ["image"],
    });
  const vqa = z.strictObject({
    image: imageField,
    question: z.string({ error: "question is required" }).min(1).max(2000),
    demos: z
      .array(z.strictObject({ image: imageField.optional(), question: z.string(), answer: z.string() }))
      .max(limits.maxImages)
      .optional(),
    textOnlyDemos: z.boolean().optional(),
    ...generationFields(limits),
  });
  const generate = z.strictObject({
    /** Prompt text with one `<image>` per image, in order (the reference's format). */
    prompt: z.string({ error: "prompt is required" }).min(1).max(20_000),
    images: images("images").min(1, { error: "a prompt needs at least one image" }),
    ...generationFields(limits),
  });
  return { caption, vqa, generate };
}

/** Form fields whose text is kept as it is; every other field is read as JSON when it parses. */
const TEXT_FIELDS = new Set(["question", "prompt", "caption"]);
const IMAGE_FIELDS = new Set(["image", "images"]);

/**
 * A multipart form as the JSON body it stands for: files named `image`/`images` become the
 * route's `image` or `images` (for captions: one file is `image`, several are `images`), `demos` is JSON,
 * `question`/`prompt` are text, and other fields are parsed as JSON (`maxNewTokens=8`,
 * `stream=true`) or kept as text.
 */
export function formToBody(parts: readonly FormPart[], images: "image" | "images" | "either"): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const files: Uint8Array[] = [];
  let imagesAsList = false;
  for (const part of parts) {
    if (IMAGE_FIELDS.has(part.name)) {
      files.push(new Uint8Array(part.data));
      if (part.name === "images") imagesAsList = true;
      continue;
    }
    const text = part.data.toString("utf8");
    if (TEXT_FIELDS.has(part.name)) body[part.name] = text;
    else {
      try {
        body[part.name] = JSON.parse(text);
      } catch {
        body[part.name] = text;
      }
    }
  }
  if (images === "image" || (images === "either" && files.length === 1 && !imagesAsList)) {
    // More than one file where one image is expected: let the schema say so.
    if (files.length > 0) body.image = files.length === 1 ? files[0] : files;
  } else if (files.length > 0) body.images = files;
  return body;
}
