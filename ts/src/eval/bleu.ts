/**
 * BLEU-1..n exactly as pycocoevalcap's `Bleu` scorer computes it (`bleu/bleu_scorer.py`,
 * pycocoevalcap 1.2, `compute_score(option="closest")`):
 *
 * - each candidate is matched against the reference of *closest* length (ties: the shorter);
 * - n-gram matches are clipped by the largest count in any one reference;
 * - the corpus score pools matches, guesses and lengths over all images, then takes the
 *   geometric mean of precisions 1..k with the reference's smoothing, `(matches + 1e-15) /
 *   (guesses + 1e-9)`, and the brevity penalty `exp(1 - ref/test)` when the candidates are
 *   shorter (with the same 1e-15 / 1e-9 guards);
 * - the per-image scores are the same formula on one image.
 */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import { type CaptionSample, tokenizeSamples } from "./captions.js";
import { countNgrams } from "./ngrams.js";

const TINY = 1e-15;
const SMALL = 1e-9;

const bleuOptionsShape = {
  /** Longest n-gram: the result holds BLEU-1 … BLEU-n. Default: 4. */
  n: z.number().int().positive().optional(),
  /**
   * `true`: captions are already tokenized (words separated by whitespace) and are used as
   * they are; `false`: they are first run through {@link ptbTokenize}, as pycocoevalcap's
   * `COCOEvalCap.evaluate()` does. Default: `false`.
   */
  pretokenized: z.boolean().optional(),
};
/** Options of {@link bleu}. */
export const BleuOptionsSchema: z.ZodObject<typeof bleuOptionsShape, z.core.$strict> = z.strictObject(bleuOptionsShape);
export type BleuOptions = z.infer<typeof BleuOptionsSchema>;

/** BLEU scores, each in [0, 1]. */
export interface BleuResult {
  /** Corpus BLEU-1 … BLEU-n (`scores[k - 1]` is BLEU-k): pycocoevalcap's `Bleu_k`. */
  scores: number[];
  /** Per image, in input order: BLEU-1 … BLEU-n of that image alone. */
  perImage: number[][];
}

interface Cooked {
  testLength: number;
  refLength: number;
  guess: number[];
  correct: number[];
}

/** `cook_refs` + `cook_test` for one image, with the closest reference length. */
function cook(candidate: string, references: readonly string[], n: number): Cooked {
  const maxCounts = new Map<string, number>();
  const refLengths: number[] = [];
  for (const ref of references) {
    const { length, counts } = countNgrams(ref, n);
    refLengths.push(length);
    for (const map of counts) {
      for (const [gram, count] of map) maxCounts.set(gram, Math.max(maxCounts.get(gram) ?? 0, count));
    }
  }
  const test = countNgrams(candidate, n);
  // min((abs(l - testlen), l) for l in reflen)[1]: the closest length, the shorter on ties.
  let refLength = refLengths[0] as number;
  for (const l of refLengths) {
    const d = Math.abs(l - test.length);
    const best = Math.abs(refLength - test.length);
    if (d < best || (d === best && l < refLength)) refLength = l;
  }
  const guess: number[] = [];
  const correct: number[] = [];
  for (let k = 1; k <= n; k++) {
    guess.push(Math.max(0, test.length - k + 1));
    let matched = 0;
    for (const [gram, count] of test.counts[k - 1] as Map<string, number>) {
      matched += Math.min(maxCounts.get(gram) ?? 0, count);
    }
    correct.push(matched);
  }
  return { testLength: test.length, refLength, guess, correct };
}

/** BLEU-1..n from pooled counts: the cumulative geometric mean with pycocoevalcap's guards. */
function scoreCounts(c: Cooked, n: number): number[] {
  const scores: number[] = [];
  let product = 1;
  for (let k = 0; k < n; k++) {
    product *= ((c.correct[k] as number) + TINY) / ((c.guess[k] as number) + SMALL);
    scores.push(product ** (1 / (k + 1)));
  }
  const ratio = (c.testLength + TINY) / (c.refLength + SMALL);
  if (ratio < 1) {
    const penalty = Math.exp(1 - 1 / ratio);
    for (let k = 0; k < n; k++) scores[k] = (scores[k] as number) * penalty;
  }
  return scores;
}

/** BLEU on tokenized captions: `candidates[i]` against `references[i]`. */
export function bleuFromTokens(candidates: readonly string[], references: readonly string[][], n = 4): BleuResult {
  const total: Cooked = { testLength: 0, refLength: 0, guess: new Array(n).fill(0), correct: new Array(n).fill(0) };
  const perImage = candidates.map((candidate, i) => {
    const cooked = cook(candidate, references[i] as string[], n);
    total.testLength += cooked.testLength;
    total.refLength += cooked.refLength;
    for (let k = 0; k < n; k++) {
      total.guess[k] = (total.guess[k] as number) + (cooked.guess[k] as number);
      total.correct[k] = (total.correct[k] as number) + (cooked.correct[k] as number);
    }
    return scoreCounts(cooked, n);
  });
  return { scores: scoreCounts(total, n), perImage };
}

/**
 * Corpus BLEU-1..4 of candidate captions against their references, as pycocoevalcap's
 * `COCOEvalCap.evaluate()` reports `Bleu_1` … `Bleu_4` (PTB tokenization included).
 */
export function bleu(samples: readonly CaptionSample[], options: BleuOptions = {}): BleuResult {
  const parsed = BleuOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("BLEU options", parsed.error);
  const { n = 4, pretokenized = false } = parsed.data;
  const { candidates, references } = tokenizeSamples(samples, pretokenized);
  return bleuFromTokens(candidates, references, n);
}
