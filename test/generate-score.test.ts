/**
 * Cached-media scoring (`model.score`) on the golden models: the log-likelihood of each
 * continuation after a shared context equals what a full forward over context +
 * continuation gives, the context's padding stays masked, and the reference's greedy
 * continuation outranks a random one.
 */

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Flamingo } from "../ts/src/index.js";
import { FAMILIES, type Family, familyDir, goldenLoadOptions, maxAbsDiff } from "./helpers/golden.js";
import { f32, i64, readSafetensors } from "./helpers/safetensors.js";

const PAD = 95;
const VOCAB = 96;

function rows(t: { data: BigInt64Array; shape: number[] }): number[][] {
  const [b, n] = t.shape as [number, number];
  return Array.from({ length: b }, (_, i) => Array.from(t.data.subarray(i * n, (i + 1) * n), Number));
}

/** log-softmax of `logits[0, position, :]` for a `[1, T, V]` tensor, in float64. */
function logSoftmaxAt(logits: { data: Float32Array; shape: number[] }, position: number): Float64Array {
  const v = logits.shape[2] as number;
  const row = logits.data.subarray(position * v, (position + 1) * v);
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, (x) => x - lse);
}

/** Seeded token ids that are neither special nor padding. */
function randomTokens(n: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return 5 + (s % 88); // 5..92: below <|endofchunk|> (93), <image> (94), <PAD> (95)
  });
}

describe.each(FAMILIES)("%s", (family: Family) => {
  let model: Flamingo;
  let visionX: { data: Float32Array; shape: number[] };
  let context: number[];
  let greedy: number[];

  beforeAll(async () => {
    const golden = readSafetensors(join(familyDir(family), "golden.safetensors"));
    model = await Flamingo.load(goldenLoadOptions(family));
    const all = f32(golden, "vision_x");
    const per = all.data.length / (all.shape[0] as number);
    visionX = { data: all.data.slice(0, per), shape: [1, ...all.shape.slice(1)] };
    context = rows(i64(golden, "gen_lang_x"))[0] as number[];
    greedy = (rows(i64(golden, "gen_greedy"))[0] as number[]).slice(context.length);
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("equals a full forward's log-probabilities within 1e-4, for continuations of different lengths", async () => {
    const continuations = [greedy, randomTokens(8, 1), randomTokens(3, 2), [greedy[0] as number]];
    const scores = await model.score({ visionX, context, continuations });
    expect(scores).toHaveLength(continuations.length);
    let worst = 0;
    for (const [i, cont] of continuations.entries()) {
      const ids = [...context, ...cont];
      const { logits } = await model.forward({ visionX, langX: { data: ids, shape: [1, ids.length] } });
      expect(logits.shape).toEqual([1, ids.length, VOCAB]);
      const want = cont.map((t, j) => logSoftmaxAt(logits, context.length - 1 + j)[t] as number);
      const got = scores[i];
      expect(got?.tokenLogprobs).toHaveLength(cont.length);
      worst = Math.max(worst, maxAbsDiff(got?.tokenLogprobs ?? [], want));
      const sum = want.reduce((a, b) => a + b, 0);
      expect(Math.abs((got?.sum ?? Number.NaN) - sum)).toBeLessThanOrEqual(1e-4 * cont.length);
      expect(Math.abs((got?.mean ?? Number.NaN) - sum / cont.length)).toBeLessThanOrEqual(1e-4);
    }
    console.log(`${family} score vs full forward: max abs error ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-4);
  });

  it("ranks the reference's greedy continuation above a random one", async () => {
    const [g, r] = await model.score({ visionX, context, continuations: [greedy, randomTokens(greedy.length, 3)] });
    expect(g?.sum).toBeGreaterThan(r?.sum as number);
    expect(g?.mean).toBeGreaterThan(r?.mean as number);
  });

  it("masks a left-padded context's padding (the reference's cached path does not)", async () => {
    const continuations = [greedy, randomTokens(5, 4)];
    const plain = await model.score({ visionX, context, continuations });
    const padded = await model.score({
      visionX,
      context: [PAD, PAD, PAD, ...context],
      contextMask: [0, 0, 0, ...context.map(() => 1)],
      continuations,
    });
    for (const [i, p] of plain.entries()) {
      expect(maxAbsDiff(padded[i]?.tokenLogprobs ?? [], p.tokenLogprobs)).toBeLessThanOrEqual(1e-4);
    }
  });
});

describe("score input checks (llama golden model)", () => {
  let model: Flamingo;
  let visionX: { data: Float32Array; shape: number[] };
  let context: number[];

  beforeAll(async () => {
    const golden = readSafetensors(join(familyDir("llama"), "golden.safetensors"));
    model = await Flamingo.load(goldenLoadOptions("llama"));
    const all = f32(golden, "vision_x");
    visionX = { data: all.data.slice(0, all.data.length / 2), shape: [1, ...all.shape.slice(1)] };
    context = rows(i64(golden, "gen_lang_x"))[0] as number[];
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it.each([
    [{ continuations: [] }, "at least one continuation is required"],
    [{ continuations: [[]] }, "must not be empty"],
    [{ continuations: [[5, 94]] }, "continuation 0 contains <image>"],
    [{ continuations: [[500]] }, "token id 500 is outside the vocabulary (size 96)"],
    [{ contextMask: [1, 1] }, "has 2 entries but the context has 10 tokens"],
  ])("rejects %j", async (change, message) => {
    await expect(model.score({ visionX, context, continuations: [[5]], ...change })).rejects.toMatchObject({
      code: "ERR_INVALID_INPUT",
      message: expect.stringContaining(message),
    });
  });
});
