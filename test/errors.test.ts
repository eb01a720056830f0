/**
 * Bad inputs and bad files: each one is a `FlamingoError` with a stable `code` and a message
 * that says what is wrong, whether the TypeScript checks or the engine caught it.
 */

import { existsSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Flamingo, FlamingoError, type LoadOptions } from "../ts/src/index.js";
import { copyGolden, familyDir, goldenLoadOptions, readMeta, tempDir } from "./helpers/golden.js";
import { f32, i64, readSafetensors, type SafeTensor, writeSafetensors } from "./helpers/safetensors.js";
import { makeZip, maliciousPickle } from "./helpers/zip.js";

const FAMILY = "llama";
const golden = readSafetensors(join(familyDir(FAMILY), "golden.safetensors"));
const meta = readMeta(FAMILY);

/** Awaits `promise`, expecting a `FlamingoError` with `code`; returns it for more checks. */
async function rejection(promise: Promise<unknown>, code: string): Promise<FlamingoError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, "expected the call to fail").toBeInstanceOf(FlamingoError);
  expect((error as FlamingoError).code, (error as Error).message).toBe(code);
  return error as FlamingoError;
}

/** A row of the golden prompt with `<image>` tokens at the given positions. */
function promptWithImagesAt(positions: number[]): { data: Int32Array; shape: number[] } {
  const tokens = 14;
  const data = new Int32Array(tokens).map((_, i) => 1 + (i % 80));
  for (const p of positions) data[p] = meta.media_token_id;
  return { data, shape: [1, tokens] };
}

/** The first sample of the golden images: `[1, 2, 1, 3, 32, 32]`. */
function firstSampleImages(): { data: Float32Array; shape: number[] } {
  const all = f32(golden, "vision_x");
  const [, t, f, c, h, w] = all.shape as [number, number, number, number, number, number];
  const size = t * f * c * h * w;
  return { data: all.data.slice(0, size), shape: [1, t, f, c, h, w] };
}

