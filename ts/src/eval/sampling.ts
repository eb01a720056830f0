/**
 * Seeded sampling of evaluation items and demonstrations. The reference draws with NumPy's and
 * Python's global generators in batch order; here every draw has its own generator derived
 * from the seed and what it is for, so a run's demonstrations do not depend on the batch size
 * or on which items an interrupted run had already done (resuming gives the same prompts).
 */

/** A generator of uniform numbers in [0, 1): mulberry32, seeded from `seed` and `stream`. */
export function seededRandom(seed: number, stream: number): () => number {
  // Mix the two 32-bit halves of the seed with the stream (murmur3's finalizer) so nearby
  // seeds and streams give unrelated sequences.
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) ^ Math.floor(seed / 2 ** 32);
  h = Math.imul(h ^ (h >>> 13) ^ Math.imul(stream + 1, 0xc2b2ae35), 0x27d4eb2f);
  let state = (h ^ (h >>> 16)) >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** `k` distinct indices of `[0, n)`, uniformly, in the order drawn (a partial Fisher–Yates shuffle). */
export function sampleIndices(n: number, k: number, random: () => number): number[] {
  if (k > n) throw new RangeError(`cannot draw ${k} distinct items from ${n}`);
  const pool = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(random() * (n - i));
    [pool[i], pool[j]] = [pool[j] as number, pool[i] as number];
  }
  return pool.slice(0, k);
}

/** Streams of {@link seededRandom}: one for the evaluated subset, one for the query set, one per evaluated item. */
export const Stream = {
  testSubset: 0,
  querySet: 1,
  demosOf: (position: number) => 2 + position,
} as const;
