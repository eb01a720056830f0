/**
 * Long generations on a random model larger than the golden ones (OPT, 4 × 256 wide, with
 * cross-attention before every layer): the JS thread stays free while the engine decodes,
 * and an abort that arrives while the engine is in the middle of a call stops it within
 * a token.
 */

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AbortError, Flamingo } from "../ts/src/index.js";
import { tempDir } from "./helpers/golden.js";
import { writeRandomModel } from "./helpers/random-model.js";

const MEDIA = 3;
const EOC = 4;
const MAX_POSITIONS = 1024;
const IMAGE = 32;

describe("a long generation", () => {
  let dir: ReturnType<typeof tempDir>;
  let model: Flamingo;
  const visionX = {
    data: new Float32Array(3 * IMAGE * IMAGE).map((_, i) => Math.sin(i)),
    shape: [1, 1, 1, 3, IMAGE, IMAGE],
  };
  const prompt = [MEDIA, 10, 11, 12, 13, 14, 15, 16];
  /** Milliseconds per decoded token, measured on a short run. */
  let perToken: number;

  beforeAll(async () => {
    dir = tempDir("gen-long");
    const paths = writeRandomModel(dir.path, {
      vision: { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, imageSize: IMAGE, patchSize: 8 },
      lm: { hiddenSize: 256, ffnDim: 1024, layers: 4, heads: 4, vocabSize: 512, maxPositions: MAX_POSITIONS },
    });
    model = await Flamingo.load({
      ...paths,
      crossAttention: { everyNLayers: 1 },
      tokens: { media: MEDIA, endOfChunk: EOC },
      perceiver: { depth: 2 },
    });
    const warm = await model.generate({ visionX, langX: [prompt] }, { maxNewTokens: 32, minNewTokens: 32 });
    perToken = warm.timing.decodeWallMs / warm.timing.steps;
  });
  afterAll(async () => {
    await model?.dispose();
    dir?.cleanup();
  });

  /** Enough tokens for about `ms` of decoding (within the model's positions). */
  const tokensFor = (ms: number) => Math.min(MAX_POSITIONS - prompt.length, Math.ceil(ms / perToken));

  it("leaves the JS thread free: a 10 ms interval keeps ticking during a generation of over a second", async () => {
    const n = tokensFor(2000);
    let ticks = 0;
    let worstLag = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      worstLag = Math.max(worstLag, now - last - 10);
      last = now;
      ticks++;
    }, 10);
    const t0 = performance.now();
    let out: Awaited<ReturnType<Flamingo["generate"]>>;
    try {
      out = await model.generate({ visionX, langX: [prompt] }, { maxNewTokens: n, minNewTokens: n });
    } finally {
      clearInterval(timer);
    }
    const elapsed = performance.now() - t0;
    const expected = elapsed / 10;
    console.log(
      `${n} tokens in ${elapsed.toFixed(0)} ms (${perToken.toFixed(2)} ms/token): ${ticks} ticks of ${expected.toFixed(0)} expected, worst lag ${worstLag.toFixed(1)} ms; engine share of decode ${((100 * out.timing.decodeNativeMs) / out.timing.decodeWallMs).toFixed(1)}%`,
    );
    expect(out.newTokens[0]).toHaveLength(n);
    expect(elapsed).toBeGreaterThanOrEqual(1000);
    expect(ticks).toBeGreaterThanOrEqual(expected / 2);
  });

  it("an abort that arrives while the engine is decoding stops the generation within a token", async () => {
    const n = tokensFor(3000);
    const controller = new AbortController();
    const t0 = performance.now();
    let abortedAt = 0;
    setTimeout(() => {
      abortedAt = performance.now();
      controller.abort();
    }, 300);
    let caught: unknown;
    try {
      await model.generate(
        { visionX, langX: [prompt] },
        { maxNewTokens: n, minNewTokens: n, signal: controller.signal },
      );
    } catch (error) {
      caught = error;
    }
    const rejectedAt = performance.now();
    const latency = rejectedAt - abortedAt;
    console.log(
      `aborted at ${(abortedAt - t0).toFixed(0)} ms, rejected ${latency.toFixed(1)} ms later (${perToken.toFixed(2)} ms/token)`,
    );
    expect(caught).toBeInstanceOf(AbortError);
    expect(abortedAt).toBeGreaterThan(0);
    // The engine checks the flag before every token, so the call in flight (up to 4 tokens)
    // ends after at most one more token; the slack covers a loaded machine's scheduling.
    expect(latency).toBeLessThan(2 * perToken + 250);
    const next = await model.generate({ visionX, langX: [prompt] }, { maxNewTokens: 4 });
    expect(next.newTokens[0]).toHaveLength(4);
  });
});
