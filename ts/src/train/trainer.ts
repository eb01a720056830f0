/**
 * `Trainer`: the reference trainer's step (open_flamingo/train `train_one_epoch`, spec §7.3)
 * over native batches, with its state saved and restored exactly. The numeric work, the
 * model and the optimizer state live in the engine, on the trainer's own thread.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "../errors.js";
import { type LayerPlan, planLayers } from "../layers.js";
import { Flamingo } from "../model.js";
import type { NativeLoadOptions } from "../native.js";
import { type LoadOptions, LoadOptionsSchema } from "../options.js";
import { type FloatTensor, type ForwardInput, ForwardInputSchema, toFloat32, toInt32 } from "../tensor.js";
import type { Batch } from "./data.js";
import type { NativeBatch, NativeNamedTensor, NativeStepStats, NativeTrainer, NativeTrainerInfo } from "./native.js";
import { trainBinding } from "./native.js";
import {
  type DataPosition,
  type ResolvedTrainerOptions,
  type TrainerOptions,
  TrainerOptionsSchema,
} from "./options.js";

type Kind = "pairs" | "documents";

/** The loss of one part (one batch) of a step. */
export interface PartLoss {
  /** Which micro-batch of the step. */
  microBatch: number;
  dataset: Kind;
  /** Mean cross-entropy over the batch's targets, unweighted. */
  loss: number;
  lossMultiplier: number;
}

/** What one call of {@link Trainer.step} did. */
export interface StepResult {
  /** Whether an optimizer step was taken (`false` while micro-batches accumulate, and for a skipped step). */
  stepped: boolean;
  /** Optimizer steps done so far. */
  step: number;
  /** The objective: Σ loss × multiplier / accumulation steps. NaN until a step is taken, and for a skipped one. */
  loss: number;
  /** Mean unweighted loss of each dataset in the step. */
  losses: Partial<Record<Kind, number>>;
  parts: PartLoss[];
  /** Global gradient norm before clipping. NaN when no step was taken. */
  gradNorm: number;
  /** Learning rate of the step. */
  lr: number;
  /** The step was dropped under `nanPolicy: "skip"`. */
  skipped: boolean;
  skipReason?: string;
  /** Sequences in the step. */
  samples: number;
  /** Wall time of the engine's step. */
  seconds: number;
  /** Micro-batches waiting for the next optimizer step. */
  pendingMicroBatches: number;
}

/** Raw gradients of one loss: what {@link Trainer.gradients} returns. */
export interface Gradients {
  /** The loss the gradients are of (mean shifted cross-entropy). */
  loss: number;
  /**
   * Every trainable tensor's gradient, by OpenFlamingo checkpoint name (`perceiver.*`,
   * `lang_encoder.<layers>.<i>.gated_cross_attn_layer.*`), before row masking and clipping.
   */
  byName: Map<string, FloatTensor>;
  /**
   * Where the trainable embedding rows' gradient is (`[rows, width]`, the raw rows of the
   * input-embedding gradient; with tied embeddings it includes the output head's share),
   * and the token id of each row. Absent when `freezeLmEmbeddings`.
   */
  embeddingRows?: { name: string; tokenIds: number[] };
}

/** Digests of the frozen backbones (see {@link Trainer.frozenFingerprint}). */
export interface FrozenFingerprint {
  /** The vision tower's patch tokens for a fixed image. */
  visionTower: string;
  /** The LM alone (every decoder layer and the head, no cross-attention) on fixed token ids. */
  languageModel: string;
  /** The frozen input-embedding table. */
  embeddingTable: string;
}

function isBatch(input: ForwardInput | Batch): input is Batch {
  return typeof (input as Batch).inputIds === "function";
}

function byName(tensors: NativeNamedTensor[]): Map<string, FloatTensor> {
  return new Map(tensors.map((t) => [t.name, t.tensor]));
}

