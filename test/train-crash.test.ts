/**
 * Crash safety of checkpoints from the outside: a `train` process that saves after every
 * step is killed with SIGKILL while a save is under way; the folder still holds the last
 * complete state, which resumes to exactly the weights of an uninterrupted run that long.
 */

import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";

import { type TrainConfig, Trainer, train } from "../ts/src/index.js";
import { goldenLoadOptions, tempDir } from "./helpers/golden.js";
import { buildTrainCli, writePairsManifest, writeTokenizer } from "./train-helpers.js";

const scratch = tempDir("train-crash");
let CLI: string;

beforeAll(() => {
  CLI = buildTrainCli();
}, 120_000);
afterAll(() => scratch.cleanup());

const STATE = "trainer_state.json";

/** Files of the state folder that no committed state refers to: traces of a save under way. */
function uncommitted(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  if (!entries.includes(STATE)) return [];
  let current: string;
  try {
    current = (JSON.parse(readFileSync(join(dir, STATE), "utf8")) as { tensorsFile: string }).tensorsFile;
  } catch {
    return []; // replaced while we read it: look again
  }
  return entries.filter(
    (name) => name.startsWith(".trainer_state") || (name.startsWith("trainer_state-step") && name !== current),
  );
}

it("a process killed during a save leaves the last complete checkpoint, which resumes exactly", async () => {
  const tokenizer = writeTokenizer(join(scratch.path, "tokenizer"));
  const manifest = writePairsManifest(join(scratch.path, "data"), 12);
  const config = (dir: string, steps: number, saveEvery: number) =>
    ({
      model: goldenLoadOptions("opt"),
      tokenizer,
      data: { pairs: { manifest, batchSize: 4 } },
      trainer: { lr: 2e-3, seed: 5 },
      steps,
      output: { dir, saveEvery, export: null, metrics: null },
      progress: false,
    }) satisfies TrainConfig;

  const dir = join(scratch.path, "killed");
  const configFile = join(scratch.path, "train.json");
  writeFileSync(configFile, JSON.stringify(config(dir, 1000, 1)));

  // The state of this tiny model saves in milliseconds, so the folder is watched without
  // yielding to the event loop. A run killed outside a save is simply run again: the
  // command continues from its last state.
  let leftovers: string[] = [];
  let attempts = 0;
  for (; attempts < 8 && leftovers.length === 0; attempts++) {
    const child = spawn(process.execPath, [CLI, "--config", configFile, "--no-progress"], {
      stdio: "ignore",
      env: { ...process.env, CANDLE_NUM_THREADS: "1" },
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_, signal) => resolve(signal)));
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (uncommitted(dir).length > 0) {
        child.kill("SIGKILL");
        break;
      }
    }
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    expect(await exited).toBe("SIGKILL");
    leftovers = uncommitted(dir);
  }
  // The kill landed inside a save: files of the unfinished save are still there.
  expect(leftovers.length).toBeGreaterThan(0);

  await using resumed = await Trainer.resume(goldenLoadOptions("opt"), dir);
  const step = resumed.stepCount;
  expect(step).toBeGreaterThanOrEqual(1);
  console.log(
    `killed during a save after ${attempts} run(s); left behind ${leftovers.join(", ")}; resumed at step ${step}`,
  );
  const weights = await resumed.parameters();

  // The same run, uninterrupted, for as many steps as the surviving state holds.
  const straightDir = join(scratch.path, "straight");
  await train(config(straightDir, step, 0));
  await using straight = await Trainer.resume(goldenLoadOptions("opt"), straightDir);
  expect(straight.stepCount).toBe(step);
  expect(resumed.dataPosition).toEqual(straight.dataPosition);
  const expected = await straight.parameters();
  expect([...weights.keys()]).toEqual([...expected.keys()]);
  for (const [name, t] of expected) {
    const same = Buffer.from(t.data.buffer).equals(Buffer.from(weights.get(name)?.data.buffer ?? new ArrayBuffer(0)));
    expect(same, `${name} differs from the uninterrupted run`).toBe(true);
  }

  // The next save clears what the killed one left behind.
  await resumed.save(dir);
  expect(uncommitted(dir)).toEqual([]);
  expect(existsSync(join(dir, STATE))).toBe(true);
}, 600_000);
