/**
 * `evaluate`: the reference's few-shot evaluation (`open_flamingo/eval/evaluate.py`, spec §6)
 * on a loaded model. Per evaluated item, demonstrations are drawn from a seeded query set of
 * the training split (zero-shot still shows 2, as text only); prompts, decoding (3 beams,
 * length penalty 0, 20 new tokens for captions, 5 for VQA, 10 for TextVQA) and the clean-up
 * of the generations are the reference's; HatefulMemes ranks "no"/"yes" with the cached-media
 * scoring path. Predictions are appended to `predictions.jsonl` as they are made, so a rerun
 * resumes; the scores are computed from every prediction of the run.
 */

import { stat } from "node:fs/promises";

import { z } from "zod";

import { ErrorCode, FlamingoError, invalidInput } from "../errors.js";
import { AbortError } from "../generate.js";
import type { ImageInput, ImageOptions } from "../images.js";
import { preprocessImages } from "../images.js";
import type { Flamingo } from "../model.js";
import {
  captionPrompt,
  encodePrompts,
  type Prompt,
  postprocessCaption,
  postprocessVqa,
  vqaPrompt,
} from "../prompts.js";
import type { Tokenizer } from "../tokenizer.js";
import { captionMetrics } from "./caption-metrics.js";
import type { CaptionItem, ClassificationItem, VqaItem } from "./datasets.js";
import { EvalErrorCode } from "./errors.js";
import { rocAuc } from "./roc-auc.js";
import { openRunFiles, type RunFiles } from "./run-files.js";
import { Stream, sampleIndices, seededRandom } from "./sampling.js";
import { vqaAccuracy } from "./vqa.js";

/** The tasks {@link evaluate} runs. */
export const EVAL_TASKS = ["coco", "flickr30k", "vqav2", "okvqa", "vizwiz", "textvqa", "hateful_memes"] as const;
export type EvalTask = (typeof EVAL_TASKS)[number];

type TaskKind = "caption" | "vqa" | "classification";
const KIND: Record<EvalTask, TaskKind> = {
  coco: "caption",
  flickr30k: "caption",
  vqav2: "vqa",
  okvqa: "vqa",
  vizwiz: "vqa",
  textvqa: "vqa",
  hateful_memes: "classification",
};

/** The reference's `max_generation_length` per task. */
const MAX_NEW_TOKENS: Record<EvalTask, number> = {
  coco: 20,
  flickr30k: 20,
  vqav2: 5,
  okvqa: 5,
  vizwiz: 5,
  textvqa: 10,
  hateful_memes: 0,
};

/** HatefulMemes' class names, in class-id order (`HM_CLASSNAMES`). */
const HATEFUL_MEMES_CLASSES = ["no", "yes"] as const;

/** Where this evaluation knowingly differs from the reference's, reported with every run. */
const DIFFERENCES = {
  sampling:
    "demonstrations and the evaluated subset are drawn with this package's seeded generator " +
    "(one stream per evaluated item), not NumPy/Python's: the same seed gives other draws than the reference",
  okvqa:
    "OK-VQA answers are cut at Question/Answer/Short but not stemmed: the reference's stemmer " +
    "needs NLTK's POS tagger and WordNet 3.0, which are not available offline",
};

export interface EvaluateProgress {
  /** Items with a prediction, those of earlier runs included. */
  done: number;
  /** Items to evaluate. */
  total: number;
  /** Items whose predictions came from an earlier run (`predictions.jsonl`). */
  resumed: number;
}

/** The items to evaluate and the training split the demonstrations come from. */
export interface EvalData<T> {
  train: readonly T[];
  test: readonly T[];
}

const fn = <T>(what: string) =>
  z.custom<T>((v) => typeof v === "function", { error: `${what} must be a function` }).optional();

