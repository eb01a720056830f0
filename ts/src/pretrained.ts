/**
 * `Flamingo.fromPretrained`'s first half: a release id or a local folder → the options of
 * {@link Flamingo.load}, with the tokenizer loaded. It reproduces what the reference's
 * `create_model_and_transforms` derives from the tokenizer (spec §2.2): the `<image>` and
 * `<|endofchunk|>` ids (`tok.encode(...)[-1]`) and the LM vocabulary resize to
 * `len(tokenizer)`, so a user names a model and nothing else.
 */

import { z } from "zod";

import { ErrorCode, FlamingoError, invalidInput } from "./errors.js";
import { type ResolvedRelease, ResolveReleaseOptionsSchema, resolveRelease } from "./hub/releases.js";
import { CrossAttentionBlockOptionsSchema, type LoadOptions, PerceiverOptionsSchema, TokensSchema } from "./options.js";
import { Tokenizer } from "./tokenizer.js";

const fromPretrainedShape = {
  ...ResolveReleaseOptionsSchema.shape,
  /**
   * Special token ids. Default: the tokenizer's `<image>` and `<|endofchunk|>` ids, as the
   * reference takes them (50278 and 50277 for the releases).
   */
  tokens: TokensSchema.optional(),
  /** Rows of the LM vocabulary. Default: `tokenizer.len()`, the reference's `len(tokenizer)` (50280 for the releases). */
  vocabSize: z.number().int().positive().optional(),
  /** Where the LM's decoder layers live. Default: the release's, else inferred from the LM's `config.json`. */
  decoderLayersPath: z.string().min(1).optional(),
  /** Perceiver hyper-parameters. Default: the reference's (the releases use them). */
  perceiver: PerceiverOptionsSchema.optional(),
  /** Cross-attention block hyper-parameters. Default: the reference's (the releases use them). */
  crossAttentionBlock: CrossAttentionBlockOptionsSchema.optional(),
  /** Apply the vision tower's post-layernorm (open_clip ≥ 2.23). Default: `false`, as the releases were trained. */
  visionPostLayernorm: z.boolean().optional(),
  /** Also reject checkpoint keys that fit nothing. Default: `false`. */
  strict: z.boolean().optional(),
  /** Seed of the fresh Flamingo modules when the model has no checkpoint. Default: 0. */
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
};
/**
 * Options of {@link Flamingo.fromPretrained}: where to download from (release ids only: the
 * hub endpoint, cache folder, token, offline mode, progress callback and abort signal), a
 * cross-attention plan for folders that do not say, and overrides of what is derived.
 */
export const FromPretrainedOptionsSchema: z.ZodObject<typeof fromPretrainedShape, z.core.$strict> =
  z.strictObject(fromPretrainedShape);
export type FromPretrainedOptions = z.infer<typeof FromPretrainedOptionsSchema>;

/** What {@link pretrainedLoadOptions} found: load options with the tokenizer loaded, and where the parts are. */
export interface Pretrained {
  options: LoadOptions & { tokenizer: Tokenizer; tokens: NonNullable<LoadOptions["tokens"]>; vocabSize: number };
  resolved: ResolvedRelease;
}

/**
 * Resolves `idOrDir` (downloading a release when needed, see {@link resolveRelease}), loads
 * its tokenizer and derives the token ids and vocabulary size from it.
 */
export async function pretrainedLoadOptions(idOrDir: string, options: FromPretrainedOptions = {}): Promise<Pretrained> {
  const parsed = FromPretrainedOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("fromPretrained options", parsed.error);
  if (typeof idOrDir !== "string" || idOrDir.length === 0) {
    throw new FlamingoError(ErrorCode.InvalidInput, "fromPretrained needs a release id or a model folder");
  }
  const {
    tokens,
    vocabSize,
    decoderLayersPath,
    perceiver,
    crossAttentionBlock,
    visionPostLayernorm,
    strict,
    seed,
    ...resolveOptions
  } = parsed.data;
  const resolved = await resolveRelease(idOrDir, resolveOptions);
  // The tokenizer decides the ids and the vocabulary, as in the reference; a release's table
  // values are what its real tokenizer gives, and a stand-in's tokenizer may differ.
  const tokenizer = await Tokenizer.fromFile(resolved.tokenizer);
  const load: Pretrained["options"] = {
    vision: resolved.vision,
    lm: resolved.lm,
    crossAttention: resolved.crossAttention,
    tokens: tokens ?? tokenizer.modelTokens,
    vocabSize: vocabSize ?? tokenizer.len(),
    tokenizer,
  };
  if (resolved.checkpoint !== undefined) load.checkpoint = resolved.checkpoint;
  const layersPath = decoderLayersPath ?? resolved.decoderLayersPath;
  if (layersPath !== undefined) load.decoderLayersPath = layersPath;
  // The folder's own settings (flamingo.json) unless overridden.
  const perceiverOptions = perceiver ?? resolved.perceiver;
  if (perceiverOptions !== undefined) load.perceiver = perceiverOptions;
  const blockOptions = crossAttentionBlock ?? resolved.crossAttentionBlock;
  if (blockOptions !== undefined) load.crossAttentionBlock = blockOptions;
  if (resolved.preprocess !== undefined) load.preprocess = resolved.preprocess;
  if (visionPostLayernorm !== undefined) load.visionPostLayernorm = visionPostLayernorm;
  if (strict !== undefined) load.strict = strict;
  if (seed !== undefined) load.seed = seed;
  return { options: load, resolved };
}