/** What the training state stores beside the engine's state, to resume a run exactly. */
interface SavedRun {
  format: "flamingo-vlm/train-run";
  version: 1;
  /** Position after the last batch of each dataset that went into a taken step. */
  loaders: Partial<Record<Kind, DataPosition>>;
  /** As decimal strings (JavaScript's shortest round-trip form): JSON numbers may not come back bit-exact. */
  lossMultipliers: { pairs: string; documents: string };
  seed: number;
}

function nan(v: number | null | undefined): number {
  return v ?? Number.NaN;
}

function engineConfig(o: ResolvedTrainerOptions): Record<string, unknown> {
  return {
    optimizer: { lr: o.lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.weightDecay },
    schedule: {
      kind: o.schedule.type,
      warmupSteps: o.schedule.warmupSteps,
      totalSteps: o.schedule.totalSteps ?? null,
      numCycles: o.schedule.numCycles,
    },
    maxGradNorm: o.clipGradNorm,
    clipMode: o.clipMode,
    freezeLmEmbeddings: o.freezeLmEmbeddings,
    nonFinite: o.nanPolicy,
    gradientAccumulationSteps: o.gradientAccumulationSteps,
  };
}

/** The binding's load options for `o` with its layer plan. */
export function nativeLoadOptions(o: LoadOptions, plan: LayerPlan): NativeLoadOptions {
  if (o.tokens === undefined) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      "training load options need `tokens` ({ media, endOfChunk }); or pass a model loaded with Flamingo.load / Flamingo.fromPretrained, which resolves them from its tokenizer",
    );
  }
  return {
    visionDir: o.vision,
    lmDir: o.lm,
    checkpoint: o.checkpoint,
    mediaTokenId: o.tokens.media,
    endOfChunkTokenId: o.tokens.endOfChunk,
    crossAttnLayers: plan.crossAttentionLayers,
    decoderLayersPath: plan.decoderLayersPath,
    perceiver: o.perceiver,
    crossAttn: o.crossAttentionBlock,
    visionPostLayernorm: o.visionPostLayernorm,
    vocabSize: o.vocabSize,
    strict: o.strict,
    initSeed: o.seed,
  };
}

/** A model to train: a loaded `Flamingo` (which the trainer takes over) or its load options. */
export type TrainableModel = Flamingo | LoadOptions;

async function takeModel(model: TrainableModel): Promise<{ load: LoadOptions; plan: LayerPlan }> {
  if (model instanceof Flamingo) {
    if (model.disposed) {
      throw new FlamingoError(ErrorCode.Disposed, "the model has been disposed (is another trainer using it?)");
    }
    const taken = { load: model.loadOptions, plan: model.plan };
    // The trainer loads its own copy on its thread; the caller's copy is freed first so the
    // two never sit in memory together.
    await model.dispose();
    return taken;
  }
  const parsed = LoadOptionsSchema.safeParse(model);
  if (!parsed.success) throw invalidInput("model load options", parsed.error);
  const load = parsed.data;
  return { load, plan: await planLayers(load.lm, load.crossAttention, load.decoderLayersPath) };
}

/**
 * Trains a model's Perceiver resampler and gated cross-attention blocks (and the `<image>`
 * and `<|endofchunk|>` embedding rows unless `freezeLmEmbeddings`), as the reference does.
 *
 * ```ts
 * const trainer = await Trainer.create(model, { lr: 1e-4 });
 * for await (const batch of dataLoader({ kind: "pairs", manifest, model: trainer.loadOptions })) {
 *   const { loss } = await trainer.step(batch);
 * }
 * await trainer.save("run/");
 * ```
 */
export class Trainer implements AsyncDisposable {
  readonly #native: NativeTrainer;
  readonly #options: ResolvedTrainerOptions;
  /** The options of the model the trainer loaded (use them to open loaders, or to reload the export). */
  readonly loadOptions: LoadOptions;
  /** The model's layer plan. */
  readonly plan: LayerPlan;
  #step: number;
  #pending: Batch[][] = [];
  #trained: Partial<Record<Kind, DataPosition>>;
  readonly #resumed: SavedRun | undefined;

