/**
 * Resuming across processes: 10 steps straight equal 5 steps, a save, and 5 more in a new
 * `node` process running the `train` command — losses and trained weights bit for bit.
 */

import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";

import { type TrainConfig, train } from "../ts/src/index.js";
import { goldenLoadOptions, tempDir } from "./helpers/golden.js";
import { readSafetensors } from "./helpers/safetensors.js";
import { buildTrainCli, writePairsManifest, writeTokenizer } from "./train-helpers.js";

const scratch = tempDir("train-resume");
let CLI: string;

beforeAll(() => {
  CLI = buildTrainCli();
}, 120_000);
afterAll(() => scratch.cleanup());

it("10 steps straight equal 5 steps, save, and 5 more in a new process", async () => {
  const tokenizer = writeTokenizer(join(scratch.path, "tokenizer"));
  const manifest = writePairsManifest(join(scratch.path, "data"), 12);
  const config = (dir: string, steps: number) =>
    ({
      model: goldenLoadOptions("opt"),
      tokenizer,
      // 3 batches per epoch: the run crosses epochs (reshuffled, new flips) and the
      // schedule's warmup and cosine decay.
      data: { pairs: { manifest, batchSize: 4, epochs: 5 } },
      trainer: { lr: 2e-3, schedule: { type: "cosine", warmupSteps: 3, totalSteps: 10 }, seed: 11 },
      steps,
      output: { dir, saveEvery: 4 },
      progress: false,
    }) satisfies TrainConfig;

  const straightDir = join(scratch.path, "straight");
  const straight = await train(config(straightDir, 10));
  expect(straight).toMatchObject({ steps: 10, stopReason: "steps" });

  const splitDir = join(scratch.path, "split");
  const first = await train(config(splitDir, 5));
  expect(first).toMatchObject({ steps: 5, stopReason: "steps" });
  const configFile = join(scratch.path, "train.json");
  writeFileSync(configFile, JSON.stringify(config(splitDir, 10)));
  const child = spawnSync(process.execPath, [CLI, "--config", configFile, "--no-progress"], {
    encoding: "utf8",
    env: { ...process.env, CANDLE_NUM_THREADS: process.env.CANDLE_NUM_THREADS ?? "2" },
  });
  expect(child.stderr).toBe("");
  expect(child.status).toBe(0);
  expect(child.stdout).toMatch(/^done at step 10 \(5 this run/);

  const lines = (dir: string) =>
    readFileSync(join(dir, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { step: number; loss: number; lr: number; gradNorm: number });
  const a = lines(straightDir);
  const b = lines(splitDir);
  expect(b.map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  // JSON keeps a double's shortest round-trip form: equal text is equal bits.
  expect(b.map((l) => [l.loss, l.lr, l.gradNorm])).toEqual(a.map((l) => [l.loss, l.lr, l.gradNorm]));
  expect(new Set(a.map((l) => l.loss)).size).toBe(10);

  const wa = readSafetensors(join(straightDir, "checkpoint.safetensors"));
  const wb = readSafetensors(join(splitDir, "checkpoint.safetensors"));
  expect([...wb.keys()].sort()).toEqual([...wa.keys()].sort());
  for (const [name, t] of wa) {
    const u = wb.get(name);
    expect(u?.shape, name).toEqual(t.shape);
    const same = Buffer.from(t.data.buffer).equals(Buffer.from(u?.data.buffer ?? new ArrayBuffer(0)));
    expect(same, `${name} differs`).toBe(true);
  }
}, 600_000);