const evaluateShape = {
  /** The model, with its tokenizer attached ({@link Flamingo.fromPretrained} attaches it). Required. */
  model: z.custom<Flamingo>(
    (v) => typeof v === "object" && v !== null && typeof (v as Flamingo).generate === "function",
    { error: "expected a Flamingo model" },
  ),
  /** Which evaluation: sets the prompt, decoding, post-processing and metric. Required. */
  task: z.enum(EVAL_TASKS, { error: `task must be one of ${EVAL_TASKS.join(", ")}` }),
  /**
   * Training split (demonstrations) and test split (evaluated), as the loaders of
   * `datasets.ts` read them: caption items for `coco`/`flickr30k`, VQA items for the VQA
   * tasks, classification items for `hateful_memes`. Required.
   */
  data: z.custom<EvalData<unknown>>(
    (v) =>
      typeof v === "object" &&
      v !== null &&
      Array.isArray((v as EvalData<unknown>).train) &&
      Array.isArray((v as EvalData<unknown>).test),
    { error: "expected { train: [...], test: [...] }" },
  ),
  /** Demonstrations per prompt. 0 is the reference's zero-shot: 2 demonstrations shown as text only. Default: 0. */
  shots: z.number().int().nonnegative().optional(),
  /** Seed of the evaluated subset and of the demonstrations (the reference's `--trial_seeds`). Default: 42. */
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  /** Items evaluated, drawn from the test split with the seed. Default: all of them. */
  numSamples: z.number().int().positive().optional(),
  /**
   * Training items the demonstrations are drawn from (`--query_set_size`; VQA tasks use 4×,
   * as the reference), at most the split's size. Default: 2048.
   */
  querySetSize: z.number().int().positive().optional(),
  /** Prompts per generation call. HatefulMemes scores one item at a time. Default: 8. */
  batchSize: z.number().int().positive().optional(),
  /** Beams of the beam search. Default: 3, as the reference. */
  numBeams: z.number().int().positive().optional(),
  /** Most new tokens per generation. Default: the reference's per task (20 captions, 5 VQA, 10 TextVQA). */
  maxNewTokens: z.number().int().positive().optional(),
  /** VQA accuracy's answer normalization (see {@link vqaAccuracy}). Default: `"openflamingo"`. */
  vqaEvaluator: z.enum(["openflamingo", "official", "official-2021"]).optional(),
  /**
   * Output folder: `run.json`, `predictions.jsonl` (appended as items finish; a rerun with the
   * same settings skips the items already there), then `predictions.json` and `report.json`.
   * Default: none (nothing is written, nothing resumed).
   */
  output: z.string().min(1).optional(),
  /** Called after each batch. */
  onProgress: fn<(progress: EvaluateProgress) => void>("onProgress"),
  /** Stops the run after the current batch's generation; what was finished stays in `predictions.jsonl`. */
  signal: z.custom<AbortSignal>((v) => v instanceof AbortSignal, { error: "expected an AbortSignal" }).optional(),
};
/** Options of {@link evaluate}. */
export const EvaluateOptionsSchema: z.ZodObject<typeof evaluateShape, z.core.$strict> = z.strictObject(evaluateShape);
export type EvaluateOptions = z.input<typeof EvaluateOptionsSchema>;

/** A captioning prediction. */
export interface CaptionPrediction {
  id: string;
  caption: string;
  /** Ids of the demonstrations shown, in prompt order. */
  demos: string[];
}
/** A VQA prediction. */
export interface VqaPrediction {
  id: string;
  answer: string;
  demos: string[];
}
/** A HatefulMemes prediction. */
export interface ClassificationPrediction {
  id: string;
  /** The model's probability of "yes" (hateful): softmax over the classes' mean token log-probabilities. */
  scoreYes: number;
  /** The class ranked first. */
  predicted: "no" | "yes";
  demos: string[];
}
export type Prediction = CaptionPrediction | VqaPrediction | ClassificationPrediction;

