/**
 * Parity with the reference, through the public API: each golden family is loaded from its
 * HF folders and `checkpoint.pt` as a user would, and compared with the outputs the
 * reference (OpenFlamingo 2.0.1, PyTorch 2.11, transformers 5.17, CPU float32) wrote into
 * `golden.safetensors` (see test/helpers/golden.ts for the provenance).
 */

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Flamingo } from "../ts/src/index.js";
import { FAMILIES, familyDir, goldenLoadOptions, maxAbsDiff, readMeta } from "./helpers/golden.js";
import { f32, i64, readSafetensors, type SafeTensor } from "./helpers/safetensors.js";

describe.each(FAMILIES)("%s", (family) => {
  const meta = readMeta(family);
  let golden: Map<string, SafeTensor>;
  let model: Flamingo;

  beforeAll(async () => {
    golden = readSafetensors(join(familyDir(family), "golden.safetensors"));
    model = await Flamingo.load(goldenLoadOptions(family));
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("plans the reference's decoder layers and cross-attention layers", () => {
    expect(model.plan.decoderLayersPath).toBe(meta.decoder_layers_attr_name);
    const n = meta.cross_attn_every_n_layers;
    const expected = Array.from({ length: model.plan.numLayers }, (_, i) => i).filter((i) => (i + 1) % n === 0);
    expect(model.plan.crossAttentionLayers).toEqual(expected);
    expect(model.summary().crossAttnLayers).toEqual(expected);
    expect(model.report().freshInit).toBe(false);
  });

  it("vision tokens match the reference within 1e-5", async () => {
    const want = f32(golden, "vision_tokens");
    const got = await model.visionTokens(f32(golden, "vision_x"));
    expect(got.shape).toEqual(want.shape);
    const err = maxAbsDiff(got.data, want.data);
    console.log(`${family} vision tokens max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
  });

  it("perceiver output matches the reference within 1e-5", async () => {
    const want = f32(golden, "perceiver_out");
    const got = await model.encodeVision(f32(golden, "vision_x"));
    expect(got.shape).toEqual(want.shape);
    const err = maxAbsDiff(got.data, want.data);
    console.log(`${family} perceiver max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
  });

  it("logits match within 1e-4 and the loss within 1e-5 relative", async () => {
    const want = f32(golden, "logits");
    const wantLoss = f32(golden, "loss").data[0] as number;
    const out = await model.forward({
      visionX: f32(golden, "vision_x"),
      langX: i64(golden, "lang_x"),
      attentionMask: i64(golden, "attention_mask"),
      labels: i64(golden, "labels"),
    });
    expect(out.logits.shape).toEqual(want.shape);
    const err = maxAbsDiff(out.logits.data, want.data);
    expect(out.loss).toBeDefined();
    const lossRel = Math.abs((out.loss as number) - wantLoss) / Math.abs(wantLoss);
    console.log(
      `${family} logits max abs error ${err.toExponential(2)}, loss relative error ${lossRel.toExponential(2)}`,
    );
    expect(err).toBeLessThanOrEqual(1e-4);
    expect(lossRel).toBeLessThanOrEqual(1e-5);
  });
});
