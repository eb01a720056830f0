/**
 * Tensors as the API takes and returns them: `{ data, shape }`, row-major. The schemas check
 * what can be checked without the model (types, rank, data length against the shape, batch
 * agreement); the engine checks the rest (image size against the vision tower, `<image>`
 * tokens against the number of images).
 */

import { z } from "zod";

/** A float tensor as the API returns it: row-major `data` and its `shape`. */
export interface FloatTensor {
  data: Float32Array;
  shape: number[];
}

const shapeSchema = z.array(z.number().int().nonnegative());

/**
 * `instanceof` checks typed as the plain array types (`z.instanceof` would narrow them to
 * views over a non-shared `ArrayBuffer`, rejecting arrays typed with the default buffer).
 */
const typedArray = <T>(ctor: abstract new (...args: never[]) => unknown, name: string) =>
  z.custom<T>((v) => v instanceof ctor, { error: `expected a ${name}` });

const elementCount = (shape: readonly number[]): number => shape.reduce((n, d) => n * d, 1);

/** Checks `data.length` against the shape, and the rank when given. */
function checkLayout(
  value: { data: { length: number }; shape: readonly number[] },
  ctx: z.RefinementCtx,
  rank: number | undefined,
  layout: string | undefined,
): void {
  if (rank !== undefined && value.shape.length !== rank) {
    ctx.addIssue({
      code: "custom",
      path: ["shape"],
      message: `expected rank ${rank}${layout ? ` ${layout}` : ""}, got shape [${value.shape.join(", ")}]`,
    });
    return;
  }
  const expected = elementCount(value.shape);
  if (expected !== value.data.length) {
    ctx.addIssue({
      code: "custom",
      path: ["data"],
      message: `shape [${value.shape.join(", ")}] holds ${expected} elements, but data has ${value.data.length}`,
    });
  }
}

// Declared through their shapes so the emitted .d.ts keeps the fields' JSDoc.
const floatTensorShape = {
  /** Row-major values. A plain number array is copied into a `Float32Array`. */
  data: z.union([typedArray<Float32Array>(Float32Array, "Float32Array"), z.array(z.number())]),
  /** Dimensions, outermost first. */
  shape: shapeSchema,
};
const intTensorShape = {
  /**
   * Row-major integers. `BigInt64Array` (what PyTorch-made files hold) and `Uint32Array`
   * are accepted too; every value must fit a 32-bit signed integer.
   */
  data: z.union([
    typedArray<Int32Array>(Int32Array, "Int32Array"),
    typedArray<Uint32Array>(Uint32Array, "Uint32Array"),
    typedArray<BigInt64Array>(BigInt64Array, "BigInt64Array"),
    z.array(z.number().int()),
  ]),
  /** Dimensions, outermost first. */
  shape: shapeSchema,
};
type FloatTensorSchema = z.ZodObject<typeof floatTensorShape, z.core.$strict>;
type IntTensorSchema = z.ZodObject<typeof intTensorShape, z.core.$strict>;

/** A float input tensor of the given rank (any rank when omitted). */
export function floatTensorSchema(rank?: number, layout?: string): FloatTensorSchema {
  return z.strictObject(floatTensorShape).superRefine((v, ctx) => checkLayout(v, ctx, rank, layout));
}

/** An integer input tensor (token ids, masks, labels) of the given rank. */
export function intTensorSchema(rank?: number, layout?: string): IntTensorSchema {
  return z.strictObject(intTensorShape).superRefine((v, ctx) => {
    checkLayout(v, ctx, rank, layout);
    for (let i = 0; i < v.data.length; i++) {
      const x = Number(v.data[i]);
      if (!Number.isSafeInteger(x) || x < -0x8000_0000 || x > 0x7fff_ffff) {
        ctx.addIssue({
          code: "custom",
          path: ["data", i],
          message: `${String(v.data[i])} does not fit a 32-bit signed integer`,
        });
        return;
      }
    }
  });
}

