// The README's main job, end to end through the public API: load the default model the
// package ships (models/tiny), feed it an interleaved few-shot prompt
// "<image>Output: two red circles<|endofchunk|><image>Output:", print its next-token
// prediction, and greedily continue the caption.
//
// models/tiny is untrained (random backbones, a fresh bridge whose gates are 0), so its words
// are arbitrary; the point here is the whole path: files → engine → logits → decoding.

import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Flamingo } from "../dist/index.js";

const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
const dir = join(root, "models", "tiny");
const manifest = JSON.parse(readFileSync(join(dir, "flamingo.json"), "utf8"));

// The word-level vocabulary, then the three tokens OpenFlamingo appends in this order.
const vocab = JSON.parse(readFileSync(join(dir, manifest.tokenizer), "utf8")).model.vocab;
const words = Object.entries(vocab)
  .sort((a, b) => a[1] - b[1])
  .map(([w]) => w);
const base = words.length;
words.push("<|endofchunk|>", "<image>", "<PAD>");
const tokens = { media: base + 1, endOfChunk: base };
const encode = (text) =>
  text
    .replace(/<image>/g, " <image> ")
    .replace(/<\|endofchunk\|>/g, " <|endofchunk|> ")
    .replace(/:/g, " : ")
    .split(/\s+/)
    .filter(Boolean)
    .map((w) => (words.indexOf(w) >= 0 ? words.indexOf(w) : vocab["<unk>"]));

const model = await Flamingo.load({
  vision: join(dir, manifest.vision),
  lm: join(dir, manifest.lm),
  crossAttention: manifest.crossAttention,
  tokens,
});

try {
  const { imageSize, modelType, crossAttnLayers, parametersTotal } = model.summary();
  console.log(
    `loaded models/tiny: ${modelType} LM, ${parametersTotal} parameters, cross-attention before layers [${crossAttnLayers.join(", ")}]`,
  );

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
  const images = { data: visionX, shape: [1, 2, 1, 3, imageSize, imageSize] };

  const text = "<image>Output: two red circles<|endofchunk|><image>Output:";
  const prompt = encode(text);
  const { logits } = await model.forward({ visionX: images, langX: { data: prompt, shape: [1, prompt.length] } });

  const width = logits.shape[2];
  const last = logits.data.subarray((prompt.length - 1) * width, prompt.length * width);
  const max = Math.max(...last);
  const exp = Array.from(last, (l) => Math.exp(l - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const top = exp
    .map((e, id) => ({ id, p: e / sum }))
    .sort((a, b) => b.p - a.p)
    .slice(0, 5);
  console.log(`prompt: ${text}`);
  console.log(`next token: "${words[top[0].id]}" (p = ${top[0].p.toFixed(3)})`);
  console.log(`top 5: ${top.map((t) => `"${words[t.id]}" ${t.p.toFixed(3)}`).join(", ")}`);

  const out = await model.generate(
    { visionX: images, langX: { data: prompt, shape: [1, prompt.length] } },
    {
      maxNewTokens: 6,
      eosTokenIds: [tokens.endOfChunk],
    },
  );
  const continuation = Array.from(out.newTokens[0], (id) => words[id]).join(" ");
  console.log(`greedy continuation: ${continuation}`);
} finally {
  await model.dispose();
}