/** The scores, on the scale the reference reports them (×100). */
export interface EvalMetrics {
  /** Captioning: CIDEr-D ×100 (pycocoevalcap, IDF from the evaluated references). */
  cider?: number;
  /** Captioning: corpus BLEU-1..4 ×100. */
  bleu?: number[];
  /** VQA: accuracy ×100. */
  vqaAccuracy?: number;
  /** HatefulMemes: ROC-AUC ×100 of the "yes" probability. */
  rocAuc?: number;
  /** HatefulMemes: top-1 accuracy ×100. */
  accuracy?: number;
}

/** What {@link evaluate} returns, and `report.json` holds (without `predictions`). */
export interface EvalReport {
  task: EvalTask;
  shots: number;
  /** Demonstrations per prompt actually shown (2 for zero-shot, as text). */
  effectiveShots: number;
  seed: number;
  /** Items evaluated. */
  numSamples: number;
  querySetSize: number;
  decoding: { numBeams: number; lengthPenalty: number; maxNewTokens: number } | null;
  metrics: EvalMetrics;
  /** Items whose predictions were taken from an earlier run. */
  resumed: number;
  /** Where this run knowingly differs from the reference's evaluation. */
  differences: string[];
  predictions: Prediction[];
}

function taskItemSchema(kind: TaskKind): z.ZodType {
  const image = z.string().min(1);
  switch (kind) {
    case "caption":
      return z.looseObject({ id: z.string(), image, captions: z.array(z.string()).min(1) });
    case "vqa":
      return z.looseObject({ id: z.string(), image, question: z.string(), answers: z.array(z.string()).min(1) });
    case "classification":
      return z.looseObject({ id: z.string(), image, text: z.string(), label: z.union([z.literal(0), z.literal(1)]) });
  }
}

/** The image files among `paths` that do not exist, in order. */
async function missingFiles(paths: readonly string[]): Promise<string[]> {
  const unique = [...new Set(paths)];
  const found = await Promise.all(
    unique.map((p) =>
      stat(p).then(
        (s) => s.isFile(),
        () => false,
      ),
    ),
  );
  return unique.filter((_, i) => !found[i]);
}

/** The reference's OK-VQA clean-up up to its stemming: the text before `Question`, `Answer` or `Short`. */
export function postprocessOkVqa(text: string): string {
  return text.split(/Question|Answer|Short/)[0] as string;
}

/** The HatefulMemes prompt (`get_hateful_memes_prompt`): a demo with its label, the query open after `Answer:`. */
export function hatefulMemesPrompt(text: string, label?: "no" | "yes"): string {
  const head = `<image>is an image with: '${text}' written on it. Is it hateful? Answer:`;
  return label === undefined ? head : `${head}${label}<|endofchunk|>`;
}

/**
 * Runs a few-shot evaluation as the reference's `evaluate.py` does and returns the report
 * (written to `output/report.json` as well when `output` is given).
 *
 * Fails with `ERR_EVAL_NOT_ENOUGH_DEMOS` when the training split has fewer items than the
 * prompt shows demonstrations, `ERR_EVAL_MISSING_IMAGE` (before any work) when image files
 * are missing, and `ERR_EVAL_RUN_MISMATCH` when `output` holds a run with other settings.
 */
