/**
 * Images in: files, encoded bytes or raw pixels → the CLIP-normalised `[3, S, S]` tensors of
 * the reference's eval transform (spec §5.3: Pillow bicubic resize of the short side, centre
 * crop, `ToTensor`, CLIP `Normalize`), and batches of them → a `visionX`-ready tensor.
 *
 * The pixel work is native and runs on libuv's thread pool (see `bindings/node/src/image.rs`),
 * so images of a batch decode in parallel and the JS thread stays free. This module only
 * validates, dispatches and lays the results out.
 */

import { z } from "zod";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "./errors.js";
import { loadNative, type NativeBinding, type NativeTensor } from "./native.js";
import type { FloatTensor } from "./tensor.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

/** Codes of image failures (every {@link FlamingoError} thrown here has one of these, or `ERR_IO` / `ERR_INVALID_INPUT`). */
export const ImageErrorCode = {
  /** The data is not an image this engine reads (JPEG, PNG, WebP, GIF, BMP), or no image at all. */
  Format: "ERR_IMAGE_FORMAT",
  /** The data starts like an image but cannot be decoded: truncated or corrupt. */
  Corrupt: "ERR_IMAGE_CORRUPT",
  /** The image has no pixels: empty data, or a width or height of 0. */
  Empty: "ERR_IMAGE_EMPTY",
  /** Over `maxPixels`: refused from the header, before any pixel memory is allocated. */
  TooLarge: "ERR_IMAGE_TOO_LARGE",
} as const;
export type ImageErrorCode = (typeof ImageErrorCode)[keyof typeof ImageErrorCode];

const rgb = (element: z.ZodNumber) => z.tuple([element, element, element]);

const imageOptionsShape = {
  /**
   * Side of the square model input: the short side is resized to it (bicubic, as Pillow
   * does), then the centre `size`×`size` is cropped. Default: 224 (CLIP ViT-L/14, the releases).
   */
  size: z.number().int().positive().max(8192).optional(),
  /** Per-channel mean (R, G, B) subtracted after scaling to [0, 1]. Default: OpenAI CLIP's `[0.48145466, 0.4578275, 0.40821073]`. */
  mean: rgb(z.number()).optional(),
  /** Per-channel standard deviation divided by. Default: OpenAI CLIP's `[0.26862954, 0.26130258, 0.27577711]`. */
  std: rgb(z.number().refine((v) => v !== 0, "must not be 0")).optional(),
  /**
   * Largest image (width × height) accepted. Checked from the file header before any pixel
   * memory is allocated, so a small file claiming 50000×50000 costs nothing. Default: 100,000,000.
   */
  maxPixels: z.number().int().positive().optional(),
  /**
   * Rotate/flip images as their EXIF orientation tag says. Default: `true`. The reference
   * ignores the tag (`PIL.Image.open` does not apply it), so a phone photo reaches its model
   * sideways; set `false` to reproduce the reference's inputs exactly.
   */
  applyExifOrientation: z.boolean().optional(),
  /**
   * Which Pillow's bicubic pass order to reproduce: `"pillow12"` (Pillow ≤ 12, the era the
   * releases were trained in) or `"pillow13"`. They differ only on downscaled portrait images
   * taller than about 2:1, by a few 8-bit steps. Default: `"pillow12"`.
   */
  passOrder: z.enum(["pillow12", "pillow13"]).optional(),
};
/** How images are preprocessed. Every default is the reference's transform for the releases. */
export const ImageOptionsSchema: Strict<typeof imageOptionsShape> = z.strictObject(imageOptionsShape);
export type ImageOptions = z.infer<typeof ImageOptionsSchema>;

const u8 = z.custom<Uint8Array | Uint8ClampedArray>((v) => v instanceof Uint8Array || v instanceof Uint8ClampedArray, {
  error: "expected a Uint8Array",
});
const dimension = z.number().int().nonnegative().max(0xffff_ffff);

const rawImageShape = {
  /** Row-major, interleaved 8-bit samples (`width × height × channels` bytes), e.g. a canvas's `ImageData.data`. */
  data: u8,
  /** Width in pixels. */
  width: dimension,
  /** Height in pixels. */
  height: dimension,
  /** Samples per pixel: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (straight alpha, resized premultiplied as Pillow does). */
  channels: z.union([z.literal(1), z.literal(2), z.literal(3), z.literal(4)]),
};
/** Raw pixels, already decoded. */
export const RawImageSchema: Strict<typeof rawImageShape> = z.strictObject(rawImageShape);
export type RawImage = z.infer<typeof RawImageSchema>;

const preprocessedShape = {
  /** CLIP-normalised values, channel-major. */
  data: z.custom<Float32Array>((v) => v instanceof Float32Array, { error: "expected a Float32Array" }),
  /** `[3, S, S]`. */
  shape: z.tuple([z.literal(3), z.number().int().positive(), z.number().int().positive()]),
};
/** An image already preprocessed (what {@link loadImage} returns); used as it is. */
export const PreprocessedImageSchema: z.ZodObject<typeof preprocessedShape, z.core.$strict> = z
  .strictObject(preprocessedShape)
  .superRefine((v, ctx) => {
    const [, h, w] = v.shape;
    if (h !== w) ctx.addIssue({ code: "custom", path: ["shape"], message: `expected a square image, got ${h}×${w}` });
    else if (v.data.length !== 3 * h * w) {
      ctx.addIssue({
        code: "custom",
        path: ["data"],
        message: `shape [3, ${h}, ${w}] holds ${3 * h * w} values, but data has ${v.data.length}`,
      });
    }
  });