  private constructor(
    native: NativeTrainer,
    options: ResolvedTrainerOptions,
    load: LoadOptions,
    plan: LayerPlan,
    resumed: SavedRun | undefined,
  ) {
    this.#native = native;
    this.#options = options;
    this.loadOptions = load;
    this.plan = plan;
    this.#step = native.info.step;
    this.#resumed = resumed;
    this.#trained = { ...(resumed?.loaders ?? {}) };
  }

  /**
   * Sets up training of `model`. A loaded `Flamingo` is taken over: it is disposed, and the
   * trainer loads its own copy (from `model.loadOptions`) on its thread.
   */
  static async create(model: TrainableModel, options: TrainerOptions = {}): Promise<Trainer> {
    const parsed = TrainerOptionsSchema.safeParse(options);
    if (!parsed.success) throw invalidInput("trainer options", parsed.error);
    const o = parsed.data;
    const { load, plan } = await takeModel(model);
    let native: NativeTrainer;
    try {
      native = await trainBinding().Trainer.create({ model: nativeLoadOptions(load, plan), config: engineConfig(o) });
    } catch (error) {
      throw fromNative(error);
    }
    return new Trainer(native, o, load, plan, undefined);
  }

  /**
   * Continues the run saved in `dir` by {@link save}: weights, AdamW moments, the schedule,
   * the configuration (which replaces the defaults), and the data positions (see
   * {@link dataPosition}). The following steps are bit-identical to an uninterrupted run.
   */
  static async resume(model: TrainableModel, dir: string): Promise<Trainer> {
    if (!existsSync(join(dir, "trainer_state.json"))) {
      throw new FlamingoError(
        ErrorCode.Io,
        `${join(dir, "trainer_state.json")}: no training state here (a folder written by trainer.save holds trainer_state.json)`,
      );
    }
    const { load, plan } = await takeModel(model);
    let native: NativeTrainer;
    try {
      native = await trainBinding().Trainer.create({
        model: nativeLoadOptions(load, plan),
        config: {},
        resumeFrom: dir,
      });
    } catch (error) {
      throw fromNative(error);
    }
    const saved = native.info.dataPosition as SavedRun | null;
    const run = saved !== null && saved?.format === "flamingo-vlm/train-run" ? saved : undefined;
    const options = TrainerOptionsSchema.parse(optionsFromEngine(native.info, run));
    return new Trainer(native, options, load, plan, run);
  }

  /** Optimizer steps taken so far (also those before a resume). */
  get stepCount(): number {
    return this.#step;
  }

  /** The options in effect, defaults filled in. */
  get options(): ResolvedTrainerOptions {
    return this.#options;
  }

  /** Trainable scalars: Perceiver, cross-attention blocks, and the two embedding rows. */
  get parameterCount(): number {
    return this.#native.info.parameterCount;
  }

  /** The model's sizes (image size, vocabulary, …). */
  get modelSummary(): NativeTrainerInfo["model"] {
    return this.#native.info.model;
  }

