/**
 * `train(config)`: the ready loop. Opens the data, creates (or resumes) the trainer, steps
 * until the step budget or the data runs out, writes per-step metrics as JSON lines, draws a
 * progress line, saves the training state periodically and at the end, and exports the
 * trained weights. An aborted signal stops it after the current step with the state saved.
 */

import { existsSync } from "node:fs";
import { appendFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

import { ErrorCode, FlamingoError, invalidInput } from "../errors.js";
import { Flamingo } from "../model.js";
import { type LoadOptions, LoadOptionsSchema } from "../options.js";
import { type Batch, type DataLoader, dataLoader, type SkipStats, visionImageSize } from "./data.js";
import { type DataPosition, type TrainConfig, TrainConfigSchema, type TrainProgress } from "./options.js";
import { renderTrainProgress } from "./progress.js";
import { type StepResult, Trainer } from "./trainer.js";

type Kind = "pairs" | "documents";
const KINDS = ["pairs", "documents"] as const;

/** What a {@link train} run did. */
export interface TrainResult {
  /** Optimizer steps of the whole run, also those before a resume. */
  steps: number;
  /** Steps taken by this call. */
  stepsThisRun: number;
  /** The objective of the last step (NaN if none, or skipped). */
  lastLoss: number;
  /** Samples trained on by this call. */
  samples: number;
  /** Wall time of this call. */
  seconds: number;
  /** Why it stopped: the step budget, the end of the data, or the signal. */
  stopReason: "steps" | "data" | "aborted";
  /** The step this call resumed from, if it resumed. */
  resumedFrom: number | undefined;
  /** The training-state folder (always saved before returning). */
  stateDir: string;
  /** The exported checkpoint (not written when aborted). */
  exportPath: string | undefined;
  /** The metrics file. */
  metricsPath: string | undefined;
  /** Samples each dataset skipped, by reason (counted over the whole run). */
  skipped: Partial<Record<Kind, SkipStats>>;
}

function estimateSteps(
  lengths: Map<Kind, { samples: number; batchSize: number; epochs: number; dropLast: boolean }>,
  accumulation: number,
): number | undefined {
  let micro = Number.POSITIVE_INFINITY;
  for (const l of lengths.values()) {
    const perEpoch = l.dropLast ? Math.floor(l.samples / l.batchSize) : Math.ceil(l.samples / l.batchSize);
    micro = Math.min(micro, perEpoch * l.epochs);
  }
  return Number.isFinite(micro) ? Math.ceil(micro / accumulation) : undefined;
}

/**
 * Trains a model on image–caption pairs and/or interleaved documents with the reference
 * trainer's recipe, saving a resumable state in `output.dir`.
 *
 * ```ts
 * await train({
 *   model: { vision, lm, crossAttention: { everyNLayers: 1 }, tokens: { media: 50278, endOfChunk: 50277 } },
 *   data: { pairs: { manifest: "pairs.jsonl", batchSize: 8 } },
 *   trainer: { lr: 1e-4, schedule: { type: "cosine", warmupSteps: 100 } },
 *   steps: 1000,
 *   output: { dir: "runs/a", saveEvery: 100 },
 * });
 * ```
 */
export async function train(config: TrainConfig): Promise<TrainResult> {
  const parsed = TrainConfigSchema.safeParse(config);
  if (!parsed.success) throw invalidInput("train config", parsed.error);
  const c = parsed.data;
  const kinds = KINDS.filter((k) => c.data[k] !== undefined);
  if (kinds.length === 0) {
    throw new FlamingoError(ErrorCode.InvalidInput, "train config: `data` needs `pairs` or `documents` (or both)");
  }
  const load: LoadOptions = c.model instanceof Flamingo ? c.model.loadOptions : LoadOptionsSchema.parse(c.model);
  const dir = c.output.dir;
  const hasState = existsSync(join(dir, "trainer_state.json"));
  if (c.resume === true && !hasState) {
    throw new FlamingoError(ErrorCode.Io, `resume: true, but ${dir} holds no training state (trainer_state.json)`);
  }
  const resume = c.resume !== false && hasState;
  const exportPath = c.output.export === null ? undefined : (c.output.export ?? join(dir, "checkpoint.safetensors"));
  const metricsPath = c.output.metrics === null ? undefined : (c.output.metrics ?? join(dir, "metrics.jsonl"));
  await mkdir(dir, { recursive: true });

  const imageSize = await visionImageSize(load.vision);
  const tokenizer = c.tokenizer ?? load.lm;
  const loaders = new Map<Kind, DataLoader>();
  let trainer: Trainer | undefined;
  const openLoaders = async (seed: number, positions: Partial<Record<Kind, DataPosition>>) => {
    for (const kind of kinds) {
      const source = c.data[kind];
      if (source === undefined) continue;
      // With a step budget the data repeats until it is spent, unless epochs are given.
      const epochs = source.epochs ?? (c.steps === undefined ? 1 : Number.POSITIVE_INFINITY);
      const loader = dataLoader({ ...source, kind, tokenizer, imageSize, seed, epochs, position: positions[kind] });
      loaders.set(kind, loader);
      await loader.open();
    }
  };
  const close = async () => {
    for (const l of loaders.values()) await l.close();
    await trainer?.dispose();
  };

  try {
    let totalSteps = c.steps;
    if (resume) {
      trainer = await Trainer.resume(c.model as Flamingo | LoadOptions, dir);
      await openLoaders(trainer.options.seed, trainer.dataPosition);
    } else {
      const options = { ...(c.trainer ?? {}) };
      await openLoaders(options.seed ?? 42, {});
      if (totalSteps === undefined) {
        const lengths = new Map<Kind, { samples: number; batchSize: number; epochs: number; dropLast: boolean }>();
        for (const [kind, loader] of loaders) {
          const s = await loader.settings();
          lengths.set(kind, {
            samples: await loader.length(),
            batchSize: s.batchSize as number,
            epochs: (s.epochs as number | null) ?? Number.POSITIVE_INFINITY,
            dropLast: s.dropLast as boolean,
          });
        }
        totalSteps = estimateSteps(lengths, options.gradientAccumulationSteps ?? 1);
      }
      const schedule = options.schedule;
      if (
        schedule &&
        schedule.type !== undefined &&
        schedule.type !== "constant" &&
        schedule.totalSteps === undefined
      ) {
        if (totalSteps === undefined) {
          throw new FlamingoError(
            ErrorCode.InvalidInput,
            `the ${schedule.type} schedule needs a run length: set \`steps\`, or finite \`epochs\` for every dataset`,
          );
        }
        options.schedule = { ...schedule, totalSteps };
      }
      trainer = await Trainer.create(c.model as Flamingo | LoadOptions, options);
    }
    if (totalSteps === undefined && trainer.options.schedule.totalSteps !== undefined) {
      totalSteps = trainer.options.schedule.totalSteps;
    }
    const resumedFrom = resume ? trainer.stepCount : undefined;

    const live = c.progress !== false && process.stderr.isTTY === true;
    const lines = c.progress !== false && !live && c.logEvery > 0;
    const started = performance.now();
    let stepsThisRun = 0;
    let samples = 0;
    let lastLoss = Number.NaN;
    let stopReason: TrainResult["stopReason"] = "data";

    const report = async (r: StepResult) => {
      stepsThisRun += 1;
      samples += r.samples;
      lastLoss = r.loss;
      const elapsed = (performance.now() - started) / 1000;
      const step = trainer?.stepCount ?? r.step;
      const progress: TrainProgress = {
        step,
        totalSteps,
        loss: r.loss,
        losses: r.losses,
        lr: r.lr,
        gradNorm: r.gradNorm,
        skipped: r.skipped,
        samplesPerSecond: elapsed > 0 ? samples / elapsed : 0,
        etaSeconds: totalSteps === undefined ? undefined : Math.max(0, totalSteps - step) * (elapsed / stepsThisRun),
        elapsedSeconds: elapsed,
      };
      if (metricsPath !== undefined) {
        const record = {
          time: new Date().toISOString(),
          step,
          loss: r.loss,
          losses: r.losses,
          lr: r.lr,
          gradNorm: r.gradNorm,
          skipped: r.skipped,
          ...(r.skipReason ? { skipReason: r.skipReason } : {}),
          samples: r.samples,
          stepSeconds: r.seconds,
          samplesPerSecond: progress.samplesPerSecond,
          epochs: Object.fromEntries([...loaders].map(([k, l]) => [k, l.position?.epoch ?? 0])),
        };
        await appendFile(metricsPath, `${JSON.stringify(record)}\n`);
      }
      if (live) process.stderr.write(`\r${renderTrainProgress(progress)}\u001b[K`);
      else if (lines && (step % c.logEvery === 0 || step === totalSteps)) {
        process.stderr.write(`${renderTrainProgress(progress)}\n`);
      }
      c.onStep?.(progress);
    };

    for (;;) {
      if (c.steps !== undefined && trainer.stepCount >= c.steps) {
        stopReason = "steps";
        break;
      }
      const parts: Batch[] = [];
      for (const loader of loaders.values()) {
        const batch = await loader.next();
        if (batch === undefined) break;
        parts.push(batch);
      }
      if (parts.length < loaders.size) {
        const last = await trainer.flush();
        if (last !== undefined) await report(last);
        stopReason = "data";
        break;
      }
      const r = await trainer.step(parts);
      if (r.pendingMicroBatches > 0) continue;
      await report(r);
      if (c.output.saveEvery > 0 && trainer.stepCount % c.output.saveEvery === 0) await trainer.save(dir);
      if (c.signal?.aborted) {
        stopReason = "aborted";
        break;
      }
    }
    if (live) process.stderr.write("\n");
    await trainer.save(dir);
    if (stopReason !== "aborted" && exportPath !== undefined) await trainer.export(exportPath);
    const skipped: Partial<Record<Kind, SkipStats>> = {};
    for (const [kind, loader] of loaders) {
      skipped[kind] = trainer.dataPosition[kind]?.skipped ?? loader.skipped;
    }
    return {
      steps: trainer.stepCount,
      stepsThisRun,
      lastLoss,
      samples,
      seconds: (performance.now() - started) / 1000,
      stopReason,
      resumedFrom,
      stateDir: dir,
      exportPath: stopReason === "aborted" ? undefined : exportPath,
      metricsPath,
      skipped,
    };
  } finally {
    await close();
  }
}
