/**
 * CIDEr-D exactly as pycocoevalcap's `Cider` scorer computes it (`cider/cider_scorer.py`,
 * pycocoevalcap 1.2; the key is named "CIDEr" but the formula is CIDEr-D):
 *
 * - document frequency: for each n-gram, the number of images whose *references* contain it,
 *   counted over the evaluated set itself (so a score depends on the whole set, and a set of
 *   one image scores 0);
 * - tf-idf: `count × (log(#images) − log(max(1, df)))`;
 * - per reference and n: `Σ min(v_cand, v_ref) · v_ref / (‖v_cand‖ ‖v_ref‖)` (the clipping of
 *   CIDEr-D), times the length penalty `exp(−δ² / 2σ²)`, where δ is the difference of the
 *   "lengths" the reference accumulates — the number of bigrams, not words (a quirk kept);
 * - per image: the sum over references of the mean over n, divided by the number of
 *   references, × 10; the corpus score is the mean over images.
 *
 * OpenFlamingo reports `100 × score`.
 */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import { type CaptionSample, tokenizeSamples } from "./captions.js";
import { countNgrams, type NgramCounts } from "./ngrams.js";

const ciderOptionsShape = {
  /** Longest n-gram. Default: 4. */
  n: z.number().int().positive().optional(),
  /** Standard deviation of the Gaussian length penalty. Default: 6. */
  sigma: z.number().positive().optional(),
  /**
   * `true`: captions are already tokenized (words separated by whitespace) and are used as
   * they are; `false`: they are first run through {@link ptbTokenize}, as pycocoevalcap's
   * `COCOEvalCap.evaluate()` does. Default: `false`.
   */
  pretokenized: z.boolean().optional(),
};
/** Options of {@link cider}. */
export const CiderOptionsSchema: z.ZodObject<typeof ciderOptionsShape, z.core.$strict> =
  z.strictObject(ciderOptionsShape);
export type CiderOptions = z.infer<typeof CiderOptionsSchema>;

/** CIDEr-D scores (on pycocoevalcap's scale, where 1 is 100 in papers). */
export interface CiderResult {
  /** Mean over images: pycocoevalcap's `CIDEr`. */
  score: number;
  /** Per image, in input order. */
  perImage: number[];
}

interface TfIdf {
  vec: Map<string, number>[];
  norm: number[];
  /** Number of bigrams (pycocoevalcap's `length`, accumulated when the n-gram index is 1). */
  length: number;
}

/** CIDEr-D on tokenized captions: `candidates[i]` against `references[i]`. */
export function ciderFromTokens(
  candidates: readonly string[],
  references: readonly string[][],
  n = 4,
  sigma = 6,
): CiderResult {
  const cookedRefs = references.map((refs) => refs.map((r) => countNgrams(r, n)));
  const documentFrequency = new Map<string, number>();
  for (const refs of cookedRefs) {
    const seen = new Set<string>();
    for (const ref of refs) for (const map of ref.counts) for (const gram of map.keys()) seen.add(gram);
    for (const gram of seen) documentFrequency.set(gram, (documentFrequency.get(gram) ?? 0) + 1);
  }
  const logImages = Math.log(references.length);

  const toVec = (cooked: NgramCounts): TfIdf => {
    const vec: Map<string, number>[] = [];
    const norm: number[] = [];
    let length = 0;
    cooked.counts.forEach((map, k) => {
      const v = new Map<string, number>();
      let squares = 0;
      for (const [gram, tf] of map) {
        const weight = tf * (logImages - Math.log(Math.max(1, documentFrequency.get(gram) ?? 0)));
        v.set(gram, weight);
        squares += weight ** 2;
        if (k === 1) length += tf;
      }
      vec.push(v);
      norm.push(Math.sqrt(squares));
    });
    return { vec, norm, length };
  };

  const similarity = (cand: TfIdf, ref: TfIdf): number[] => {
    const delta = cand.length - ref.length;
    const penalty = Math.E ** (-(delta ** 2) / (2 * sigma ** 2));
    return cand.vec.map((v, k) => {
      const refVec = ref.vec[k] as Map<string, number>;
      let val = 0;
      for (const [gram, w] of v) {
        const r = refVec.get(gram) ?? 0;
        val += Math.min(w, r) * r;
      }
      const nc = cand.norm[k] as number;
      const nr = ref.norm[k] as number;
      if (nc !== 0 && nr !== 0) val /= nc * nr;
      return val * penalty;
    });
  };

  const perImage = candidates.map((candidate, i) => {
    const cand = toVec(countNgrams(candidate, n));
    const refs = cookedRefs[i] as NgramCounts[];
    const sum: number[] = new Array(n).fill(0);
    for (const ref of refs) {
      similarity(cand, toVec(ref)).forEach((s, k) => {
        sum[k] = (sum[k] as number) + s;
      });
    }
    const mean = sum.reduce((a, b) => a + b, 0) / n;
    return (mean / refs.length) * 10;
  });
  return { score: perImage.reduce((a, b) => a + b, 0) / perImage.length, perImage };
}

/**
 * Corpus CIDEr-D of candidate captions against their references, as pycocoevalcap's
 * `COCOEvalCap.evaluate()` reports `CIDEr` (PTB tokenization included). The document
 * frequencies come from these samples' references: score the whole evaluation set at once.
 */
export function cider(samples: readonly CaptionSample[], options: CiderOptions = {}): CiderResult {
  const parsed = CiderOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("CIDEr options", parsed.error);
  const { n = 4, sigma = 6, pretokenized = false } = parsed.data;
  const { candidates, references } = tokenizeSamples(samples, pretokenized);
  return ciderFromTokens(candidates, references, n, sigma);
}
