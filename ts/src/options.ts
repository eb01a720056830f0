/**
 * Options of {@link Flamingo.load}. Each schema is the single source of its type (`z.infer`);
 * the defaults named in the docs are the reference's (OpenFlamingo 2.0.1, spec §3), applied
 * by the engine when an option is left out.
 */

import { z } from "zod";

const positiveInt = z.number().int().positive();

// Each schema is declared as `z.ZodObject<typeof shape, …>` so that the emitted .d.ts refers to
// the shape object, whose properties keep their JSDoc (an inferred `ZodObject<{…}>` loses it).
type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

const tokenId = z.number().int().nonnegative().max(0xffff_ffff);

const everyNLayersShape = {
  /**
   * A block before every LM layer `i` with `(i + 1) % everyNLayers === 0`, as the reference's
   * `cross_attn_every_n_layers` does (1: every layer; 4: layers 3, 7, 11, …). The releases
   * use 1 (OpenFlamingo-3B), 2 (4B) and 4 (9B).
   */
  everyNLayers: positiveInt,
};
const explicitLayersShape = {
  /**
   * Explicit LM layer indices (0-based) that get a block before them. Each must exist in
   * the LM; `[]` gives the plain LM.
   */
  layers: z.array(z.number().int().nonnegative()),
};
/** Where the gated cross-attention blocks go: every n layers, or an explicit list. */
export const CrossAttentionPlanSchema: z.ZodUnion<
  [Strict<typeof everyNLayersShape>, Strict<typeof explicitLayersShape>]
> = z.union([z.strictObject(everyNLayersShape), z.strictObject(explicitLayersShape)]);
export type CrossAttentionPlan = z.infer<typeof CrossAttentionPlanSchema>;

const tokensShape = {
  /** Id of `<image>` (50278 for the GPT-NeoX tokenizers of the releases). Required. */
  media: tokenId,
  /** Id of `<|endofchunk|>` (50277 for the GPT-NeoX tokenizers of the releases). Required. */
  endOfChunk: tokenId,
};
/** Ids of the two special tokens the model is built around. */
export const TokensSchema: Strict<typeof tokensShape> = z.strictObject(tokensShape);
export type Tokens = z.infer<typeof TokensSchema>;

const perceiverShape = {
  /** Attention + feed-forward layers. Default: 6. */
  depth: positiveInt.optional(),
  /** Attention heads. Default: 8. */
  heads: positiveInt.optional(),
  /** Width of each head (the inner width is `heads × dimHead`, whatever the vision width). Default: 64. */
  dimHead: positiveInt.optional(),
  /** Latent tokens per image, i.e. visual tokens the LM sees per image. Default: 64. */
  numLatents: positiveInt.optional(),
  /** Feed-forward expansion factor. Default: 4. */
  ffMult: positiveInt.optional(),
};
/** `PerceiverResampler` hyper-parameters. OpenFlamingo never changes them. */
export const PerceiverOptionsSchema: Strict<typeof perceiverShape> = z.strictObject(perceiverShape);
export type PerceiverOptions = z.infer<typeof PerceiverOptionsSchema>;

const crossAttentionBlockShape = {
  /** Attention heads. Default: 8. */
  heads: positiveInt.optional(),
  /** Width of each head (inner width `heads × dimHead`, whatever the LM width). Default: 64. */
  dimHead: positiveInt.optional(),
  /** Feed-forward expansion factor. Default: 4. */
  ffMult: positiveInt.optional(),
  /**
   * `true`: text attends only to the image immediately preceding it (the releases); `false`:
   * to every preceding image. Default: `true`.
   */
  onlyAttendImmediateMedia: z.boolean().optional(),
};
/** `GatedCrossAttentionBlock` hyper-parameters. */
export const CrossAttentionBlockOptionsSchema: Strict<typeof crossAttentionBlockShape> =
  z.strictObject(crossAttentionBlockShape);
export type CrossAttentionBlockOptions = z.infer<typeof CrossAttentionBlockOptionsSchema>;

const loadOptionsShape = {
  /** Folder of the CLIP vision tower in HF format (`config.json` + `*.safetensors`). Required. */
  vision: z.string().min(1),
  /** Folder of the causal LM in HF format (`config.json` + `*.safetensors`). Required. */
  lm: z.string().min(1),
  /**
   * OpenFlamingo weights: the released `checkpoint.pt` (parsed, never executed) or a
   * `.safetensors` file. Default: none — the Perceiver and cross-attention blocks are freshly
   * initialised (gates at 0, so the model then computes exactly what the plain LM does).
   */
  checkpoint: z.string().min(1).optional(),
  /** Where the gated cross-attention blocks go. Required (the checkpoint was trained with one plan). */
  crossAttention: CrossAttentionPlanSchema,
  /** Special token ids. Required: they come from the tokenizer the checkpoint was trained with. */
  tokens: TokensSchema,
  /**
   * Attribute path of the LM's decoder layers (e.g. `model.layers`), which names the
   * checkpoint's keys. Default: inferred from `architectures[0]` in the LM's `config.json`,
   * as the reference does.
   */
  decoderLayersPath: z.string().min(1).optional(),
  /** Perceiver hyper-parameters. Default: the reference's (6 layers, 8×64 heads, 64 latents). */
  perceiver: PerceiverOptionsSchema.optional(),
  /** Cross-attention block hyper-parameters. Default: the reference's (8×64 heads, ×4 FF, immediate media). */
  crossAttentionBlock: CrossAttentionBlockOptionsSchema.optional(),
  /**
   * Apply the vision tower's post-layernorm to the patch tokens (open_clip ≥ 2.23 behaviour).
   * Default: `false` — the released checkpoints were trained on pre-layernorm tokens.
   */
  visionPostLayernorm: z.boolean().optional(),
  /**
   * Resize the LM vocabulary to this many rows (`len(tokenizer)`, 50280 for the releases).
   * Default: the LM's own `vocab_size`.
   */
  vocabSize: positiveInt.optional(),
  /**
   * Also reject checkpoint keys that fit nothing. Missing Flamingo keys are always an error.
   * Default: `false` (unexpected keys are listed in {@link Flamingo.report}).
   */
  strict: z.boolean().optional(),
  /** Seed of the fresh initialisation when there is no checkpoint. Default: 0. */
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
};
/** Options of {@link Flamingo.load}: where the model's files are and how to assemble it. */
export const LoadOptionsSchema: Strict<typeof loadOptionsShape> = z.strictObject(loadOptionsShape);
export type LoadOptions = z.infer<typeof LoadOptionsSchema>;
