/**
 * Options of training: the trainer (optimizer, schedule, clipping, loss weights), the data
 * loaders, and the ready loop `train()`. Each schema is the single source of its type
 * (`z.infer`); the defaults named in the docs are the reference trainer's (open_flamingo/train,
 * spec §7) unless said otherwise.
 */

import { z } from "zod";

import { Flamingo } from "../model.js";
import { type LoadOptions, LoadOptionsSchema } from "../options.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();
const finite = z.number().finite();
const probability = z.number().min(0).max(1);
const seed = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

// ---------------------------------------------------------------------------------------
// Trainer
// ---------------------------------------------------------------------------------------

const scheduleShape = {
  /**
   * `constant` (the reference's default and the releases' choice), `linear` (decay to 0 at
   * `totalSteps`) or `cosine` (half a cosine down to 0 at `totalSteps`), each after a linear
   * warmup from 0. Default: `constant`.
   */
  type: z.enum(["constant", "linear", "cosine"]).default("constant"),
  /** Optimizer steps of linear warmup from 0 to `lr`. Default: 0 (the releases: 1875). */
  warmupSteps: nonNegativeInt.default(0),
  /**
   * Optimizer steps in the whole run; required by `linear` and `cosine` (`train()` fills it
   * in from its step count). Default: none.
   */
  totalSteps: positiveInt.optional(),
  /** Cosine periods over the decay (HF's `num_cycles`). Default: 0.5. */
  numCycles: finite.default(0.5),
};
/** The learning-rate schedule (HF transformers' `get_*_schedule_with_warmup`). */
export const ScheduleOptionsSchema: Strict<typeof scheduleShape> = z.strictObject(scheduleShape);
export type ScheduleOptions = z.input<typeof ScheduleOptionsSchema>;

const lossMultipliersShape = {
  /** Weight of the image–caption loss. Default: 1 (the releases: 0.2). */
  pairs: finite.default(1),
  /** Weight of the interleaved-document loss. Default: 1. */
  documents: finite.default(1),
};
/** Weights of each dataset's loss in the objective (`--loss_multiplier_laion/_mmc4`). */
export const LossMultipliersSchema: Strict<typeof lossMultipliersShape> = z.strictObject(lossMultipliersShape);
export type LossMultipliers = z.input<typeof LossMultipliersSchema>;

const trainerShape = {
  /** Peak learning rate of AdamW (the schedule scales it). Default: 1e-4. */
  lr: finite.nonnegative().default(1e-4),
  /** AdamW's `(β1, β2)`. Default: `[0.9, 0.999]`. */
  betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.999]),
  /** AdamW's ε. Default: 1e-8. */
  eps: finite.nonnegative().default(1e-8),
  /**
   * Decoupled weight decay of the gated cross-attention parameters (everything else —
   * perceiver, embedding rows — gets none, as in the reference). Default: 0.1.
   */
  weightDecay: finite.nonnegative().default(0.1),
  /** The learning-rate schedule. Default: constant, no warmup. */
  schedule: ScheduleOptionsSchema.default({ type: "constant", warmupSteps: 0, numCycles: 0.5 }),
  /** Clip the global gradient norm to this; `null` disables clipping. Default: 1.0. */
  clipGradNorm: z.number().positive().finite().nullable().default(1),
  /**
   * When to clip: after every micro-batch on the gradients accumulated so far (the
   * reference) or once before the optimizer step. Default: `everyMicroBatch`.
   */
  clipMode: z.enum(["everyMicroBatch", "beforeStep"]).default("everyMicroBatch"),
  /**
   * Micro-batches per optimizer step. Each loss is divided by this, also in a shorter last
   * group (`flush()`), as the reference does. Default: 1.
   */
  gradientAccumulationSteps: positiveInt.default(1),
  /** Weights of each dataset's loss. Default: 1 each. */
  lossMultipliers: LossMultipliersSchema.default({ pairs: 1, documents: 1 }),
  /**
   * Keep every embedding row frozen (`--freeze_lm_embeddings`, used for the 4B releases).
   * Otherwise the `<image>` and `<|endofchunk|>` rows learn. Default: `false`.
   */
  freezeLmEmbeddings: z.boolean().default(false),
  /**
   * A NaN or infinite loss or gradient norm, or a batch with no target token: `error`
   * rejects the step with nothing updated; `skip` drops the step's gradients and counts it
   * (the reference skips all-masked MMC4 batches). Default: `error`.
   */
  nanPolicy: z.enum(["error", "skip"]).default("error"),
  /**
   * Seed of the run: the default seed of the data loaders `train()` opens (their order and
   * augmentations). Default: 42 (the reference's).
   */
  seed: seed.default(42),
};
/** Options of {@link Trainer.create}. */
export const TrainerOptionsSchema: Strict<typeof trainerShape> = z.strictObject(trainerShape);
export type TrainerOptions = z.input<typeof TrainerOptionsSchema>;
export type ResolvedTrainerOptions = z.output<typeof TrainerOptionsSchema>;