export async function evaluate(options: EvaluateOptions): Promise<EvalReport> {
  const parsed = EvaluateOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("evaluate options", parsed.error);
  const o = parsed.data;
  const kind = KIND[o.task];
  const itemSchema = z.array(taskItemSchema(kind));
  for (const split of ["train", "test"] as const) {
    const items = itemSchema.safeParse(o.data[split]);
    if (!items.success) throw invalidInput(`${o.task} ${split} items`, items.error);
  }
  const tokenizer = o.model.tokenizer;
  if (tokenizer === undefined) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      "evaluate needs the model's tokenizer: load the model with Flamingo.fromPretrained, or pass tokenizer to Flamingo.load",
    );
  }

  const shots = o.shots ?? 0;
  const seed = o.seed ?? 42;
  // `compute_effective_num_shots`: zero-shot still shows 2 demonstrations, as text.
  const effectiveShots = shots > 0 ? shots : 2;
  const train = o.data.train as readonly (CaptionItem | VqaItem | ClassificationItem)[];
  const test = o.data.test as readonly (CaptionItem | VqaItem | ClassificationItem)[];
  if (test.length === 0) throw new FlamingoError(EvalErrorCode.Data, `the ${o.task} test split has no items`);
  // Predictions are keyed by item id (that is how a rerun finds what is done).
  const seen = new Set<string>();
  for (const item of test) {
    if (seen.has(item.id)) {
      throw new FlamingoError(EvalErrorCode.Data, `the ${o.task} test split has two items with id "${item.id}"`);
    }
    seen.add(item.id);
  }
  const numSamples = o.numSamples ?? test.length;
  if (numSamples > test.length) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `numSamples is ${numSamples}, but the ${o.task} test split has only ${test.length} items`,
    );
  }
  const querySetSize = Math.min(train.length, (o.querySetSize ?? 2048) * (kind === "vqa" ? 4 : 1));
  if (effectiveShots > querySetSize) {
    throw new FlamingoError(
      EvalErrorCode.NotEnoughDemos,
      `${shots === 0 ? "zero-shot prompts show 2 text-only demonstrations" : `${shots} shots need ${shots} demonstrations`}, ` +
        `but the ${o.task} training split has only ${train.length} item${train.length === 1 ? "" : "s"}${
          train.length > querySetSize ? ` in the query set (querySetSize ${querySetSize})` : ""
        }: use fewer shots or a larger training split`,
    );
  }

  // The draws: the evaluated subset, the query set, and each item's demonstrations.
  const evaluated = sampleIndices(test.length, numSamples, seededRandom(seed, Stream.testSubset)).map(
    (i) => test[i] as CaptionItem | VqaItem | ClassificationItem,
  );
  const querySet = sampleIndices(train.length, querySetSize, seededRandom(seed, Stream.querySet)).map(
    (i) => train[i] as CaptionItem | VqaItem | ClassificationItem,
  );
  const demosOf = evaluated.map((_, position) =>
    sampleIndices(querySet.length, effectiveShots, seededRandom(seed, Stream.demosOf(position))).map(
      (i) => querySet[i] as CaptionItem | VqaItem | ClassificationItem,
    ),
  );

  const needed = [...evaluated.map((item) => item.image), ...(shots > 0 ? demosOf.flat().map((d) => d.image) : [])];
  const missing = await missingFiles(needed);
  if (missing.length > 0) {
    const shown = missing.slice(0, 5).join(", ");
    throw new FlamingoError(
      EvalErrorCode.MissingImage,
      `${missing.length} image file${missing.length === 1 ? " is" : "s are"} missing: ${shown}${
        missing.length > 5 ? ", …" : ""
      } (check the image folder, or the image path function for this dataset)`,
    );
  }

  const summary = o.model.summary();
  // The model's preprocessing: its image size, and the mean/std its flamingo.json names.
  const imageOptions = o.model.imageOptions();
  const decoding =
    kind === "classification"
      ? null
      : { numBeams: o.numBeams ?? 3, lengthPenalty: 0, maxNewTokens: o.maxNewTokens ?? MAX_NEW_TOKENS[o.task] };
  const settings = {
    task: o.task,
    shots,
    seed,
    numSamples,
    querySetSize,
    decoding,
    testItems: test.length,
    trainItems: train.length,
    // Not the weights (a fine-tune has the same sizes), but enough to refuse another architecture.
    model: { family: summary.family, parametersTotal: summary.parametersTotal, lmLayers: summary.lmLayers },
  };
  const files: RunFiles<Prediction> | undefined = o.output ? await openRunFiles(o.output, settings) : undefined;
  const predictions = new Map<string, Prediction>(files?.done ?? []);
  const resumed = evaluated.filter((item) => predictions.has(item.id)).length;
  const pending = evaluated
    .map((item, position) => ({ item, position }))
    .filter(({ item }) => !predictions.has(item.id));
  let done = evaluated.length - pending.length;
  const notify = () => o.onProgress?.({ done, total: evaluated.length, resumed });
  notify();

  const batchSize = kind === "classification" ? 1 : (o.batchSize ?? 8);
  for (let start = 0; start < pending.length; start += batchSize) {
    if (o.signal?.aborted) {
      throw new AbortError("the evaluation was aborted; rerun with the same output folder to resume", {
        cause: o.signal.reason,
      });
    }
    const batch = pending.slice(start, start + batchSize);
    const made: Prediction[] = [];
    if (kind === "classification") {
      for (const { item, position } of batch) {
        made.push(
          await classify(
            o.model,
            item as ClassificationItem,
            demosOf[position] as ClassificationItem[],
            shots,
            imageOptions,
            o.signal,
          ),
        );
      }
    } else {
      const prompts = batch.map(({ item, position }) =>
        kind === "caption"
          ? captionItemPrompt(item as CaptionItem, demosOf[position] as CaptionItem[], shots)
          : vqaItemPrompt(item as VqaItem, demosOf[position] as VqaItem[], shots),
      );
      const texts = await generateBatch(o.model, tokenizer, prompts, imageOptions, decoding, o.signal);
      batch.forEach(({ item, position }, b) => {
        const text = texts[b] ?? "";
        const demos = (demosOf[position] ?? []).map((d) => d.id);
        if (kind === "caption") made.push({ id: item.id, caption: postprocessCaption(text), demos });
        else
          made.push({ id: item.id, answer: o.task === "okvqa" ? postprocessOkVqa(text) : postprocessVqa(text), demos });
      });
    }
    await files?.append(made);
    for (const p of made) predictions.set(p.id, p);
    done += batch.length;
    notify();
  }

  const ordered = evaluated.map((item) => predictions.get(item.id) as Prediction);
  const metrics = metricsOf(kind, evaluated, ordered, o.vqaEvaluator);
  const differences = [DIFFERENCES.sampling, ...(o.task === "okvqa" ? [DIFFERENCES.okvqa] : [])];
  const result: EvalReport = {
    task: o.task,
    shots,
    effectiveShots,
    seed,
    numSamples,
    querySetSize,
    decoding,
    metrics,
    resumed,
    differences,
    predictions: ordered,
  };
  if (files) {
    const { predictions: written, ...reportFile } = result;
    await files.finish(written, reportFile);
  }
  return result;
}

