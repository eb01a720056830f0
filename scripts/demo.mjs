// The README's main job, end to end through the public API: load a model, feed it an
// interleaved image/text prompt, print what it predicts next.
//
// For now it loads the tiny `llama` golden model from ../shared/golden (random weights, a
// 96-token vocabulary without a tokenizer, so the "text" is token ids); it will switch to the
// embedded demo model once that exists.

import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Flamingo } from "../dist/index.js";

const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
const family = join(root, "..", "shared", "golden", "llama");
const tokens = { media: 94, endOfChunk: 93 };

const model = await Flamingo.load({
  vision: join(family, "vision"),
  lm: join(family, "lm"),
  checkpoint: join(family, "checkpoint.pt"),
  crossAttention: { everyNLayers: 1 },
  tokens,
});

try {
  const { imageSize, modelType, crossAttnLayers } = model.summary();
  console.log(`loaded ${modelType}, cross-attention before layers [${crossAttnLayers.join(", ")}]`);

  // Two synthetic CLIP-normalised images: a horizontal and a vertical gradient.
  const plane = imageSize * imageSize;
  const visionX = new Float32Array(2 * 3 * plane);
  for (let img = 0; img < 2; img++) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < imageSize; y++) {
        for (let x = 0; x < imageSize; x++) {
          const v = (img === 0 ? x : y) / (imageSize - 1);
          visionX[(img * 3 + c) * plane + y * imageSize + x] = (v - 0.5) * 2;
        }
      }
    }
  }

  // "<image> 11 12 13 <|endofchunk|> <image> 21 22": a demo caption, then the query image.
  const prompt = [tokens.media, 11, 12, 13, tokens.endOfChunk, tokens.media, 21, 22];
  const { logits } = await model.forward({
    visionX: { data: visionX, shape: [1, 2, 1, 3, imageSize, imageSize] },
    langX: { data: prompt, shape: [1, prompt.length] },
  });

  const vocab = logits.shape[2];
  const last = logits.data.subarray((prompt.length - 1) * vocab, prompt.length * vocab);
  const max = Math.max(...last);
  const exp = Array.from(last, (l) => Math.exp(l - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const top = exp
    .map((e, id) => ({ id, p: e / sum }))
    .sort((a, b) => b.p - a.p)
    .slice(0, 5);
  console.log(`prompt ids: ${prompt.join(" ")}`);
  console.log(`next token: ${top[0].id} (p = ${top[0].p.toFixed(3)})`);
  console.log(`top 5: ${top.map((t) => `${t.id} (${t.p.toFixed(3)})`).join(", ")}`);
} finally {
  await model.dispose();
}
