/**
 * Generation through the public API on the golden models: token-exact parity with the
 * reference's `Flamingo.generate` (HF `generate`, transformers 5.17; `gen_greedy` and
 * `gen_beam3` in golden.safetensors, see test/helpers/golden.ts), left-padded batches,
 * per-row stopping, streaming, cancellation and the option checks.
 */

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AbortError, Flamingo, FlamingoError, type GenerationOptions, type TokenEvent } from "../ts/src/index.js";
import { FAMILIES, type Family, familyDir, goldenLoadOptions } from "./helpers/golden.js";
import { f32, i64, readSafetensors, type SafeTensor } from "./helpers/safetensors.js";

/** The golden fixtures' `<PAD>` id, which the reference's generation used as pad_token_id. */
const PAD = 95;

function rows(t: { data: BigInt64Array; shape: number[] }): number[][] {
  const [b, n] = t.shape as [number, number];
  return Array.from({ length: b }, (_, i) => Array.from(t.data.subarray(i * n, (i + 1) * n), Number));
}

/** Sample `i` of a `[batch, …]` float tensor, as a batch of one. */
function sample(t: { data: Float32Array; shape: number[] }, i: number): { data: Float32Array; shape: number[] } {
  const per = t.data.length / (t.shape[0] as number);
  return { data: t.data.slice(i * per, (i + 1) * per), shape: [1, ...t.shape.slice(1)] };
}

async function rejection(p: Promise<unknown>): Promise<FlamingoError> {
  try {
    await p;
  } catch (error) {
    expect(error).toBeInstanceOf(FlamingoError);
    return error as FlamingoError;
  }
  throw new Error("expected the call to reject");
}

