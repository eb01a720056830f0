/**
 * Prompts in the reference's exact formats (open_flamingo/eval/models/open_flamingo.py,
 * evaluate.py; spec §6), their post-processing, batches of typed interleaved input turned
 * into model inputs with the tiny model's word-level tokenizer, and `model.caption` /
 * `model.vqa` on the tiny model (untrained, so its words are arbitrary: the tests pin the
 * protocol, not the text).
 */

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";

import {
  captionPrompt,
  encodeInterleaved,
  encodePrompts,
  Flamingo,
  FlamingoError,
  interleave,
  loadImage,
  postprocessCaption,
  postprocessVqa,
  Tokenizer,
  vqaPrompt,
} from "../ts/src/index.js";
import { REPO_ROOT } from "./helpers/golden.js";

/** A solid-colour 8×8 RGB image as raw pixels. */
const solid = (v: number) => ({ data: new Uint8Array(8 * 8 * 3).fill(v), width: 8, height: 8, channels: 3 as const });
const cats = solid(10);
const sink = solid(20);
const query = solid(30);

describe("captionPrompt", () => {
  it("writes each demo as <image>Output:{caption}<|endofchunk|> and a newline, then the open query", () => {
    const p = captionPrompt({
      demos: [
        { image: cats, caption: "  Two cats on a sofa. " },
        { image: sink, caption: "A bathroom sink." },
      ],
      query,
    });
    expect(p.text).toBe(
      "<image>Output:Two cats on a sofa.<|endofchunk|>\n<image>Output:A bathroom sink.<|endofchunk|>\n<image>Output:",
    );
    expect(p.images).toEqual([cats, sink, query]);
  });

  it("zero-shot: the demos are text only, their <image> tags removed and their images not passed", () => {
    const p = captionPrompt({
      demos: [{ caption: "Two cats." }, { caption: "A sink." }],
      query,
      textOnlyDemos: true,
    });
    expect(p.text).toBe("Output:Two cats.<|endofchunk|>\nOutput:A sink.<|endofchunk|>\n<image>Output:");
    expect(p.images).toEqual([query]);
  });

  it("without demos is the bare query", () => {
    expect(captionPrompt({ query }).text).toBe("<image>Output:");
  });

  it("refuses a demo without an image unless the demos are text only", () => {
    expect(() => captionPrompt({ demos: [{ caption: "x" }], query })).toThrow(/demo 0 has no image/);
  });
});

describe("vqaPrompt", () => {
  it("writes <image>Question:{q} Short answer:{a}<|endofchunk|> per demo, then the open question", () => {
    const p = vqaPrompt({
      demos: [{ image: cats, question: "How many cats?", answer: "two" }],
      query: { image: query, question: "What colour is the sink?" },
    });
    expect(p.text).toBe(
      "<image>Question:How many cats? Short answer:two<|endofchunk|>\n<image>Question:What colour is the sink? Short answer:",
    );
    expect(p.images).toEqual([cats, query]);
  });

  it("zero-shot keeps the demo text without its image", () => {
    const p = vqaPrompt({
      demos: [{ question: "Is it red?", answer: "yes" }],
      query: { image: query, question: "Is it blue?" },
      textOnlyDemos: true,
    });
    expect(p.text).toBe(
      "Question:Is it red? Short answer:yes<|endofchunk|>\n<image>Question:Is it blue? Short answer:",
    );
    expect(p.images).toEqual([query]);
  });
});

describe("post-processing", () => {
  it("a caption ends before the first 'Output' and loses its quotes", () => {
    expect(postprocessCaption('A "red" circle.\nOutput:A blue')).toBe("A red circle.\n");
    expect(postprocessCaption("two cats")).toBe("two cats");
  });

  it("a VQA answer ends before Question/Answer/Short, then before the first ', '", () => {
    expect(postprocessVqa("red, blue Question:what")).toBe("red");
    expect(postprocessVqa("two Short answer: three")).toBe("two ");
    expect(postprocessVqa("yes")).toBe("yes");
  });
});

describe("interleave", () => {
  it("writes the README's demo prompt from images and text", () => {
    const p = interleave([cats, "An image of two cats.", sink, "An image of a bathroom sink.", query, "An image of"]);
    expect(p.text).toBe(
      "<image>An image of two cats.<|endofchunk|><image>An image of a bathroom sink.<|endofchunk|><image>An image of",
    );
    expect(p.images).toEqual([cats, sink, query]);
  });

  it("takes a file path wrapped as { image }, since a bare string is text", () => {
    const path = join(REPO_ROOT, "..", "shared", "golden", "preprocess", "wide.png");
    const p = interleave([{ image: path }, "A wide image."]);
    expect(p.text).toBe("<image>A wide image.");
    expect(p.images).toEqual([path]);
  });

  it("does not close a chunk twice", () => {
    expect(interleave([cats, "a<|endofchunk|>", sink, "b"]).text).toBe("<image>a<|endofchunk|><image>b");
  });

  it("refuses text containing <image>: that token would have no image", () => {
    expect(() => interleave(["<image>sneaky", cats])).toThrow(/contains "<image>"/);
  });
});