/** An evaluated caption item's prompt after its demonstrations (text only for zero-shot). */
export function captionItemPrompt(item: CaptionItem, demos: readonly CaptionItem[], shots: number): Prompt {
  return captionPrompt({
    // The reference shows each demonstration's first caption.
    demos: demos.map((d) => ({ image: d.image, caption: d.captions[0] as string })),
    query: item.image,
    textOnlyDemos: shots === 0,
  });
}

/** An evaluated VQA item's prompt after its demonstrations (text only for zero-shot). */
export function vqaItemPrompt(item: VqaItem, demos: readonly VqaItem[], shots: number): Prompt {
  return vqaPrompt({
    // The reference shows each demonstration's first answer.
    demos: demos.map((d) => ({ image: d.image, question: d.question, answer: d.answers[0] as string })),
    query: { image: item.image, question: item.question },
    textOnlyDemos: shots === 0,
  });
}

/** Generates for a batch of prompts (left-padded, as the reference's `get_outputs`) and returns the decoded new text. */
async function generateBatch(
  model: Flamingo,
  tokenizer: Tokenizer,
  prompts: Prompt[],
  imageOptions: ImageOptions,
  decoding: { numBeams: number; lengthPenalty: number; maxNewTokens: number } | null,
  signal: AbortSignal | undefined,
): Promise<string[]> {
  const input = await encodePrompts(tokenizer, prompts, { padding: "left", image: imageOptions });
  const result = await model.generate(
    { visionX: input.visionX, langX: input.langX, attentionMask: input.attentionMask },
    { ...decoding, minNewTokens: 0, ...(signal ? { signal } : {}) },
  );
  return result.text ?? [];
}