export type PreprocessedImage = z.infer<typeof PreprocessedImageSchema>;

/**
 * An image as the API takes it: a file path; the bytes of an encoded file (a `Buffer` or
 * `Uint8Array`: JPEG, PNG, WebP, GIF's first frame, BMP); raw pixels ({@link RawImage}); or
 * an already preprocessed `[3, S, S]` tensor.
 */
export const ImageInputSchema: z.ZodUnion<
  [z.ZodString, typeof u8, typeof RawImageSchema, typeof PreprocessedImageSchema]
> = z.union([z.string().min(1), u8, RawImageSchema, PreprocessedImageSchema]);
export type ImageInput = z.infer<typeof ImageInputSchema>;

/** The native functions of `bindings/node/src/image.rs`. */
interface NativeImageOptions {
  size?: number;
  mean?: number[];
  std?: number[];
  maxPixels?: number;
  applyExifOrientation?: boolean;
  passOrder?: string;
}
interface NativeImages {
  loadImageFile(path: string, options?: NativeImageOptions): Promise<NativeTensor<Float32Array>>;
  loadImageBytes(bytes: Uint8Array, options?: NativeImageOptions): Promise<NativeTensor<Float32Array>>;
  loadImageRaw(
    raw: { data: Uint8Array; width: number; height: number; channels: number },
    options?: NativeImageOptions,
  ): Promise<NativeTensor<Float32Array>>;
}

function native(): NativeImages {
  return loadNative() as NativeBinding & NativeImages;
}

function asBytes(data: Uint8Array | Uint8ClampedArray): Uint8Array {
  return data instanceof Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function parseOptions(options: ImageOptions | undefined): ImageOptions {
  const parsed = ImageOptionsSchema.safeParse(options ?? {});
  if (!parsed.success) throw invalidInput("image options", parsed.error);
  return parsed.data;
}

/** Loads one validated input; `where` prefixes error messages in a batch. */
async function loadParsed(input: ImageInput, options: ImageOptions, where?: string): Promise<PreprocessedImage> {
  if (typeof input !== "string" && "shape" in input) {
    const size = options.size ?? 224;
    if (input.shape[1] !== size) {
      throw new FlamingoError(
        ErrorCode.InvalidInput,
        `${where ? `${where}: ` : ""}a preprocessed image is ${input.shape[1]}×${input.shape[2]}, but size is ${size}`,
      );
    }
    return { data: input.data, shape: [3, input.shape[1], input.shape[2]] };
  }
  let out: NativeTensor<Float32Array>;
  try {
    if (typeof input === "string") out = await native().loadImageFile(input, options);
    else if ("width" in input) out = await native().loadImageRaw({ ...input, data: asBytes(input.data) }, options);
    else out = await native().loadImageBytes(asBytes(input), options);
  } catch (error) {
    const e = fromNative(error);
    if (where === undefined) throw e;
    throw new FlamingoError(e.code, `${where}: ${e.message}`, { cause: error });
  }
  const [, h = 0, w = 0] = out.shape;
  return { data: out.data, shape: [3, h, w] };
}

/**
 * Loads one image and preprocesses it as the reference does: the `[3, S, S]` CLIP-normalised
 * tensor (S = `options.size`, 224 by default). Decoding and resizing run off the JS thread.
 *
 * Fails with a {@link FlamingoError} whose code says why: `ERR_IO` (unreadable file),
 * `ERR_IMAGE_FORMAT`, `ERR_IMAGE_CORRUPT`, `ERR_IMAGE_EMPTY`, `ERR_IMAGE_TOO_LARGE`
 * (see {@link ImageErrorCode}), or `ERR_INVALID_INPUT` for bad arguments.
 */
export async function loadImage(input: ImageInput, options?: ImageOptions): Promise<PreprocessedImage> {
  const parsed = ImageInputSchema.safeParse(input);
  if (!parsed.success) throw invalidInput("image", parsed.error);
  return loadParsed(parsed.data, parseOptions(options));
}

const rowsSchema = z.array(z.array(ImageInputSchema)).min(1, "needs at least one row");

/**
 * Loads a batch of image rows (each row: the images of one prompt, in the order of its
 * `<image>` tokens) into the `visionX` tensor `[batch, images, 1, 3, S, S]`. Rows with fewer
 * images than the longest are padded with zero images at the end, as the reference's
 * evaluation does (the model never attends to them: no `<image>` token points at them).
 * Every image is loaded in parallel on the thread pool.
 */
export async function preprocessImages(rows: ImageInput[][], options?: ImageOptions): Promise<FloatTensor> {
  const parsed = rowsSchema.safeParse(rows);
  if (!parsed.success) throw invalidInput("image rows", parsed.error);
  const opts = parseOptions(options);
  const size = opts.size ?? 224;
  const width = Math.max(...parsed.data.map((r) => r.length));
  if (width === 0) throw new FlamingoError(ErrorCode.InvalidInput, "preprocessImages needs at least one image");

  const loaded = await Promise.all(
    parsed.data.map((row, b) => Promise.all(row.map((image, t) => loadParsed(image, opts, `row ${b}, image ${t}`)))),
  );
  const per = 3 * size * size;
  const data = new Float32Array(parsed.data.length * width * per);
  loaded.forEach((row, b) => {
    row.forEach((image, t) => {
      data.set(image.data, (b * width + t) * per);
    });
  });
  return { data, shape: [parsed.data.length, width, 1, 3, size, size] };
}
