/**
 * n-gram counting shared by BLEU and CIDEr: pycocoevalcap's `precook`, which splits a
 * tokenized caption on whitespace and counts every n-gram for n = 1..maxN.
 */

import { pySplit } from "./python.js";

/**
 * n-gram counts of one sentence: `counts[n - 1]` maps each n-gram (its words joined by a
 * space, which no word contains) to its count, in order of first occurrence, as Python's
 * dict keeps them.
 */
export interface NgramCounts {
  /** Number of words. */
  length: number;
  counts: Map<string, number>[];
}

export function countNgrams(sentence: string, maxN: number): NgramCounts {
  const words = pySplit(sentence);
  const counts: Map<string, number>[] = [];
  for (let n = 1; n <= maxN; n++) {
    const map = new Map<string, number>();
    for (let i = 0; i + n <= words.length; i++) {
      const gram = words.slice(i, i + n).join(" ");
      map.set(gram, (map.get(gram) ?? 0) + 1);
    }
    counts.push(map);
  }
  return { length: words.length, counts };
}