  /**
   * Where each dataset stood after the last batch that went into a taken step: pass
   * `dataPosition.pairs` as a loader's `position` to continue a resumed run exactly.
   */
  get dataPosition(): Partial<Record<Kind, DataPosition>> {
    return { ...this.#trained };
  }

  /** Whether this trainer continues a saved run. */
  get resumed(): boolean {
    return this.#native.info.resumed;
  }

  /**
   * Adds one micro-batch — a batch, or one batch of each dataset (`[pairs, documents]`, the
   * reference's step) — and takes an optimizer step once `gradientAccumulationSteps`
   * micro-batches are in: forward, backward of `loss / accumulation × multiplier`, embedding
   * row mask, clipping, AdamW, the schedule.
   */
  async step(batch: Batch | Batch[]): Promise<StepResult> {
    const parts = Array.isArray(batch) ? batch : [batch];
    if (parts.length === 0) {
      throw new FlamingoError(ErrorCode.InvalidInput, "step needs at least one batch");
    }
    this.#pending.push(parts);
    if (this.#pending.length < this.#options.gradientAccumulationSteps) {
      return this.#notStepped();
    }
    return this.#run();
  }

  /**
   * Takes the optimizer step over the micro-batches still waiting (an epoch's shorter last
   * group; losses are still divided by `gradientAccumulationSteps`, as in the reference).
   * Returns `undefined` when none wait.
   */
  async flush(): Promise<StepResult | undefined> {
    if (this.#pending.length === 0) return undefined;
    return this.#run();
  }

  #notStepped(): StepResult {
    return {
      stepped: false,
      step: this.#step,
      loss: Number.NaN,
      losses: {},
      parts: [],
      gradNorm: Number.NaN,
      lr: Number.NaN,
      skipped: false,
      samples: 0,
      seconds: 0,
      pendingMicroBatches: this.#pending.length,
    };
  }

  async #run(): Promise<StepResult> {
    const micro = this.#pending;
    this.#pending = [];
    const batches: Batch[] = [];
    const index: number[] = [];
    const weights: number[] = [];
    micro.forEach((parts, i) => {
      for (const b of parts) {
        batches.push(b);
        index.push(i);
        weights.push(this.#options.lossMultipliers[b.kind]);
      }
    });
    let stats: NativeStepStats;
    try {
      stats = await this.#native.step(batches as NativeBatch[], index, weights);
    } catch (error) {
      throw fromNative(error);
    }
    // Both a taken and a skipped step consume their batches: a resume continues after them.
    for (const b of batches) this.#trained[b.kind] = b.position;
    this.#step = stats.step;
    const parts: PartLoss[] = stats.parts.map((p) => ({
      microBatch: p.microBatch,
      dataset: p.dataset as Kind,
      loss: nan(p.loss),
      lossMultiplier: p.lossMultiplier,
    }));
    const losses: Partial<Record<Kind, number>> = {};
    for (const kind of ["pairs", "documents"] as const) {
      const mine = parts.filter((p) => p.dataset === kind);
      if (mine.length > 0) losses[kind] = mine.reduce((s, p) => s + p.loss, 0) / mine.length;
    }
    return {
      stepped: !stats.skipped,
      step: stats.step,
      loss: nan(stats.loss),
      losses,
      parts,
      gradNorm: nan(stats.gradNorm),
      lr: stats.lr,
      skipped: stats.skipped,
      ...(stats.skipReason ? { skipReason: stats.skipReason } : {}),
      samples: stats.samples,
      seconds: stats.seconds,
      pendingMicroBatches: 0,
    };
  }

  /**
   * The loss on `input` (labels required) and the raw gradient of every trainable tensor,
   * with the current weights: one forward and backward, nothing updated. For checking
   * gradients against another implementation, or inspecting which parts learn.
   */
  async gradients(input: ForwardInput | Batch): Promise<Gradients> {
    let native: Parameters<NativeTrainer["gradients"]>[0];
    if (isBatch(input)) {
      native = {
        visionX: input.visionX(),
        langX: input.inputIds(),
        attentionMask: input.attentionMask(),
        labels: input.labels(),
      };
    } else {
      const parsed = ForwardInputSchema.safeParse(input);
      if (!parsed.success) throw invalidInput("gradient input", parsed.error);
      const i = parsed.data;
      if (!i.labels) {
        throw new FlamingoError(ErrorCode.InvalidInput, "gradients need labels (targets, -100 where ignored)");
      }
      native = {
        visionX: toFloat32(i.visionX),
        langX: toInt32(i.langX),
        attentionMask: i.attentionMask && toInt32(i.attentionMask),
        labels: toInt32(i.labels),
        allowExcessMediaTokens: i.allowExcessMediaTokens,
      };
    }
    try {
      const out = await this.#native.gradients(native);
      const ids = out.embeddingRowIds;
      return {
        loss: out.loss,
        byName: byName(out.gradients),
        ...(ids ? { embeddingRows: { name: out.embeddingRowsName, tokenIds: ids } } : {}),
      };
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** The trainable tensors' current values (copies), by the names {@link gradients} uses. */
  async parameters(): Promise<Map<string, FloatTensor>> {
    try {
      return byName(await this.#native.parameters());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * Digests of what training must leave alone — the vision tower, the LM's layers and head,
   * and the frozen embedding table: equal digests before and after steps mean the backbones
   * did not change by a bit. Costs a small forward and a pass over the embedding table.
   */
  async frozenFingerprint(): Promise<FrozenFingerprint> {
    try {
      return await this.#native.frozenFingerprint();
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * Saves the training state into the folder `dir` (created if missing), crash-safely: a
   * failure at any moment leaves the previous state there loadable. Micro-batches waiting
   * for an accumulation step are not part of it; a resumed run reads them again.
   */
  async save(dir: string): Promise<void> {
    const run: SavedRun = {
      format: "flamingo-vlm/train-run",
      version: 1,
      loaders: this.#trained,
      lossMultipliers: {
        pairs: String(this.#options.lossMultipliers.pairs),
        documents: String(this.#options.lossMultipliers.documents),
      },
      seed: this.#options.seed,
    };
    try {
      await this.#native.save(dir, run);
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * Writes the trained weights as an OpenFlamingo checkpoint (safetensors): load it with
   * `Flamingo.load({ ...trainer.loadOptions, checkpoint: path })`.
   */
  async export(path: string): Promise<void> {
    try {
      await this.#native.export(path);
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Whether {@link dispose} has been called. */
  get disposed(): boolean {
    return this.#native.disposed;
  }

  /** Frees the model and the optimizer state after the calls already made. Idempotent. */
  async dispose(): Promise<void> {
    this.#pending = [];
    try {
      await this.#native.dispose();
    } catch (error) {
      throw fromNative(error);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** The options a resumed engine state stands for (the engine's configuration is authoritative). */
function optionsFromEngine(info: NativeTrainerInfo, run: SavedRun | undefined): TrainerOptions {
  const c = info.config as {
    optimizer: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number };
    schedule: {
      kind: "constant" | "linear" | "cosine";
      warmupSteps: number;
      totalSteps: number | null;
      numCycles: number;
    };
    maxGradNorm: number | null;
    clipMode: "everyMicroBatch" | "beforeStep";
    freezeLmEmbeddings: boolean;
    nonFinite: "error" | "skip";
    gradientAccumulationSteps: number | null;
  };
  return {
    lr: c.optimizer.lr,
    betas: [c.optimizer.beta1, c.optimizer.beta2],
    eps: c.optimizer.eps,
    weightDecay: c.optimizer.weightDecay,
    schedule: {
      type: c.schedule.kind,
      warmupSteps: c.schedule.warmupSteps,
      ...(c.schedule.totalSteps === null ? {} : { totalSteps: c.schedule.totalSteps }),
      numCycles: c.schedule.numCycles,
    },
    clipGradNorm: c.maxGradNorm,
    clipMode: c.clipMode,
    gradientAccumulationSteps: c.gradientAccumulationSteps ?? 1,
    freezeLmEmbeddings: c.freezeLmEmbeddings,
    nanPolicy: c.nonFinite,
    ...(run
      ? {
          lossMultipliers: {
            pairs: Number(run.lossMultipliers.pairs),
            documents: Number(run.lossMultipliers.documents),
          },
          seed: run.seed,
        }
      : {}),
  };
}