describe.each(FAMILIES)("%s", (family: Family) => {
  let golden: Map<string, SafeTensor>;
  let model: Flamingo;
  let visionX: { data: Float32Array; shape: number[] };
  let prompts: number[][];

  beforeAll(async () => {
    golden = readSafetensors(join(familyDir(family), "golden.safetensors"));
    model = await Flamingo.load(goldenLoadOptions(family));
    visionX = f32(golden, "vision_x");
    prompts = rows(i64(golden, "gen_lang_x"));
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("greedy decoding gives the reference's tokens", async () => {
    const out = await model.generate(
      { visionX, langX: i64(golden, "gen_lang_x") },
      { maxNewTokens: 8, padTokenId: PAD },
    );
    expect(out.sequences).toEqual(rows(i64(golden, "gen_greedy")));
    expect(out.newTokens).toEqual(out.sequences.map((s) => s.slice(10)));
    expect(out.stopped).toEqual([false, false]);
    expect(out.scores.every((s) => Number.isFinite(s) && s < 0)).toBe(true);
  });

  it("beam search gives the reference's tokens (3 beams, lengthPenalty 1, no early stopping)", async () => {
    const out = await model.generate(
      { visionX, langX: i64(golden, "gen_lang_x") },
      { maxNewTokens: 6, numBeams: 3, lengthPenalty: 1, earlyStopping: false, padTokenId: PAD },
    );
    expect(out.sequences).toEqual(rows(i64(golden, "gen_beam3")));
  });

  it("a left-padded row of a batch generates what it generates alone", async () => {
    // Row 0 without its first two tokens, left-padded by two: given as ragged id arrays.
    const short = (prompts[0] as number[]).slice(2);
    const options: GenerationOptions = { maxNewTokens: 8, padTokenId: PAD };
    const batch = await model.generate({ visionX, langX: [short, prompts[1] as number[]] }, options);
    const alone0 = await model.generate({ visionX: sample(visionX, 0), langX: [short] }, options);
    const alone1 = await model.generate({ visionX: sample(visionX, 1), langX: [prompts[1] as number[]] }, options);
    expect(batch.newTokens[0]).toEqual(alone0.newTokens[0]);
    expect(batch.newTokens[1]).toEqual(alone1.newTokens[0]);
    expect(batch.sequences[0]?.slice(0, 2)).toEqual([PAD, PAD]);
    expect(batch.sequences[0]?.slice(2)).toEqual(alone0.sequences[0]);
  });

  it("streams the greedy tokens in order, one event per token", async () => {
    const events: TokenEvent[] = [];
    const s = model.stream({ visionX, langX: prompts }, { maxNewTokens: 8, padTokenId: PAD });
    for await (const e of s) events.push(e);
    const result = await s.result;
    const want = rows(i64(golden, "gen_greedy")).map((r) => r.slice(10));
    for (const row of [0, 1]) {
      const mine = events.filter((e) => e.row === row);
      expect(mine.map((e) => e.token)).toEqual(want[row]);
      expect(mine.map((e) => e.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    }
    expect(result.newTokens).toEqual(want);
    expect(result.timing.steps).toBe(8);
  });
});

describe("generation options and cancellation (opt golden model)", () => {
  const family: Family = "opt";
  let golden: Map<string, SafeTensor>;
  let model: Flamingo;
  let visionX: { data: Float32Array; shape: number[] };
  let prompts: number[][];
  let greedy: number[][];

  beforeAll(async () => {
    golden = readSafetensors(join(familyDir(family), "golden.safetensors"));
    model = await Flamingo.load(goldenLoadOptions(family));
    visionX = f32(golden, "vision_x");
    prompts = rows(i64(golden, "gen_lang_x"));
    greedy = rows(i64(golden, "gen_greedy")).map((r) => r.slice(10));
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("aborting after the 3rd streamed token rejects with an AbortError at once, and the model stays usable", async () => {
    const controller = new AbortController();
    const seen: TokenEvent[] = [];
    const s = model.stream({ visionX, langX: prompts }, { maxNewTokens: 40, signal: controller.signal });
    let caught: unknown;
    try {
      for await (const e of s) {
        seen.push(e);
        if (seen.length === 3) controller.abort(new Error("user cancelled"));
      }
    } catch (error) {
      caught = error;
    }
    // No token after the abort: the next step's tokens were never asked for.
    expect(seen).toHaveLength(3);
    expect(caught).toBeInstanceOf(AbortError);
    expect((caught as AbortError).name).toBe("AbortError");
    expect((caught as AbortError).code).toBe("ABORT_ERR");
    expect(((caught as AbortError).cause as Error).message).toBe("user cancelled");
    await expect(s.result).rejects.toBeInstanceOf(AbortError);
    const next = await model.generate({ visionX, langX: prompts }, { maxNewTokens: 8, padTokenId: PAD });
    expect(next.newTokens).toEqual(greedy);
  });

  it("an already-aborted signal rejects at once, before any engine work", async () => {
    const signal = AbortSignal.abort();
    const e = await rejection(model.generate({ visionX, langX: prompts }, { signal }));
    expect(e).toBeInstanceOf(AbortError);
    expect(e.code).toBe("ABORT_ERR");
    const s = model.stream({ visionX, langX: prompts }, { signal });
    await expect(
      (async () => {
        for await (const _ of s) throw new Error("no token expected");
      })(),
    ).rejects.toBeInstanceOf(AbortError);
    await expect(
      model.score({ visionX: sample(visionX, 0), context: prompts[0] as number[], continuations: [[1]] }, { signal }),
    ).rejects.toBeInstanceOf(AbortError);
  });

  it("leaving a stream early cancels it, and the model stays usable", async () => {
    const s = model.stream({ visionX, langX: prompts }, { maxNewTokens: 40 });
    for await (const e of s) {
      if (e.index === 1) break;
    }
    await expect(s.result).rejects.toBeInstanceOf(AbortError);
    const next = await model.generate({ visionX, langX: prompts }, { maxNewTokens: 8, padTokenId: PAD });
    expect(next.newTokens).toEqual(greedy);
  });

  it.each([
    [{ maxNewTokens: 0 }, "maxNewTokens must be at least 1"],
    [{ maxNewTokens: -4 }, "maxNewTokens must be at least 1"],
    [{ maxNewTokens: 2.5 }, "maxNewTokens must be an integer"],
    [{ numBeams: 0 }, "numBeams must be at least 1"],
    [{ topP: 0 }, "topP must be in (0, 1]"],
    [{ topP: 1.5 }, "topP must be in (0, 1]"],
    [{ temperature: -0.5 }, "temperature must be a positive number"],
    [{ temperature: 0 }, "temperature must be a positive number"],
    [{ minNewTokens: 9, maxNewTokens: 8 }, "minNewTokens (9) cannot exceed maxNewTokens (8)"],
    [{ numBeams: 2, numReturnSequences: 3 }, "numReturnSequences (3) cannot exceed numBeams (2)"],
    [{ numBeams: 2, doSample: true }, "beam sampling is not supported"],
    [{ stopStrings: ["."] }, "stopStrings needs a tokenizer"],
    [{ maxNewTokens: 4, bogus: 1 } as GenerationOptions, 'Unrecognized key: "bogus"'],
  ] as [GenerationOptions, string][])("rejects %j with a clear message", async (options, message) => {
    const e = await rejection(model.generate({ visionX, langX: prompts }, options));
    expect(e.code).toBe("ERR_INVALID_INPUT");
    expect(e.message).toContain(message);
  });

  it("rejects a prompt longer than the model's positions, naming the limit", async () => {
    // The OPT golden model has 256 learned positions.
    let e = await rejection(model.generate({ visionX, langX: prompts }, { maxNewTokens: 250 }));
    expect(e.code).toBe("ERR_INVALID_INPUT");
    expect(e.message).toBe(
      "the prompt has 10 tokens and maxNewTokens is 250, but the model supports at most 256 positions",
    );
    const long = Array.from({ length: 300 }, (_, i) => (i === 0 ? 94 : 5 + (i % 80)));
    e = await rejection(model.generate({ visionX: sample(visionX, 0), langX: [long] }, { maxNewTokens: 1 }));
    expect(e.message).toBe(
      "the prompt has 300 tokens and maxNewTokens is 1, but the model supports at most 256 positions",
    );
    // The model is still usable.
    const next = await model.generate({ visionX, langX: prompts }, { maxNewTokens: 8, padTokenId: PAD });
    expect(next.newTokens).toEqual(greedy);
  });

  it("rejects inputs that do not fit together", async () => {
    let e = await rejection(model.generate({ visionX: sample(visionX, 0), langX: prompts }));
    expect(e.message).toContain("visionX has 1 samples but there are 2 prompts");
    e = await rejection(model.generate({ visionX } as never));
    expect(e.message).toContain("give either langX (token ids) or text");
    e = await rejection(model.generate({ visionX, text: "a cat" }));
    expect(e.message).toContain("text input needs a tokenizer");
    e = await rejection(model.generate({ visionX, langX: [[1, 2], []] }));
    expect(e.message).toContain("a prompt must not be empty");
  });

  it("each row of a batch stops on its own stop token and is padded after it", async () => {
    // The mpt golden model's rows generate different tokens (opt's repeat one token in both).
    const golden = readSafetensors(join(familyDir("mpt"), "golden.safetensors"));
    const m = await Flamingo.load(goldenLoadOptions("mpt"));
    try {
      const visionX = f32(golden, "vision_x");
      const prompts = rows(i64(golden, "gen_lang_x"));
      const [g0, g1] = rows(i64(golden, "gen_greedy")).map((r) => r.slice(10)) as [number[], number[]];
      // A stop token that row 0 generates (first at k) and row 1 never does.
      const k = g0.findIndex((t) => !g1.includes(t));
      expect(k).toBeGreaterThanOrEqual(0);
      const stop = g0[k] as number;
      const options: GenerationOptions = { maxNewTokens: 8, eosTokenIds: [stop], padTokenId: PAD };
      const out = await m.generate({ visionX, langX: prompts }, options);
      expect(out.newTokens[0]).toEqual(g0.slice(0, k + 1));
      expect(out.newTokens[1]).toEqual(g1);
      expect(out.stopped).toEqual([true, false]);
      expect(out.sequences[0]).toEqual([...(prompts[0] as number[]), ...g0.slice(0, k + 1), ...Array(7 - k).fill(PAD)]);
      // The same through a stream: row 0 gets no token after its stop token.
      const events: TokenEvent[] = [];
      for await (const e of m.stream({ visionX, langX: prompts }, options)) events.push(e);
      expect(events.filter((e) => e.row === 0).map((e) => e.token)).toEqual(g0.slice(0, k + 1));
      expect(events.filter((e) => e.row === 1).map((e) => e.token)).toEqual(g1);
    } finally {
      await m.dispose();
    }
  });

  it("sampling is reproducible from its seed and returns numReturnSequences per prompt", async () => {
    const options: GenerationOptions = { maxNewTokens: 6, doSample: true, topK: 20, seed: 7, numReturnSequences: 2 };
    const a = await model.generate({ visionX, langX: prompts }, options);
    const b = await model.generate({ visionX, langX: prompts }, options);
    expect(a.newTokens).toHaveLength(4);
    expect(a.newTokens).toEqual(b.newTokens);
    const c = await model.generate({ visionX, langX: prompts }, { ...options, seed: 8 });
    expect(c.newTokens).not.toEqual(a.newTokens);
  });

  it("rejects calls on a disposed model with ERR_DISPOSED", async () => {
    const m = await Flamingo.load(goldenLoadOptions(family));
    await m.dispose();
    const e = await rejection(m.generate({ visionX, langX: prompts }, { maxNewTokens: 2 }));
    expect(e.code).toBe("ERR_DISPOSED");
  });
});