/** `visionX`: `[batch, images, frames, channels, height, width]`, CLIP-normalised. */
export const VisionXSchema = floatTensorSchema(6, "[batch, images, frames, channels, height, width]");

/** A float tensor as the API takes it: `{ data, shape }`, row-major. */
export type FloatTensorInput = z.infer<FloatTensorSchema>;
/** An integer tensor (ids, masks, labels) as the API takes it: `{ data, shape }`, row-major. */
export type IntTensorInput = z.infer<IntTensorSchema>;

const forwardInputShape = {
  /** Images, `[batch, images, frames, 3, height, width]` (frames must be 1), CLIP-normalised. Required. */
  visionX: VisionXSchema,
  /** Token ids `[batch, tokens]`, with `<image>` and `<|endofchunk|>` tokens interleaved. Required. */
  langX: intTensorSchema(2, "[batch, tokens]"),
  /** `[batch, tokens]`: 1 for real tokens, 0 for padding. Default: all ones. */
  attentionMask: intTensorSchema(2, "[batch, tokens]").optional(),
  /**
   * Targets `[batch, tokens]` for the loss (shifted inside, as HF does); −100 marks ignored
   * positions. Default: no loss is computed.
   */
  labels: intTensorSchema(2, "[batch, tokens]").optional(),
  /**
   * A row with more `<image>` tokens than it has images is an error by default. `true` keeps
   * the reference's behaviour instead: tokens after the extra `<image>` attend uniformly to
   * every image. Default: `false`.
   */
  allowExcessMediaTokens: z.boolean().optional(),
};

/** Inputs of {@link Flamingo.forward}. */
export const ForwardInputSchema: z.ZodObject<typeof forwardInputShape, z.core.$strict> = z
  .strictObject(forwardInputShape)
  .superRefine((v, ctx) => {
    const [batch, tokens] = v.langX.shape;
    const same = (name: "attentionMask" | "labels") => {
      const t = v[name];
      if (t && (t.shape[0] !== batch || t.shape[1] !== tokens)) {
        ctx.addIssue({
          code: "custom",
          path: [name, "shape"],
          message: `must match langX's shape [${v.langX.shape.join(", ")}], got [${t.shape.join(", ")}]`,
        });
      }
    };
    same("attentionMask");
    same("labels");
    if (v.visionX.shape.length === 6 && v.visionX.shape[0] !== batch) {
      ctx.addIssue({
        code: "custom",
        path: ["visionX", "shape"],
        message: `batch size ${v.visionX.shape[0]} does not match langX's ${batch}`,
      });
    }
    const mask = v.attentionMask?.data;
    if (mask) {
      for (let i = 0; i < mask.length; i++) {
        const m = Number(mask[i]);
        if (m !== 0 && m !== 1) {
          ctx.addIssue({
            code: "custom",
            path: ["attentionMask", "data", i],
            message: `must be 0 or 1, got ${m}`,
          });
          break;
        }
      }
    }
  });

export type ForwardInput = z.input<typeof ForwardInputSchema>;

/** What {@link Flamingo.forward} returns. */
export interface ForwardOutput {
  /** `[batch, tokens, vocab]`. */
  logits: FloatTensor;
  /** Mean shifted cross-entropy over labels ≠ −100; present when labels were given. */
  loss?: number;
}

/** Native form of a float tensor: always a `Float32Array`. */
export function toFloat32(t: FloatTensorInput): FloatTensor {
  return {
    data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data),
    shape: [...t.shape],
  };
}

/** Native form of an integer tensor: always an `Int32Array` (values already range-checked). */
export function toInt32(t: IntTensorInput): { data: Int32Array; shape: number[] } {
  let data: Int32Array;
  if (t.data instanceof Int32Array) data = t.data;
  else if (t.data instanceof BigInt64Array) data = Int32Array.from(t.data, (x) => Number(x));
  else data = Int32Array.from(t.data as ArrayLike<number>);
  return { data, shape: [...t.shape] };
}