describe("forward inputs", () => {
  let model: Flamingo;
  beforeAll(async () => {
    model = await Flamingo.load(goldenLoadOptions(FAMILY));
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("rejects visionX of the wrong rank before reaching the engine", async () => {
    const x = firstSampleImages();
    const error = await rejection(
      model.forward({ visionX: { data: x.data, shape: x.shape.slice(1) }, langX: promptWithImagesAt([0]) }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/visionX/);
    expect(error.message).toMatch(/rank 6/);
  });

  it("rejects data whose length disagrees with its shape", async () => {
    const x = firstSampleImages();
    const error = await rejection(
      model.forward({ visionX: { data: x.data.subarray(1), shape: x.shape }, langX: promptWithImagesAt([0]) }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/holds 6144 elements, but data has 6143/);
  });

  it("rejects images of a size the vision tower does not take", async () => {
    const small = { data: new Float32Array(2 * 3 * 16 * 16), shape: [1, 2, 1, 3, 16, 16] };
    const error = await rejection(
      model.forward({ visionX: small, langX: promptWithImagesAt([0]) }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/32/);
    expect(error.message).toMatch(/16/);
    await rejection(model.visionTokens(small), "ERR_INVALID_INPUT");
  });

  it("rejects more <image> tokens than images by default", async () => {
    const error = await rejection(
      model.forward({ visionX: firstSampleImages(), langX: promptWithImagesAt([0, 4, 9]) }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/image/i);
  });

  it("keeps the reference's behaviour for excess <image> tokens when allowed", async () => {
    const out = await model.forward({
      visionX: firstSampleImages(),
      langX: promptWithImagesAt([0, 4, 9]),
      allowExcessMediaTokens: true,
    });
    expect(out.logits.shape).toEqual([1, 14, 96]);
    expect(out.logits.data.every(Number.isFinite)).toBe(true);
  });

  it("rejects an attention mask of another shape than langX", async () => {
    const error = await rejection(
      model.forward({
        visionX: firstSampleImages(),
        langX: promptWithImagesAt([0]),
        attentionMask: { data: new Int32Array(13).fill(1), shape: [1, 13] },
      }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/attentionMask/);
  });

  it("accepts the golden int64 tensors as they are stored", async () => {
    const out = await model.forward({ visionX: f32(golden, "vision_x"), langX: i64(golden, "lang_x") });
    expect(out.logits.shape).toEqual([2, 14, 96]);
    expect(out.loss).toBeUndefined();
  });
});

describe("load options and files", () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir("errors");
  });
  afterAll(() => tmp.cleanup());

  /** A private copy of the golden LM folder with its config.json edited. */
  function editedLm(name: string, edit: (config: Record<string, unknown>) => void): string {
    const dir = copyGolden(FAMILY, "lm", join(tmp.path, name));
    const path = join(dir, "config.json");
    const config = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    edit(config);
    writeFileSync(path, JSON.stringify(config, null, 2));
    return dir;
  }

  it("names every invalid option", async () => {
    const options = { ...goldenLoadOptions(FAMILY), crossAttention: { everyNLayers: 0 }, extra: 1 };
    const error = await rejection(Flamingo.load(options as unknown as LoadOptions), "ERR_INVALID_INPUT");
    expect(error.message).toMatch(/crossAttention/);
    expect(error.message).toMatch(/extra/);
  });

  it("rejects an explicit cross-attention layer the LM does not have", async () => {
    const error = await rejection(
      Flamingo.load(goldenLoadOptions(FAMILY, { checkpoint: undefined, crossAttention: { layers: [1, 9] } })),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toMatch(/layer 9 does not exist; the LM has 4 decoder layers/);
  });

  it("rejects a config.json with an unknown model_type", async () => {
    const lm = editedLm("unknown-model-type", (c) => {
      c.model_type = "bloom";
    });
    const error = await rejection(Flamingo.load(goldenLoadOptions(FAMILY, { lm })), "ERR_UNSUPPORTED_MODEL");
    expect(error.message).toMatch(/bloom/);
  });

  it("rejects an LM class whose decoder layers it cannot locate, unless told where they are", async () => {
    const lm = editedLm("unknown-class", (c) => {
      c.architectures = ["BloomForCausalLM"];
    });
    const error = await rejection(Flamingo.load(goldenLoadOptions(FAMILY, { lm })), "ERR_UNSUPPORTED_MODEL");
    expect(error.message).toMatch(/BloomForCausalLM/);
    expect(error.message).toMatch(/decoderLayersPath/);
    // The reference's escape hatch: name the path explicitly.
    const model = await Flamingo.load(goldenLoadOptions(FAMILY, { lm, decoderLayersPath: "model.layers" }));
    expect(model.plan.decoderLayersPath).toBe("model.layers");
    await model.dispose();
  });

  it("rejects a decoderLayersPath that does not match the LM", async () => {
    await rejection(Flamingo.load(goldenLoadOptions(FAMILY, { decoderLayersPath: "transformer.h" })), "ERR_CONFIG");
  });

  it("rejects a truncated safetensors file", async () => {
    const lm = copyGolden(FAMILY, "lm", join(tmp.path, "truncated"));
    const weights = join(lm, "model.safetensors");
    truncateSync(weights, Math.floor(readFileSync(weights).length / 2));
    const error = await rejection(Flamingo.load(goldenLoadOptions(FAMILY, { lm })), "ERR_CORRUPT_FILE");
    expect(error.message).toContain(weights);
  });

  it("rejects weights whose shapes disagree with config.json", async () => {
    const lm = editedLm("hidden-size", (c) => {
      c.hidden_size = 32;
    });
    const error = await rejection(
      Flamingo.load(goldenLoadOptions(FAMILY, { lm, checkpoint: undefined })),
      "ERR_WEIGHTS",
    );
    expect(error.message).toMatch(/shape/);
  });

  /** A safetensors checkpoint with the golden Flamingo key set (values: the golden gradients, same shapes). */
  function checkpointTensors(): Map<string, SafeTensor> {
    const tensors = new Map<string, SafeTensor>();
    for (const key of meta.checkpoint_keys) {
      const t = golden.get(`grad.${key}`);
      if (t) tensors.set(key, t);
    }
    return tensors;
  }

  it("rejects a checkpoint with missing keys in strict mode, naming one", async () => {
    const tensors = checkpointTensors();
    const dropped = [...tensors.keys()].filter((k) => k.includes("gated_cross_attn_layer.attn.to_q"));
    expect(dropped.length).toBeGreaterThan(0);
    for (const k of dropped) tensors.delete(k);
    const path = join(tmp.path, "missing-keys.safetensors");
    writeSafetensors(path, tensors);
    const error = await rejection(
      Flamingo.load(goldenLoadOptions(FAMILY, { checkpoint: path, strict: true })),
      "ERR_CHECKPOINT",
    );
    expect(error.message).toMatch(/missing/);
    expect(error.message).toMatch(/attn\.to_q/);
  });

  it("rejects unexpected checkpoint keys in strict mode and reports them otherwise", async () => {
    const tensors = checkpointTensors();
    tensors.set("not_a_module.weight", { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) });
    const path = join(tmp.path, "unexpected-key.safetensors");
    writeSafetensors(path, tensors);
    const error = await rejection(
      Flamingo.load(goldenLoadOptions(FAMILY, { checkpoint: path, strict: true })),
      "ERR_CHECKPOINT",
    );
    expect(error.message).toMatch(/not_a_module\.weight/);
    await using model = await Flamingo.load(goldenLoadOptions(FAMILY, { checkpoint: path }));
    expect(model.report().unexpected).toContain("not_a_module.weight");
  });

  it("refuses a pickle that calls a function, without running it", async () => {
    const marker = join(tmp.path, "pickle-ran");
    const zip = makeZip([
      { name: "checkpoint/data.pkl", data: maliciousPickle(`touch ${marker}`) },
      { name: "checkpoint/.format_version", data: Buffer.from("1") },
      { name: "checkpoint/byteorder", data: Buffer.from("little") },
    ]);
    const path = join(tmp.path, "malicious.pt");
    writeFileSync(path, zip);
    const error = await rejection(Flamingo.load(goldenLoadOptions(FAMILY, { checkpoint: path })), "ERR_UNSAFE_PICKLE");
    expect(error.message).toMatch(/system/);
    expect(existsSync(marker)).toBe(false);
  });
});

describe("disposal", () => {
  it("rejects calls after dispose with ERR_DISPOSED, and a second dispose is a no-op", async () => {
    const model = await Flamingo.load(goldenLoadOptions(FAMILY));
    const pending = model.forward({ visionX: f32(golden, "vision_x"), langX: i64(golden, "lang_x") });
    await model.dispose();
    // A call made before dispose still completes.
    expect((await pending).logits.shape).toEqual([2, 14, 96]);
    expect(model.disposed).toBe(true);
    const error = await rejection(
      model.forward({ visionX: f32(golden, "vision_x"), langX: i64(golden, "lang_x") }),
      "ERR_DISPOSED",
    );
    expect(error.message).toMatch(/disposed/);
    await rejection(model.encodeVision(f32(golden, "vision_x")), "ERR_DISPOSED");
    await model.dispose();
  });

  it("await using disposes the model at the end of the scope", async () => {
    let escaped: Flamingo | undefined;
    {
      await using model = await Flamingo.load(goldenLoadOptions(FAMILY));
      escaped = model;
      expect(model.disposed).toBe(false);
    }
    expect(escaped.disposed).toBe(true);
  });
});
