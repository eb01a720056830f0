/**
 * The addon in `worker_threads`: a model loaded and run inside a worker gives the tokens the
 * main thread gives, and the main thread's model keeps working after the worker exits.
 * Uses the built package (dist/), as a worker of a user's app would.
 */

import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";

import { expect, it } from "vitest";

import { Flamingo } from "../ts/src/index.js";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const TINY = join(ROOT, "models", "tiny");
const DIST = join(ROOT, "dist", "index.cjs");
/** Text tokens after the image token (any ids of the tiny vocabulary). */
const TEXT_IDS = [1, 2, 3];

const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const { Flamingo } = require(workerData.dist);
(async () => {
  const model = await Flamingo.fromPretrained(workerData.tiny);
  const size = model.summary().imageSize;
  const visionX = { data: new Float32Array(3 * size * size).fill(0.25), shape: [1, 1, 1, 3, size, size] };
  const result = await model.generate({ visionX, langX: workerData.langX }, { maxNewTokens: workerData.maxNewTokens, minNewTokens: workerData.maxNewTokens });
  await model.dispose();
  parentPort.postMessage({ tokens: result.newTokens[0], disposed: model.disposed });
})().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

it("loads the addon and generates inside a worker thread, matching the main thread", async () => {
  expect(existsSync(DIST), "dist/ is built by `npm run build:ts` before the tests").toBe(true);
  const model = await Flamingo.fromPretrained(TINY);
  try {
    const size = model.summary().imageSize;
    const visionX = { data: new Float32Array(3 * size * size).fill(0.25), shape: [1, 1, 1, 3, size, size] };
    // The prompt needs its image token: take the tokenizer's id.
    const media = model.tokenizer?.mediaTokenId as number;
    const langX = [[media, ...TEXT_IDS]];
    const expected = (await model.generate({ visionX, langX }, { maxNewTokens: 5, minNewTokens: 5 })).newTokens[0];

    const worker = new Worker(WORKER, { eval: true, workerData: { dist: DIST, tiny: TINY, langX, maxNewTokens: 5 } });
    const message = await new Promise<{ tokens?: number[]; disposed?: boolean; error?: string }>((done, fail) => {
      worker.once("message", done);
      worker.once("error", fail);
    });
    await worker.terminate();
    expect(message.error).toBeUndefined();
    expect(message.tokens).toEqual(expected);
    expect(message.disposed).toBe(true);

    // The main thread's model still works after the worker's environment is gone.
    const again = (await model.generate({ visionX, langX }, { maxNewTokens: 5, minNewTokens: 5 })).newTokens[0];
    expect(again).toEqual(expected);
  } finally {
    await model.dispose();
  }
});
