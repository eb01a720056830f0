/**
 * Fresh cross-attention blocks start with their tanh gates at 0 (spec §3), so a model loaded
 * without a checkpoint must compute exactly what the plain LM computes, whatever the images.
 * The plain LM is the same model with an empty cross-attention plan.
 */

import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { Flamingo } from "../ts/src/index.js";
import { FAMILIES, familyDir, goldenLoadOptions, maxAbsDiff } from "./helpers/golden.js";
import { f32, i64, readSafetensors } from "./helpers/safetensors.js";

describe.each(FAMILIES)("%s", (family) => {
  it("a freshly initialised model gives the plain LM's logits within 1e-6", async () => {
    const golden = readSafetensors(join(familyDir(family), "golden.safetensors"));
    const input = {
      visionX: f32(golden, "vision_x"),
      langX: i64(golden, "lang_x"),
      attentionMask: i64(golden, "attention_mask"),
    };
    await using fresh = await Flamingo.load(goldenLoadOptions(family, { checkpoint: undefined, seed: 7 }));
    await using plain = await Flamingo.load(
      goldenLoadOptions(family, { checkpoint: undefined, crossAttention: { layers: [] } }),
    );
    expect(fresh.report().freshInit).toBe(true);
    expect(fresh.plan.crossAttentionLayers.length).toBeGreaterThan(0);
    expect(plain.plan.crossAttentionLayers).toEqual([]);

    const a = await fresh.forward(input);
    const b = await plain.forward(input);
    expect(a.logits.shape).toEqual(b.logits.shape);
    const err = maxAbsDiff(a.logits.data, b.logits.data);
    console.log(`${family} fresh vs plain LM logits max abs difference ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-6);
  });
});
