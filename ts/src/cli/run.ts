/**
 * The `flamingo` command line: `caption`, `vqa`, `generate`, `serve`, `train`, `eval`, `info`.
 * Every command takes `--help`, and `--json` for output a program can read; the model is
 * the embedded default unless `--model` names a release id or a folder. Output goes to the
 * given streams so the whole command line can be run and checked in-process.
 */

import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { type ParseArgsConfig, parseArgs } from "node:util";

import { FlamingoError } from "../errors.js";
import { isReleaseId } from "../hub/index.js";
import { renderProgress } from "../hub/progress.js";
import type { ImageInput } from "../images.js";
import { Flamingo } from "../model.js";
import { loadNative, nativeBackend, packageRoot } from "../native.js";
import { encodePrompts, interleave, type Segment } from "../prompts.js";
import { startFlamingoServer } from "../serve/index.js";
import { defaultModelDir } from "./default-model.js";

/** Where the command line writes. */
export interface CliIo {
  stdout: { write(text: string): unknown; isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Resolves when the user asks a long-running command (`serve`) to stop. Default: SIGINT or SIGTERM. */
  untilStopped?: () => Promise<void>;
}

/** A mistake in the command line: printed with a pointer to `--help`, exit status 2. */
class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

const MODEL_OPTIONS: Options = {
  model: { type: "string", short: "m" },
  offline: { type: "boolean" },
  "cache-dir": { type: "string" },
};
const GENERATION_OPTIONS: Options = {
  "max-new-tokens": { type: "string" },
  beams: { type: "string" },
  sample: { type: "boolean" },
  temperature: { type: "string" },
  seed: { type: "string" },
};
const COMMON: Options = { json: { type: "boolean" }, help: { type: "boolean", short: "h" } };

const MODEL_HELP = `  -m, --model <id|dir>     a release id (openflamingo/…) or a model folder (default: the embedded model)
      --offline            never download; use the hub cache only
      --cache-dir <dir>    hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)`;
const GENERATION_HELP = `      --max-new-tokens <n> most tokens to generate
      --beams <n>          beam search with n beams (1: greedy)
      --sample             sample instead of taking the most likely token
      --temperature <t>    sampling temperature
      --seed <n>           sampling seed`;
const COMMON_HELP = `      --json               machine-readable output on stdout
  -h, --help               this help`;

const HELP: Record<string, string> = {
  main: `flamingo: OpenFlamingo-style vision-language models from the command line

Usage: flamingo <command> [options]

Commands:
  caption <image…>          caption images
  vqa <image> <question>    answer a question about an image
  generate                  continue an interleaved prompt (--image a.png --text "…" …)
  serve                     the HTTP service (POST /v1/caption, /v1/vqa, /v1/generate)
  train                     train the Flamingo modules
  eval                      evaluate on a benchmark
  info                      versions, backend and the model's summary

Run flamingo <command> --help for a command's options.`,
  caption: `Usage: flamingo caption <image…> [options]

Captions each image with the reference's prompt ("<image>Output:") and decoding (3 beams).

  --demo <image=caption>   a few-shot demonstration, shown before each image (repeatable)
${GENERATION_HELP}
${MODEL_HELP}
${COMMON_HELP}`,
  vqa: `Usage: flamingo vqa <image> <question> [options]

Answers a question about an image with the reference's VQA prompt and decoding.

${GENERATION_HELP}
${MODEL_HELP}
${COMMON_HELP}`,
  generate: `Usage: flamingo generate (--image <file> | --text <text>)… [options]

Continues an interleaved prompt given in order on the command line, e.g.
  flamingo generate --image cats.png --text "An image of two cats." --image sink.png --text "An image of"
Each image becomes <image> before its text; tokens are printed as they are made.

${GENERATION_HELP}
${MODEL_HELP}
${COMMON_HELP}`,
  serve: `Usage: flamingo serve [options]

Serves POST /v1/caption, /v1/vqa, /v1/generate, GET /healthz and /metrics until Ctrl-C.

  --port <n>               port (default 8080; 0 picks a free one)
  --host <addr>            interface (default 127.0.0.1)
  --concurrency <n>        generations running at once (default 2)
  --max-queue <n>          requests waiting before 429 (default 32)
  --timeout-ms <n>         per-request time limit (default 60000)
  --max-body-bytes <n>     request body limit (default 10485760)
  --max-new-tokens <n>     most new tokens a request may ask for (default 256)
${MODEL_HELP}
${COMMON_HELP}`,
  info: `Usage: flamingo info [options]

Prints the package and engine versions, the native backend (cpu/cuda) and why, and the
model's summary: parameters (total, trainable) and the cross-attention layer plan.

${MODEL_HELP}
${COMMON_HELP}`,
  train: `Usage: flamingo train [options]

Trains the Flamingo modules (Perceiver, cross-attention). Its options are listed by the
training command itself, in builds that include it.`,
  eval: `Usage: flamingo eval [options]

Evaluates a model on a benchmark (COCO, VQAv2, …), in builds that include it.`,
};

function parse(argv: string[], options: Options, positionals: boolean) {
  try {
    return parseArgs({
      args: argv,
      options: { ...options, ...COMMON },
      allowPositionals: positionals,
      tokens: true,
      strict: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function integer(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0)
    throw new UsageError(`--${name} must be a non-negative integer, not ${JSON.stringify(value)}`);
  return n;
}

function number(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, not ${JSON.stringify(value)}`);
  return n;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

function generationOptions(v: Values) {
  const out: Record<string, unknown> = {};
  const set = (key: string, value: unknown) => {
    if (value !== undefined) out[key] = value;
  };
  set("maxNewTokens", integer(v["max-new-tokens"], "max-new-tokens"));
  set("numBeams", integer(v.beams, "beams"));
  set("doSample", v.sample);
  set("temperature", number(v.temperature, "temperature"));
  set("seed", integer(v.seed, "seed"));
  if (out.doSample && out.numBeams === undefined) out.numBeams = 1;
  return out;
}

/** Loads `--model` (or the embedded model), showing download progress on stderr. */
async function loadModel(v: Values, io: CliIo): Promise<Flamingo> {
  const name = typeof v.model === "string" ? v.model : defaultModelDir();
  const progress = isReleaseId(name) ? renderProgress({ stream: io.stderr as NodeJS.WriteStream }) : undefined;
  try {
    return await Flamingo.fromPretrained(name, {
      ...(v.offline ? { offline: true } : {}),
      ...(typeof v["cache-dir"] === "string" ? { cacheDir: v["cache-dir"] } : {}),
      ...(progress ? { onProgress: progress.onProgress } : {}),
    });
  } finally {
    progress?.done();
  }
}

/** An in-place progress bar on a terminal (nothing otherwise): `label [#####-----] 3/10`. */
function progressBar(io: CliIo, label: string, total: number) {
  const tty = io.stderr.isTTY === true && total > 1;
  const draw = (done: number) => {
    if (!tty) return;
    const width = 24;
    const filled = Math.round((done / total) * width);
    io.stderr.write(`\r${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total}`);
  };
  draw(0);
  return { update: draw, done: () => tty && io.stderr.write("\n") };
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
}

async function caption(argv: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(
    argv,
    { ...MODEL_OPTIONS, ...GENERATION_OPTIONS, demo: { type: "string", multiple: true } },
    true,
  );
  if (values.help) return help(io, "caption");
  if (positionals.length === 0) throw new UsageError("caption needs at least one image");
  const demos = ((values.demo as string[] | undefined) ?? []).map((d) => {
    const at = d.indexOf("=");
    if (at <= 0) throw new UsageError(`--demo takes image=caption, not ${JSON.stringify(d)}`);
    return { image: d.slice(0, at), caption: d.slice(at + 1) };
  });
  const model = await loadModel(values, io);
  try {
    const options = { ...generationOptions(values), ...(demos.length ? { demos } : {}) };
    const batch = 8;
    const captions: string[] = [];
    const bar = progressBar(io, "captioning", positionals.length);
    for (let i = 0; i < positionals.length; i += batch) {
      captions.push(...(await model.caption(positionals.slice(i, i + batch), options)));
      bar.update(captions.length);
    }
    bar.done();
    if (values.json) {
      io.stdout.write(`${JSON.stringify(positionals.map((image, i) => ({ image, caption: captions[i] })))}\n`);
    } else {
      positionals.forEach((image, i) => {
        io.stdout.write(positionals.length > 1 ? `${image}: ${captions[i]}\n` : `${captions[i]}\n`);
      });
    }
    return 0;
  } finally {
    await model.dispose();
  }
}

async function vqa(argv: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(argv, { ...MODEL_OPTIONS, ...GENERATION_OPTIONS }, true);
  if (values.help) return help(io, "vqa");
  const [image, ...words] = positionals;
  if (image === undefined || words.length === 0) throw new UsageError("vqa needs an image and a question");
  const question = words.join(" ");
  const model = await loadModel(values, io);
  try {
    const answer = await model.vqa(image, question, generationOptions(values));
    io.stdout.write(values.json ? `${JSON.stringify({ image, question, answer })}\n` : `${answer}\n`);
    return 0;
  } finally {
    await model.dispose();
  }
}

async function generate(argv: string[], io: CliIo): Promise<number> {
  const { values, tokens } = parse(
    argv,
    {
      ...MODEL_OPTIONS,
      ...GENERATION_OPTIONS,
      image: { type: "string", multiple: true },
      text: { type: "string", multiple: true },
    },
    false,
  );
  if (values.help) return help(io, "generate");
  // The prompt in command-line order.
  const segments: Segment[] = [];
  for (const t of tokens ?? []) {
    if (t.kind !== "option" || t.value === undefined) continue;
    if (t.name === "image") segments.push({ image: t.value as ImageInput });
    else if (t.name === "text") segments.push(t.value);
  }
  if (!segments.some((s) => typeof s !== "string")) throw new UsageError("generate needs at least one --image");
  const model = await loadModel(values, io);
  try {
    const tokenizer = model.tokenizer;
    if (tokenizer === undefined) throw new UsageError("this model has no tokenizer");
    const prompt = interleave(segments);
    const input = await encodePrompts(tokenizer, [prompt], { image: model.imageOptions() });
    const options = { maxNewTokens: 20, ...generationOptions(values) };
    const stream = model.stream(
      { visionX: input.visionX, langX: input.langX, attentionMask: input.attentionMask },
      options,
    );
    for await (const event of stream) if (!values.json && event.text) io.stdout.write(event.text);
    const result = await stream.result;
    if (values.json) {
      io.stdout.write(
        `${JSON.stringify({ prompt: prompt.text, text: result.text?.[0] ?? "", tokens: result.newTokens[0], stopped: result.stopped[0] })}\n`,
      );
    } else io.stdout.write("\n");
    return 0;
  } finally {
    await model.dispose();
  }
}

function stopSignal(): Promise<void> {
  return new Promise((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}

async function serve(argv: string[], io: CliIo): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...MODEL_OPTIONS,
      port: { type: "string" },
      host: { type: "string" },
      concurrency: { type: "string" },
      "max-queue": { type: "string" },
      "timeout-ms": { type: "string" },
      "max-body-bytes": { type: "string" },
      "max-new-tokens": { type: "string" },
    },
    false,
  );
  if (values.help) return help(io, "serve");
  const pick = (name: string) => integer(values[name], name);
  const model = await loadModel(values, io);
  try {
    const running = await startFlamingoServer(model, {
      port: pick("port") ?? 8080,
      host: typeof values.host === "string" ? values.host : "127.0.0.1",
      concurrency: pick("concurrency"),
      maxQueue: pick("max-queue"),
      timeoutMs: pick("timeout-ms"),
      maxBodyBytes: pick("max-body-bytes"),
      maxNewTokens: pick("max-new-tokens"),
    });
    io.stdout.write(
      values.json ? `${JSON.stringify({ url: running.url })}\n` : `flamingo: serving on ${running.url}\n`,
    );
    await (io.untilStopped ?? stopSignal)();
    await running.close();
    return 0;
  } finally {
    await model.dispose();
  }
}

/** `train` / `eval`: commands that live in modules some builds include (built next to this one). */
async function delegate(argv: string[], io: CliIo, command: "train" | "eval"): Promise<number> {
  const file = command === "train" ? "./train-cli.js" : "./eval-cli.js";
  const exported = command === "train" ? "runTrainCommand" : "runEvalCommand";
  let run: ((argv: string[]) => Promise<number | undefined> | number | undefined) | undefined;
  try {
    const mod = (await import(/* @vite-ignore */ new URL(file, import.meta.url).href)) as Record<string, unknown>;
    run = mod[exported] as typeof run;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code !== "ERR_MODULE_NOT_FOUND" && code !== "MODULE_NOT_FOUND") throw error;
  }
  if (typeof run !== "function") {
    const text = command === "train" ? "not available in this build" : "not yet available";
    io.stderr.write(`flamingo ${command}: ${text}\n`);
    // Asking for help is answered, even when the command itself is missing.
    return argv.includes("--help") || argv.includes("-h") ? help(io, command) : 1;
  }
  return (await run(argv)) ?? 0;
}

/** The compute device, as `info` shows it. */
function deviceLine(backend: "cpu" | "cuda"): string {
  if (backend === "cuda") return "cuda:0";
  const threads = Number(process.env.CANDLE_NUM_THREADS) || availableParallelism();
  return `cpu (${threads} thread${threads === 1 ? "" : "s"}${process.env.CANDLE_NUM_THREADS ? ", CANDLE_NUM_THREADS" : ""})`;
}

async function info(argv: string[], io: CliIo): Promise<number> {
  const { values } = parse(argv, MODEL_OPTIONS, false);
  if (values.help) return help(io, "info");
  const backend = nativeBackend();
  const model = await loadModel(values, io);
  try {
    const summary = model.summary();
    const report = {
      package: { name: "flamingo-vlm", version: packageVersion() },
      engine: { version: loadNative().version() },
      node: process.version,
      platform: backend.platform,
      backend,
      devices: [deviceLine(backend.backend)],
      model: {
        source: typeof values.model === "string" ? values.model : defaultModelDir(),
        ...summary,
        layerPlan: model.plan,
      },
    };
    if (values.json) {
      io.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      return 0;
    }
    const lines = [
      `flamingo-vlm ${report.package.version} (engine ${report.engine.version}), Node ${report.node}, ${report.platform}`,
      `backend: ${backend.backend} (FLAMINGO_BACKEND=${backend.requested}; ${backend.reason}) from ${backend.source}`,
      `devices: ${report.devices.join(", ")}`,
      `model: ${report.model.source}`,
      `  ${summary.modelType} LM (${summary.family}): ${summary.lmLayers} layers, width ${summary.hiddenSize}, vocabulary ${summary.vocabSize}`,
      `  vision: ${summary.visionLayers} layers, width ${summary.visionHiddenSize}, ${summary.imageSize}×${summary.imageSize} images`,
      `  parameters: ${summary.parametersTotal.toLocaleString("en-US")} total, ${summary.parametersTrainable.toLocaleString("en-US")} trainable`,
      `  cross-attention before LM layers [${summary.crossAttnLayers.join(", ")}]`,
    ];
    io.stdout.write(`${lines.join("\n")}\n`);
    return 0;
  } finally {
    await model.dispose();
  }
}

function help(io: CliIo, command: string): number {
  io.stdout.write(`${HELP[command] ?? HELP.main}\n`);
  return 0;
}

const COMMANDS: Record<string, (argv: string[], io: CliIo) => Promise<number>> = {
  caption,
  vqa,
  generate,
  serve,
  info,
  train: (argv, io) => delegate(argv, io, "train"),
  eval: (argv, io) => delegate(argv, io, "eval"),
};

/** Runs `flamingo <argv…>` and resolves with its exit status (0 ok, 1 failure, 2 bad command line). */
export async function runCli(
  argv: string[],
  io: CliIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") return help(io, "main");
  if (command === "--version" || command === "-v") {
    io.stdout.write(`${packageVersion()}\n`);
    return 0;
  }
  const run = COMMANDS[command];
  if (run === undefined) {
    io.stderr.write(`flamingo: unknown command ${JSON.stringify(command)}\n\n${HELP.main}\n`);
    return 2;
  }
  const json = rest.includes("--json");
  try {
    return await run(rest, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`flamingo ${command}: ${error.message}\nRun flamingo ${command} --help for its options.\n`);
      return 2;
    }
    const code = error instanceof FlamingoError ? error.code : "ERR_UNEXPECTED";
    const message = error instanceof Error ? error.message : String(error);
    if (json) io.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
    io.stderr.write(`flamingo ${command}: ${message} (${code})\n`);
    return 1;
  }
}
