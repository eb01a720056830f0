/** Caption samples, and the tokenization step shared by BLEU and CIDEr. */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import { ptbTokenize } from "./ptb-tokenize.js";

const captionSampleShape = {
  /** The caption to score (one per image). */
  candidate: z.string(),
  /** The image's reference captions (COCO has five), at least one. */
  references: z.array(z.string()).min(1),
};
/** One image: a candidate caption and its references. */
export const CaptionSampleSchema: z.ZodObject<typeof captionSampleShape, z.core.$strict> =
  z.strictObject(captionSampleShape);
export type CaptionSample = z.infer<typeof CaptionSampleSchema>;

const CaptionSamplesSchema = z.array(CaptionSampleSchema).min(1);

/** Captions as the scorers see them: space-separated tokens. */
export interface TokenizedCaptions {
  /** `candidates[i]`: the candidate of image i. */
  candidates: string[];
  /** `references[i]`: the references of image i. */
  references: string[][];
}

/**
 * Validates samples and tokenizes them as `COCOEvalCap.evaluate()` does: one PTB run over all
 * references (image after image), another over all candidates.
 */
export function tokenizeSamples(samples: readonly CaptionSample[], pretokenized: boolean): TokenizedCaptions {
  const parsed = CaptionSamplesSchema.safeParse(samples);
  if (!parsed.success) throw invalidInput("caption samples", parsed.error);
  const candidates = parsed.data.map((s) => s.candidate);
  const references = parsed.data.map((s) => s.references);
  if (pretokenized) return { candidates, references };
  const flat = ptbTokenize(references.flat());
  let next = 0;
  return {
    candidates: ptbTokenize(candidates),
    references: references.map((refs) => refs.map(() => flat[next++] as string)),
  };
}
