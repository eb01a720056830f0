/**
 * The engine thread: calls made without awaiting each other are queued on the model's
 * thread and each settles with its own result, while the JS thread stays free.
 */

import { join } from "node:path";
import { expect, it } from "vitest";

import { Flamingo } from "../ts/src/index.js";
import { familyDir, goldenLoadOptions, maxAbsDiff } from "./helpers/golden.js";
import { f32, i64, readSafetensors } from "./helpers/safetensors.js";

it("concurrent calls on one model each resolve with their own result", async () => {
  const golden = readSafetensors(join(familyDir("llama"), "golden.safetensors"));
  await using model = await Flamingo.load(goldenLoadOptions("llama"));
  const visionX = f32(golden, "vision_x");
  const input = { visionX, langX: i64(golden, "lang_x"), attentionMask: i64(golden, "attention_mask") };

  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const [a, perceiver, b] = await Promise.all([
    model.forward(input),
    model.encodeVision(visionX),
    model.forward({ ...input, labels: i64(golden, "labels") }),
  ]);
  clearInterval(timer);

  expect(maxAbsDiff(a.logits.data, f32(golden, "logits").data)).toBeLessThanOrEqual(1e-4);
  expect(maxAbsDiff(b.logits.data, a.logits.data)).toBe(0);
  expect(a.loss).toBeUndefined();
  expect(b.loss).toBeCloseTo(f32(golden, "loss").data[0] as number, 5);
  expect(maxAbsDiff(perceiver.data, f32(golden, "perceiver_out").data)).toBeLessThanOrEqual(1e-5);
  // The event loop kept turning while the engine computed.
  expect(ticks).toBeGreaterThan(0);
});
