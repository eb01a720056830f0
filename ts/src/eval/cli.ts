/**
 * `flamingo eval`: the command-line face of {@link evaluate}. The `flamingo` binary imports
 * this module when its first argument is `eval` and hands it the remaining arguments.
 */

import { join } from "node:path";
import { parseArgs } from "node:util";

import { FlamingoError } from "../errors.js";
import { Flamingo } from "../model.js";
import { loadCaptionDataset, loadHatefulMemes, loadVqaDataset, type VqaDatasetName } from "./datasets.js";
import {
  EVAL_TASKS,
  type EvalData,
  type EvalReport,
  type EvalTask,
  type EvaluateProgress,
  evaluate,
} from "./runner.js";

export const EVAL_USAGE = `Usage: flamingo eval --task TASK --data DIR --model MODEL [options]

Runs OpenFlamingo's few-shot evaluation (its prompts, 3-beam decoding and post-processing)
and writes predictions.jsonl (resumable), predictions.json and report.json to --output.

Tasks: ${EVAL_TASKS.join(", ")}

Options:
  --task TASK             which evaluation (required)
  --data DIR              dataset folder, laid out as below (required)
  --model MODEL           model folder or release id (required)
  --shots N               demonstrations per prompt; 0 = 2 text-only demos (default 0)
  --seed N                seed of the evaluated subset and the demos (default 42)
  --num-samples N         evaluate N items drawn from the test split (default: all)
  --query-set-size N      training items demos are drawn from (default 2048; VQA 4x)
  --batch-size N          prompts per generation call (default 8)
  --num-beams N           beams (default 3)
  --max-new-tokens N      default per task: 20 captions, 5 VQA, 10 TextVQA
  --vqa-evaluator NAME    openflamingo (default), official, official-2021
  --output DIR            where the run's files go (default eval-TASK-Nshot-seedS)
  --annotations FILE      captions: the Karpathy JSON (default DIR/dataset_TASK.json)
  --images DIR            captions and hateful_memes: the image folder
  --json                  print the report as JSON on stdout, no progress bar
  -h, --help              show this help

Data layouts under --data DIR:
  coco, flickr30k   dataset_coco.json / dataset_flickr30k.json (Karpathy split);
                    images at DIR/<filepath>/<filename>
  vqav2, okvqa      train_questions.json, train_annotations.json, test_questions.json,
                    test_annotations.json; images in DIR/train2014 and DIR/val2014
                    (COCO_<folder>_<id:012d>.jpg)
  vizwiz, textvqa   the same JSON files; images in DIR/train_images and DIR/test_images
  hateful_memes     train.jsonl and test.jsonl ({id, img, text, label}); images in DIR/img
`;

/** Where the command writes: its standard output and error streams. */
export interface EvalCommandIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean; columns?: number };
}

function usageError(message: string): FlamingoError {
  return new FlamingoError("ERR_USAGE", `${message}\nRun "flamingo eval --help" for the options.`);
}

function integer(name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw usageError(`--${name} must be an integer ≥ ${min}, got "${value}"`);
  return n;
}

/** Reads the train and test splits of `task` from the conventional layout under `dir`. */
export async function loadEvalData(
  task: EvalTask,
  dir: string,
  overrides: { annotations?: string; images?: string } = {},
): Promise<EvalData<unknown>> {
  switch (task) {
    case "coco":
    case "flickr30k": {
      const common = {
        annotations: overrides.annotations ?? join(dir, `dataset_${task}.json`),
        imageDir: overrides.images ?? dir,
        dataset: task,
      } as const;
      const [train, test] = await Promise.all([
        loadCaptionDataset({ ...common, split: "train" }),
        loadCaptionDataset({ ...common, split: "test" }),
      ]);
      return { train, test };
    }
    case "vqav2":
    case "okvqa":
    case "vizwiz":
    case "textvqa": {
      const coco = task === "vqav2" || task === "okvqa";
      const split = (name: "train" | "test") =>
        loadVqaDataset({
          questions: join(dir, `${name}_questions.json`),
          annotations: join(dir, `${name}_annotations.json`),
          imageDir: join(dir, coco ? (name === "train" ? "train2014" : "val2014") : `${name}_images`),
          dataset: task as VqaDatasetName,
        });
      const [train, test] = await Promise.all([split("train"), split("test")]);
      return { train, test };
    }
    case "hateful_memes": {
      const imageDir = overrides.images ?? join(dir, "img");
      const [train, test] = await Promise.all([
        loadHatefulMemes({ annotations: join(dir, "train.jsonl"), imageDir }),
        loadHatefulMemes({ annotations: join(dir, "test.jsonl"), imageDir }),
      ]);
      return { train, test };
    }
  }
}

function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