/**
 * An evaluated HatefulMemes item's context: the demonstrations with their labels, concatenated
 * with no separator (text only for zero-shot), then the query open after `Answer:`.
 */
export function classificationPrompt(
  item: ClassificationItem,
  demos: readonly ClassificationItem[],
  shots: number,
): Prompt {
  let text = demos.map((d) => hatefulMemesPrompt(d.text, HATEFUL_MEMES_CLASSES[d.label])).join("");
  if (shots === 0) text = text.replaceAll("<image>", "");
  text += hatefulMemesPrompt(item.text);
  const images: ImageInput[] = [...(shots > 0 ? demos.map((d) => d.image) : []), item.image];
  return { text, images };
}

/**
 * Rank classification with cached media (`get_rank_classifications`): the context (the
 * demonstrations, concatenated with no separator, then the query up to `Answer:`) runs once,
 * and each class name is scored after it by its mean token log-probability.
 */
async function classify(
  model: Flamingo,
  item: ClassificationItem,
  demos: readonly ClassificationItem[],
  shots: number,
  imageOptions: ImageOptions,
  signal: AbortSignal | undefined,
): Promise<ClassificationPrediction> {
  const { text: context, images } = classificationPrompt(item, demos, shots);
  const visionX = await preprocessImages([images], imageOptions);
  const scores = await model.score(
    { visionX, context, continuations: [...HATEFUL_MEMES_CLASSES] },
    signal ? { signal } : {},
  );
  const [no, yes] = scores.map((s) => s.mean) as [number, number];
  // Softmax over the two classes' scores: the reference's `pred_score`, turned into P(yes).
  const top = Math.max(no, yes);
  const scoreYes = Math.exp(yes - top) / (Math.exp(no - top) + Math.exp(yes - top));
  return { id: item.id, scoreYes, predicted: yes > no ? "yes" : "no", demos: demos.map((d) => d.id) };
}

/** The task's metrics over the predictions, in the evaluated order. */
function metricsOf(
  kind: TaskKind,
  items: readonly (CaptionItem | VqaItem | ClassificationItem)[],
  predictions: readonly Prediction[],
  evaluator: "openflamingo" | "official" | "official-2021" | undefined,
): EvalMetrics {
  switch (kind) {
    case "caption": {
      const m = captionMetrics(
        items.map((item, i) => ({
          candidate: (predictions[i] as CaptionPrediction).caption,
          references: (item as CaptionItem).captions,
        })),
      );
      return { cider: 100 * m.cider.score, bleu: m.bleu.scores.map((s) => 100 * s) };
    }
    case "vqa": {
      const m = vqaAccuracy(
        items.map((item, i) => ({
          prediction: (predictions[i] as VqaPrediction).answer,
          answers: (item as VqaItem).answers,
        })),
        evaluator ? { evaluator } : {},
      );
      return { vqaAccuracy: 100 * m.accuracy };
    }
    case "classification": {
      const labels = items.map((item) => (item as ClassificationItem).label);
      const p = predictions as readonly ClassificationPrediction[];
      const correct = p.filter((x, i) => (x.predicted === "yes" ? 1 : 0) === labels[i]).length;
      return {
        rocAuc:
          100 *
          rocAuc(
            labels,
            p.map((x) => x.scoreYes),
          ),
        accuracy: (100 * correct) / p.length,
      };
    }
  }
}
