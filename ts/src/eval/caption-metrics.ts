/** {@link captionMetrics}: BLEU and CIDEr-D of one evaluation set, tokenized once. */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import { type BleuResult, bleuFromTokens } from "./bleu.js";
import { type CaptionSample, type TokenizedCaptions, tokenizeSamples } from "./captions.js";
import { type CiderResult, ciderFromTokens } from "./cider.js";

const captionMetricsOptionsShape = {
  /**
   * `true`: captions are already tokenized (words separated by whitespace) and are used as
   * they are; `false`: they are first run through {@link ptbTokenize}. Default: `false`.
   */
  pretokenized: z.boolean().optional(),
};
/** Options of {@link captionMetrics}. */
export const CaptionMetricsOptionsSchema: z.ZodObject<typeof captionMetricsOptionsShape, z.core.$strict> =
  z.strictObject(captionMetricsOptionsShape);
export type CaptionMetricsOptions = z.infer<typeof CaptionMetricsOptionsSchema>;

/** BLEU-1..4 and CIDEr-D of one evaluation set, and the tokens they were computed on. */
export interface CaptionMetrics {
  bleu: BleuResult;
  cider: CiderResult;
  tokenized: TokenizedCaptions;
}

/**
 * BLEU-1..4 and CIDEr-D as pycocoevalcap's `COCOEvalCap.evaluate()` computes them (without
 * METEOR, ROUGE-L and SPICE), tokenizing once. OpenFlamingo reports `100 × cider.score`.
 */
export function captionMetrics(samples: readonly CaptionSample[], options: CaptionMetricsOptions = {}): CaptionMetrics {
  const parsed = CaptionMetricsOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("caption metric options", parsed.error);
  const tokenized = tokenizeSamples(samples, parsed.data.pretokenized ?? false);
  return {
    bleu: bleuFromTokens(tokenized.candidates, tokenized.references),
    cider: ciderFromTokens(tokenized.candidates, tokenized.references),
    tokenized,
  };
}