// ---------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------

const paths = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

/** The data position a batch reports (opaque; pass it back to resume). */
export const DataPositionSchema = z.looseObject({
  epoch: nonNegativeInt,
  index: nonNegativeInt,
  batches: nonNegativeInt,
  samples: nonNegativeInt,
  skipped: z.object({ counts: z.record(z.string(), nonNegativeInt), examples: z.array(z.string()) }),
  fingerprint: z.string(),
});
export type DataPosition = z.infer<typeof DataPositionSchema>;

const dataSourceShape = {
  /** JSONL manifest(s): one sample per line; image paths relative to the manifest's folder. */
  manifest: paths.optional(),
  /** webdataset `.tar` shard(s): members grouped by key (`000001.jpg` + `000001.txt`). */
  shards: paths.optional(),
  /** Samples per batch. Default: the releases' per-GPU batch, pairs 64, documents 32. */
  batchSize: positiveInt.optional(),
  /** Visit the samples in a fresh seeded permutation each epoch. Default: `true`. */
  shuffle: z.boolean().optional(),
  /**
   * Passes over the data; `Infinity` for an endless stream. Default: 1 (in `train()` with
   * `steps`: as many as the steps need).
   */
  epochs: z.union([positiveInt, z.literal(Number.POSITIVE_INFINITY)]).optional(),
  /** Drop an epoch's last, incomplete batch (the reference batches with `partial=False`). Default: `true`. */
  dropLast: z.boolean().optional(),
  /**
   * Token cap. Pairs: 32, padded to the longest row; documents: 256, padded to it. The
   * text is truncated to it, which can cut the `<|endofchunk|>` and EOS (as in the reference).
   */
  maxLength: z.number().int().min(2).optional(),
  /** Documents: image slots per sample; fewer images are zero-padded. Default: 6. */
  maxImages: positiveInt.optional(),
  /** Documents: fewer `<image>` tokens than this after truncation rejects a sample. Default: 1. */
  minImages: nonNegativeInt.optional(),
  /**
   * Documents with more images than `maxImages`: `skip` them (counted), or `truncate` to the
   * first `maxImages` (the reference). Default: `skip`.
   */
  tooManyImages: z.enum(["skip", "truncate"]).optional(),
  /** Documents: MMC4 `matched_sim` below this drops the image. Default: 0.24 (the release's). */
  simThreshold: finite.optional(),
  /**
   * Documents: drop images of this many KB or less (`bytes // 1000 <= minImageKb`; the
   * reference uses 10 on web images). Default: none.
   */
  minImageKb: nonNegativeInt.optional(),
  /** Documents: probability of rejecting a single-image sample. Default: 0.5 (the reference's). */
  singleImageDropProbability: probability.optional(),
  /**
   * Probability of a horizontal flip: one draw per pair batch, one per document (the
   * reference's `RandomHorizontalFlip(0.5)` on its batched tensors). Default: 0.5.
   */
  flipProbability: probability.optional(),
  /** Rotate images by their EXIF orientation (the reference does not). Default: `false`. */
  applyExifOrientation: z.boolean().optional(),
  /** Threads decoding images. Default: the available cores, at most 4. */
  workers: positiveInt.optional(),
  /** Batches prepared ahead while the trainer computes. Default: 2. */
  prefetch: positiveInt.optional(),
};

/** One dataset of a training run (`train()`'s `data.pairs` / `data.documents`). */
export const DataSourceOptionsSchema: Strict<typeof dataSourceShape> = z.strictObject(dataSourceShape);
export type DataSourceOptions = z.input<typeof DataSourceOptionsSchema>;

const dataLoaderShape = {
  ...dataSourceShape,
  /** `pairs` (image–caption, LAION-like) or `documents` (interleaved, MMC4-like). Required. */
  kind: z.enum(["pairs", "documents"]),
  /**
   * The tokenizer: a `tokenizer.json` or the folder holding it (with `tokenizer_config.json`).
   * Default: the LM folder of `model`. The reference's `<|endofchunk|>`, `<image>` (and
   * `<PAD>` when missing) are added as its factory does.
   */
  tokenizer: z.string().min(1).optional(),
  /**
   * The model to train (a `Flamingo`, a `Trainer`, or load options): the tokenizer defaults
   * to its LM folder and the image size to its vision tower's. Either this or `tokenizer`
   * is required.
   */
  model: z
    .union([
      z.custom<{ loadOptions: LoadOptions }>((v) => typeof v === "object" && v !== null && "loadOptions" in v),
      LoadOptionsSchema,
    ])
    .optional(),
  /** Side of the square images. Default: the model's, else 224. */
  imageSize: positiveInt.optional(),
  /** Seed of the order and the augmentations. Default: 42. */
  seed: seed.optional(),
  /** Continue from a position a batch reported (`batch.position`, or `trainer.dataPosition`). */
  position: DataPositionSchema.optional(),
};
/** Options of {@link dataLoader}. One of `manifest` and `shards` is required. */
export const DataLoaderOptionsSchema: Strict<typeof dataLoaderShape> = z.strictObject(dataLoaderShape);
export type DataLoaderOptions = z.input<typeof DataLoaderOptionsSchema>;

