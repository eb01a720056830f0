/**
 * The layer plan is decided in TypeScript exactly as OpenFlamingo's factory decides it
 * (spec §2.4: class-name lookup in dict order; §2.5: `(i + 1) % n === 0`).
 */

import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { crossAttentionLayers, FlamingoError, inferDecoderLayersPath, planLayers } from "../ts/src/index.js";
import { FAMILIES, familyDir, readMeta } from "./helpers/golden.js";

describe("decoder layers path", () => {
  it.each([
    ["OPTForCausalLM", "model.decoder.layers"],
    ["GPTJForCausalLM", "transformer.h"],
    ["LlamaForCausalLM", "model.layers"],
    ["GPTNeoXForCausalLM", "gpt_neox.layers"],
    ["MPTForCausalLM", "transformer.blocks"],
    ["MptForCausalLM", "transformer.blocks"],
    ["MosaicGPT", "transformer.blocks"],
  ])("%s → %s", (className, path) => {
    expect(inferDecoderLayersPath(className)).toBe(path);
  });

  it("tries the keys in the reference's dict order, so 'opt' wins over later keys", () => {
    // "LlamaOptimized" contains both "opt" and "llama"; the reference checks "opt" first.
    expect(inferDecoderLayersPath("LlamaOptimizedForCausalLM")).toBe("model.decoder.layers");
  });

  it("rejects an unknown class with ERR_UNSUPPORTED_MODEL", () => {
    expect(() => inferDecoderLayersPath("GPT2LMHeadModel")).toThrowError(FlamingoError);
    try {
      inferDecoderLayersPath("GPT2LMHeadModel");
    } catch (e) {
      expect((e as FlamingoError).code).toBe("ERR_UNSUPPORTED_MODEL");
    }
  });
});

describe("cross-attention layers", () => {
  it("every n layers puts a block before layer i when (i + 1) % n === 0", () => {
    expect(crossAttentionLayers({ everyNLayers: 1 }, 4)).toEqual([0, 1, 2, 3]);
    expect(crossAttentionLayers({ everyNLayers: 2 }, 24)).toEqual([1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]);
    expect(crossAttentionLayers({ everyNLayers: 4 }, 32)).toEqual([3, 7, 11, 15, 19, 23, 27, 31]);
  });

  it("an explicit list is sorted and checked against the layer count", () => {
    expect(crossAttentionLayers({ layers: [3, 0] }, 4)).toEqual([0, 3]);
    expect(() => crossAttentionLayers({ layers: [4] }, 4)).toThrowError(/layer 4 does not exist/);
    expect(() => crossAttentionLayers({ layers: [1, 1] }, 4)).toThrowError(/listed twice/);
  });

  it.each(FAMILIES)("the %s golden LM resolves to the reference's plan", async (family) => {
    const meta = readMeta(family);
    const plan = await planLayers(join(familyDir(family), "lm"), { everyNLayers: meta.cross_attn_every_n_layers });
    expect(plan.decoderLayersPath).toBe(meta.decoder_layers_attr_name);
    const layerKeys = new Set(
      meta.checkpoint_keys
        .map((k) => /\.(\d+)\.gated_cross_attn_layer\./.exec(k)?.[1])
        .filter((i): i is string => i !== undefined)
        .map(Number),
    );
    expect(plan.crossAttentionLayers).toEqual([...layerKeys].sort((a, b) => a - b));
  });
});