/** A progress bar on a terminal (redrawn in place), or a line every few seconds otherwise. */
export function progressBar(
  stream: EvalCommandIo["stderr"],
  label: string,
): {
  update(p: EvaluateProgress): void;
  end(): void;
} {
  const tty = stream.isTTY === true;
  const start = performance.now();
  let last = -Infinity;
  let open = false;
  return {
    update(p) {
      const now = performance.now();
      const finished = p.done === p.total;
      if (!finished && now - last < (tty ? 100 : 5000)) return;
      last = now;
      const fraction = p.total === 0 ? 1 : p.done / p.total;
      const width = 24;
      const filled = Math.round(fraction * width);
      const elapsed = (now - start) / 1000;
      const made = p.done - p.resumed;
      const rate = elapsed > 0 && made > 0 ? made / elapsed : undefined;
      const eta = rate ? ` ETA ${formatDuration((p.total - p.done) / rate)}` : "";
      const text = `${label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${p.done}/${p.total} ${formatDuration(elapsed)}${eta}`;
      if (tty) {
        stream.write(`\r\x1b[2K${text}`);
        open = true;
      } else stream.write(`${text}\n`);
    },
    end() {
      if (open) stream.write("\n");
      open = false;
    },
  };
}

function summaryLine(report: EvalReport): string {
  const m = report.metrics;
  const parts: string[] = [];
  if (m.cider !== undefined) parts.push(`CIDEr ${m.cider.toFixed(2)}`);
  if (m.bleu !== undefined) parts.push(`BLEU-4 ${(m.bleu[3] ?? 0).toFixed(2)}`);
  if (m.vqaAccuracy !== undefined) parts.push(`VQA accuracy ${m.vqaAccuracy.toFixed(2)}`);
  if (m.rocAuc !== undefined) parts.push(`ROC-AUC ${m.rocAuc.toFixed(2)}`);
  if (m.accuracy !== undefined) parts.push(`accuracy ${m.accuracy.toFixed(2)}`);
  return `${report.task} ${report.shots}-shot, seed ${report.seed}, ${report.numSamples} items: ${parts.join(", ")}`;
}

/**
 * Runs `flamingo eval` with `argv` (the arguments after `eval`). Returns the exit status: 0 on
 * success, 1 when the evaluation fails, 2 for bad arguments; errors are printed with their code.
 */
export async function runEvalCommand(
  argv: readonly string[],
  io: EvalCommandIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        task: { type: "string" },
        data: { type: "string" },
        model: { type: "string" },
        shots: { type: "string" },
        seed: { type: "string" },
        "num-samples": { type: "string" },
        "query-set-size": { type: "string" },
        "batch-size": { type: "string" },
        "num-beams": { type: "string" },
        "max-new-tokens": { type: "string" },
        "vqa-evaluator": { type: "string" },
        output: { type: "string" },
        annotations: { type: "string" },
        images: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    io.stderr.write(`flamingo eval: ${(error as Error).message}\nRun "flamingo eval --help" for the options.\n`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(EVAL_USAGE);
    return 0;
  }
  let model: Flamingo | undefined;
  try {
    const task = values.task as string | undefined;
    if (task === undefined || !(EVAL_TASKS as readonly string[]).includes(task)) {
      throw usageError(
        task === undefined ? "--task is required" : `unknown task "${task}": use one of ${EVAL_TASKS.join(", ")}`,
      );
    }
    if (typeof values.data !== "string") throw usageError("--data is required (the dataset folder)");
    if (typeof values.model !== "string") throw usageError("--model is required (a model folder or release id)");
    const evaluator = values["vqa-evaluator"] as string | undefined;
    if (evaluator !== undefined && !["openflamingo", "official", "official-2021"].includes(evaluator)) {
      throw usageError(`--vqa-evaluator must be openflamingo, official or official-2021, got "${evaluator}"`);
    }
    const shots = integer("shots", values.shots as string | undefined, 0) ?? 0;
    const seed = integer("seed", values.seed as string | undefined, 0) ?? 42;
    const output = (values.output as string | undefined) ?? `eval-${task}-${shots}shot-seed${seed}`;
    const options = {
      shots,
      seed,
      numSamples: integer("num-samples", values["num-samples"] as string | undefined, 1),
      querySetSize: integer("query-set-size", values["query-set-size"] as string | undefined, 1),
      batchSize: integer("batch-size", values["batch-size"] as string | undefined, 1),
      numBeams: integer("num-beams", values["num-beams"] as string | undefined, 1),
      maxNewTokens: integer("max-new-tokens", values["max-new-tokens"] as string | undefined, 1),
    };
    const data = await loadEvalData(task as EvalTask, values.data, {
      ...(typeof values.annotations === "string" ? { annotations: values.annotations } : {}),
      ...(typeof values.images === "string" ? { images: values.images } : {}),
    });
    model = await Flamingo.fromPretrained(values.model);
    const bar = values.json ? undefined : progressBar(io.stderr, `${task} ${shots}-shot`);
    const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    let report: EvalReport;
    try {
      report = await evaluate({
        model,
        task: task as EvalTask,
        data,
        output,
        ...defined,
        ...(evaluator ? { vqaEvaluator: evaluator as "openflamingo" } : {}),
        ...(bar ? { onProgress: (p: EvaluateProgress) => bar.update(p) } : {}),
      });
    } finally {
      bar?.end();
    }
    const { predictions: _, ...summary } = report;
    if (values.json) io.stdout.write(`${JSON.stringify({ ...summary, output }, null, 2)}\n`);
    else io.stdout.write(`${summaryLine(report)}\nwrote ${join(output, "report.json")}\n`);
    return 0;
  } catch (error) {
    if (error instanceof FlamingoError) {
      io.stderr.write(`flamingo eval: ${error.message} [${error.code}]\n`);
      return error.code === "ERR_USAGE" ? 2 : 1;
    }
    throw error;
  } finally {
    await model?.dispose();
  }
}