// ---------------------------------------------------------------------------------------
// train(config)
// ---------------------------------------------------------------------------------------

const dataShape = {
  /** Image–caption pairs (the reference's LAION stream). */
  pairs: DataSourceOptionsSchema.optional(),
  /** Interleaved documents (the reference's MMC4 stream). */
  documents: DataSourceOptionsSchema.optional(),
};
/** The datasets of a run: one or both. With both, every micro-batch has one batch of each. */
export const TrainDataSchema: Strict<typeof dataShape> = z.strictObject(dataShape);
export type TrainData = z.input<typeof TrainDataSchema>;

const outputShape = {
  /** Folder of the training state (`trainer_state.json`), the metrics and the export. Required. */
  dir: z.string().min(1),
  /** Save the training state every this many optimizer steps (and always at the end). Default: 0, only at the end. */
  saveEvery: nonNegativeInt.default(0),
  /**
   * Where to export the trained weights as an OpenFlamingo checkpoint at the end;
   * `null` skips it. Default: `<dir>/checkpoint.safetensors`.
   */
  export: z.string().min(1).nullable().optional(),
  /** JSONL file of per-step metrics (appended to); `null` disables. Default: `<dir>/metrics.jsonl`. */
  metrics: z.string().min(1).nullable().optional(),
};
export const TrainOutputSchema: Strict<typeof outputShape> = z.strictObject(outputShape);
export type TrainOutput = z.input<typeof TrainOutputSchema>;

const trainConfigShape = {
  /** The model to train: load options (as for `Flamingo.load`), or a loaded `Flamingo`, which the run takes over. Required. */
  model: z.union([z.custom<Flamingo>((v) => v instanceof Flamingo), LoadOptionsSchema]),
  /** The datasets. At least one is required. */
  data: TrainDataSchema,
  /** `tokenizer.json` or its folder. Default: the model's LM folder. */
  tokenizer: z.string().min(1).optional(),
  /** Optimizer, schedule, clipping, loss weights. Defaults: the reference's. */
  trainer: TrainerOptionsSchema.optional(),
  /** Stop after this many optimizer steps. Default: when a dataset runs out. */
  steps: positiveInt.optional(),
  /** Where the state, metrics and export go, and how often to save. Required. */
  output: TrainOutputSchema,
  /**
   * `auto`: continue from `output.dir` when it holds a training state; `true`: require one;
   * `false`: start fresh (an existing state there is overwritten at the first save). Default: `auto`.
   */
  resume: z.union([z.boolean(), z.literal("auto")]).default("auto"),
  /** Draw a progress line on stderr. Default: when stderr is a terminal. */
  progress: z.boolean().optional(),
  /** Without a terminal, print a progress line every this many steps (0: never). Default: 10. */
  logEvery: nonNegativeInt.default(10),
  /** Called after every optimizer step. */
  onStep: z.custom<(progress: TrainProgress) => void>((v) => typeof v === "function").optional(),
  /** Stops the run after the current step, leaving a resumable state. */
  signal: z.custom<AbortSignal>((v) => v instanceof AbortSignal).optional(),
};
/** Options of {@link train}. */
export const TrainConfigSchema: Strict<typeof trainConfigShape> = z.strictObject(trainConfigShape);
export type TrainConfig = z.input<typeof TrainConfigSchema>;

/** What `train()` reports after each optimizer step. */
export interface TrainProgress {
  /** Optimizer steps done. */
  step: number;
  /** The planned number of steps, when known. */
  totalSteps: number | undefined;
  /** The step's objective (NaN for a skipped step). */
  loss: number;
  /** Mean unweighted loss per dataset in the step. */
  losses: Partial<Record<"pairs" | "documents", number>>;
  lr: number;
  gradNorm: number;
  skipped: boolean;
  /** Samples per second over the run so far (this process). */
  samplesPerSecond: number;
  /** Estimated seconds left, when `totalSteps` is known. */
  etaSeconds: number | undefined;
  /** Seconds since the run started (this process). */
  elapsedSeconds: number;
}
