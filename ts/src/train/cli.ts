/**
 * `flamingo train --config train.json`: runs {@link train} from a JSON file. Paths in the
 * file are relative to the file's folder. Ctrl-C (SIGINT) or SIGTERM stops after the current
 * step and saves the training state; running the same command again continues the run.
 */

import { readFile } from "node:fs/promises";
import { dirname, isAbsolute, resolve } from "node:path";
import { parseArgs } from "node:util";

import { FlamingoError } from "../errors.js";
import { train } from "./loop.js";

export const TRAIN_USAGE = `usage: flamingo train --config <train.json> [--steps N] [--fresh] [--no-progress]

Trains a model as configured in <train.json> (all options: TrainConfigSchema):
  {
    "model":  { "vision": "clip/", "lm": "lm/", "crossAttention": { "everyNLayers": 1 },
                "tokens": { "media": 50278, "endOfChunk": 50277 } },
    "data":   { "pairs": { "manifest": "pairs.jsonl", "batchSize": 8 } },
    "trainer": { "lr": 1e-4 },
    "steps":  1000,
    "output": { "dir": "runs/a", "saveEvery": 100 }
  }
Paths are relative to the config file. A run whose output.dir holds a training state
continues from it; Ctrl-C stops after the current step and saves.

  --config <file>   the JSON configuration (required)
  --steps N         override "steps"
  --fresh           start over even if output.dir holds a state (resume: false)
  --no-progress     no progress output
  -h, --help        this text
`;

function resolvePath(base: string, p: unknown): unknown {
  return typeof p === "string" && !isAbsolute(p) ? resolve(base, p) : p;
}

function resolveList(base: string, p: unknown): unknown {
  return Array.isArray(p) ? p.map((x) => resolvePath(base, x)) : resolvePath(base, p);
}

/** Makes the config's paths absolute, relative to `base` (the config file's folder). */
export function resolveConfigPaths(config: Record<string, unknown>, base: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  const model = config.model as Record<string, unknown> | undefined;
  if (model && typeof model === "object") {
    out.model = {
      ...model,
      vision: resolvePath(base, model.vision),
      lm: resolvePath(base, model.lm),
      ...(model.checkpoint === undefined ? {} : { checkpoint: resolvePath(base, model.checkpoint) }),
    };
  }
  if (config.tokenizer !== undefined) out.tokenizer = resolvePath(base, config.tokenizer);
  const data = config.data as Record<string, Record<string, unknown> | undefined> | undefined;
  if (data && typeof data === "object") {
    const d: Record<string, unknown> = { ...data };
    for (const kind of ["pairs", "documents"]) {
      const source = data[kind];
      if (source && typeof source === "object") {
        d[kind] = {
          ...source,
          ...(source.manifest === undefined ? {} : { manifest: resolveList(base, source.manifest) }),
          ...(source.shards === undefined ? {} : { shards: resolveList(base, source.shards) }),
        };
      }
    }
    out.data = d;
  }
  const output = config.output as Record<string, unknown> | undefined;
  if (output && typeof output === "object") {
    out.output = {
      ...output,
      dir: resolvePath(base, output.dir),
      ...(typeof output.export === "string" ? { export: resolvePath(base, output.export) } : {}),
      ...(typeof output.metrics === "string" ? { metrics: resolvePath(base, output.metrics) } : {}),
    };
  }
  return out;
}

/**
 * Runs the `train` command with `argv` (the arguments after `train`). Resolves with the
 * process exit code: 0 when done, 130 when stopped by a signal (the state is saved), 1 on
 * an error, 2 on a usage error.
 */
export async function runTrainCommand(
  argv: string[],
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream } = process,
): Promise<number> {
  let args: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      args: argv,
      options: {
        config: { type: "string" },
        steps: { type: "string" },
        fresh: { type: "boolean", default: false },
        "no-progress": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  }
  try {
    args = parse();
  } catch (error) {
    io.stderr.write(`flamingo train: ${(error as Error).message}\n\n${TRAIN_USAGE}`);
    return 2;
  }
  if (args.values.help) {
    io.stdout.write(TRAIN_USAGE);
    return 0;
  }
  const configPath = args.values.config;
  if (configPath === undefined) {
    io.stderr.write(`flamingo train: --config is required\n\n${TRAIN_USAGE}`);
    return 2;
  }
  let config: Record<string, unknown>;
  try {
    const raw = JSON.parse(await readFile(configPath, "utf8")) as unknown;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw))
      throw new Error("the file must hold a JSON object");
    config = resolveConfigPaths(raw as Record<string, unknown>, dirname(resolve(configPath)));
  } catch (error) {
    io.stderr.write(`flamingo train: cannot read ${configPath}: ${(error as Error).message}\n`);
    return 2;
  }
  if (args.values.steps !== undefined) {
    const steps = Number(args.values.steps);
    if (!Number.isInteger(steps) || steps <= 0) {
      io.stderr.write(`flamingo train: --steps must be a positive integer, got ${args.values.steps}\n`);
      return 2;
    }
    config.steps = steps;
  }
  if (args.values.fresh) config.resume = false;
  if (args.values["no-progress"]) config.progress = false;

  const controller = new AbortController();
  let signalled: string | undefined;
  const stop = (name: string) => () => {
    if (signalled !== undefined) {
      io.stderr.write(`\nflamingo train: ${name} again, exiting without saving\n`);
      process.exit(130);
    }
    signalled = name;
    io.stderr.write(`\nflamingo train: ${name}: stopping after the current step and saving the state…\n`);
    controller.abort();
  };
  const onInt = stop("SIGINT");
  const onTerm = stop("SIGTERM");
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);
  try {
    const result = await train({ ...(config as Parameters<typeof train>[0]), signal: controller.signal });
    const skipped = Object.entries(result.skipped)
      .map(([kind, s]) => {
        const n = Object.values(s?.counts ?? {}).reduce((a, b) => a + b, 0);
        return n > 0 ? `${kind}: ${n} samples skipped ${JSON.stringify(s?.counts)}` : undefined;
      })
      .filter((s) => s !== undefined);
    io.stdout.write(
      `${result.stopReason === "aborted" ? "stopped" : "done"} at step ${result.steps} ` +
        `(${result.stepsThisRun} this run, last loss ${result.lastLoss.toFixed(4)}, ` +
        `${(result.samples / Math.max(result.seconds, 1e-9)).toFixed(1)} samples/s); ` +
        `state saved in ${result.stateDir}` +
        (result.exportPath ? `; weights exported to ${result.exportPath}` : "") +
        "\n" +
        skipped.map((s) => `${s}\n`).join(""),
    );
    return result.stopReason === "aborted" ? 130 : 0;
  } catch (error) {
    const code = error instanceof FlamingoError ? ` [${error.code}]` : "";
    io.stderr.write(`flamingo train: ${(error as Error).message}${code}\n`);
    return 1;
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
  }
}