describe("model inputs", () => {
  let tiny: Tokenizer;
  beforeAll(async () => {
    tiny = await Tokenizer.fromFile(join(REPO_ROOT, "models", "tiny", "lm", "tokenizer.json"));
  });

  it("encodeInterleaved left-pads the rows and stacks their images, zero-padding the shorter row", async () => {
    const input = await encodeInterleaved(
      tiny,
      [
        [cats, "Output: a red circle"],
        [cats, "Output: a", sink, "Output:"],
      ],
      { image: { size: 8 } },
    );
    // <image>=45 Output=27 :=28 a=2 red=9 circle=17 <|endofchunk|>=44 <PAD>=46
    expect(input.langX.shape).toEqual([2, 8]);
    expect(Array.from(input.langX.data)).toEqual([46, 46, 45, 27, 28, 2, 9, 17, 45, 27, 28, 2, 44, 45, 27, 28]);
    expect(Array.from(input.attentionMask.data)).toEqual([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect(input.visionX.shape).toEqual([2, 2, 1, 3, 8, 8]);
    const per = 3 * 8 * 8;
    const catsTensor = await loadImage(cats, { size: 8 });
    const sinkTensor = await loadImage(sink, { size: 8 });
    expect(Array.from(input.visionX.data.subarray(0, per))).toEqual(Array.from(catsTensor.data));
    expect(input.visionX.data.subarray(per, 2 * per).every((v) => v === 0)).toBe(true);
    expect(Array.from(input.visionX.data.subarray(3 * per))).toEqual(Array.from(sinkTensor.data));
  });

  it("encodePrompts pads on the right when asked", async () => {
    const input = await encodePrompts(tiny, [captionPrompt({ query }), interleave([query, "a red circle"])], {
      padding: "right",
      image: { size: 8 },
    });
    expect(Array.from(input.langX.data)).toEqual([45, 27, 28, 46, 45, 2, 9, 17]);
    expect(Array.from(input.attentionMask.data)).toEqual([1, 1, 1, 0, 1, 1, 1, 1]);
  });

  it("refuses a prompt whose <image> tokens do not match its images", async () => {
    const error = await encodePrompts(tiny, [{ text: "<image>Output:", images: [cats, sink] }]).catch((e) => e);
    expect(error).toBeInstanceOf(FlamingoError);
    expect((error as FlamingoError).code).toBe("ERR_INVALID_INPUT");
    expect((error as FlamingoError).message).toBe("prompt 0 has 2 images but tokenizes to 1 <image> token");
  });
});

describe("model.caption and model.vqa", () => {
  let model: Flamingo;
  let tokenizer: Tokenizer;
  const size = 32; // models/tiny's vision tower
  beforeAll(async () => {
    model = await Flamingo.fromPretrained(join(REPO_ROOT, "models", "tiny"));
    tokenizer = model.tokenizer as Tokenizer;
  });
  afterAll(async () => {
    await model?.dispose();
  });

  /** The reference's pipeline written out: prompt, left-padded batch, generate, decode, post-process. */
  async function byHand(prompts: ReturnType<typeof captionPrompt>[], options: Record<string, number>) {
    const input = await encodePrompts(tokenizer, prompts, { image: { size } });
    const result = await model.generate(
      { visionX: input.visionX, langX: input.langX, attentionMask: input.attentionMask },
      options,
    );
    return result;
  }

  it("caption uses 3 beams, lengthPenalty 0 and 20 new tokens by default, and equals the pipeline by hand", async () => {
    const demos = [{ image: cats, caption: "two cats" }];
    const spy = vi.spyOn(model, "generate");
    const captions = await model.caption([query, sink], { demos });
    expect(spy).toHaveBeenCalledOnce();
    expect(spy.mock.calls[0]?.[1]).toEqual({ numBeams: 3, lengthPenalty: 0, maxNewTokens: 20 });
    spy.mockRestore();

    const want = await byHand([captionPrompt({ demos, query }), captionPrompt({ demos, query: sink })], {
      numBeams: 3,
      lengthPenalty: 0,
      maxNewTokens: 20,
    });
    expect(want.newTokens.every((t) => t.length <= 20)).toBe(true);
    expect(captions).toEqual((want.text ?? []).map(postprocessCaption));
    expect(captions).toHaveLength(2);
  });

  it("caption takes generation options over the defaults", async () => {
    const spy = vi.spyOn(model, "generate");
    const captions = await model.caption([query], { numBeams: 1, maxNewTokens: 4 });
    expect(spy.mock.calls[0]?.[1]).toEqual({ numBeams: 1, lengthPenalty: 0, maxNewTokens: 4 });
    spy.mockRestore();
    const want = await byHand([captionPrompt({ query })], { numBeams: 1, lengthPenalty: 0, maxNewTokens: 4 });
    expect(want.newTokens[0]?.length).toBeLessThanOrEqual(4);
    expect(captions).toEqual((want.text ?? []).map(postprocessCaption));
  });

  it("vqa uses 3 beams, lengthPenalty 0 and 5 new tokens by default, and post-processes the answer", async () => {
    const demos = [{ image: cats, question: "how many cats?", answer: "two" }];
    const spy = vi.spyOn(model, "generate");
    const answer = await model.vqa(query, "what colour is it?", { demos });
    expect(spy.mock.calls[0]?.[1]).toEqual({ numBeams: 3, lengthPenalty: 0, maxNewTokens: 5 });
    spy.mockRestore();
    const want = await byHand([vqaPrompt({ demos, query: { image: query, question: "what colour is it?" } })], {
      numBeams: 3,
      lengthPenalty: 0,
      maxNewTokens: 5,
    });
    expect(want.newTokens[0]?.length).toBeLessThanOrEqual(5);
    expect(answer).toBe(postprocessVqa(want.text?.[0] ?? ""));
  });

  it("without a tokenizer, says how to get one", async () => {
    const tiny = join(REPO_ROOT, "models", "tiny");
    await using bare = await Flamingo.load({
      vision: join(tiny, "vision"),
      lm: join(tiny, "lm"),
      crossAttention: { everyNLayers: 1 },
      tokens: { media: 45, endOfChunk: 44 },
    });
    const error = await bare.caption([query]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FlamingoError);
    expect((error as FlamingoError).message).toContain("caption needs the model's tokenizer");
  });
});
