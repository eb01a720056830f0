/**
 * Evaluation datasets as the reference reads them (`open_flamingo/eval/eval_datasets.py`):
 * Karpathy-split caption JSON (COCO, Flickr30k), VQA question + annotation JSON (VQAv2,
 * OK-VQA, VizWiz, TextVQA) and HatefulMemes JSONL. Every file is validated, and a file of the
 * wrong shape fails with `ERR_EVAL_DATA` naming the field and where it is.
 */

import { readFile } from "node:fs/promises";
import { basename, join } from "node:path";

import { z } from "zod";

import { ErrorCode, FlamingoError } from "../errors.js";
import { dataError, EvalErrorCode } from "./errors.js";

/** A caption dataset item: an image and its reference captions. */
export interface CaptionItem {
  /** COCO's `cocoid`; Flickr30k's file name without extension (as the reference). */
  id: string;
  /** Path of the image file. */
  image: string;
  /** The reference captions (`sentences[].raw`); demonstrations show the first. */
  captions: string[];
}

/** A VQA dataset item: an image, a question and the human answers. */
export interface VqaItem {
  /** The `question_id`. */
  id: string;
  image: string;
  question: string;
  /** The human answers (10 in VQAv2); demonstrations show the first. */
  answers: string[];
}

/** A HatefulMemes item: a meme, its overlaid text and its label. */
export interface ClassificationItem {
  id: string;
  image: string;
  /** The text written on the image (the reference's `ocr`). */
  text: string;
  /** 1: hateful ("yes"), 0: not ("no"). */
  label: 0 | 1;
}

const id = z.union([z.number().int(), z.string().min(1)]);

const karpathyImageShape = {
  filename: z.string().min(1),
  /** COCO: `train2014` / `val2014`; Flickr30k has none. */
  filepath: z.string().optional(),
  split: z.string(),
  sentences: z.array(z.looseObject({ raw: z.string() })).min(1, "an image needs at least one sentence"),
  cocoid: id.optional(),
};
/** A Karpathy-split caption file (`dataset_coco.json`, `dataset_flickr30k.json`). */
export const KarpathyFileSchema = z.looseObject({ images: z.array(z.looseObject(karpathyImageShape)) });
export type KarpathyImage = z.infer<typeof KarpathyFileSchema>["images"][number];

/** A VQA question file (`…_questions.json`). */
export const VqaQuestionsFileSchema = z.looseObject({
  questions: z.array(z.looseObject({ image_id: id, question: z.string(), question_id: id })),
});
export type VqaQuestion = z.infer<typeof VqaQuestionsFileSchema>["questions"][number];

/** A VQA annotation file (`…_annotations.json`). */
export const VqaAnnotationsFileSchema = z.looseObject({
  annotations: z.array(
    z.looseObject({
      question_id: id,
      answers: z.array(z.looseObject({ answer: z.string() })).min(1, "a question needs at least one answer"),
    }),
  ),
});

/** One line of a HatefulMemes JSONL file. */
export const HatefulMemesLineSchema = z.looseObject({
  id: id,
  img: z.string().min(1),
  text: z.string(),
  label: z.union([z.literal(0), z.literal(1)], { error: "label must be 0 or 1" }),
});

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (error) {
    throw new FlamingoError(ErrorCode.Io, `cannot read ${file}: ${(error as Error).message}`, { cause: error });
  }
}

async function readJson<T>(file: string, schema: z.ZodType<T>, what: string): Promise<T> {
  const text = await readText(file);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new FlamingoError(EvalErrorCode.Data, `${file} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw dataError(file, what, parsed.error);
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// Captions

/** Which Karpathy split to read. The reference takes `"train"` (not `"restval"`) for demonstrations and `"test"` to evaluate. */
export type Split = "train" | "test";

export interface LoadCaptionsOptions {
  /** The Karpathy-split JSON file. */
  annotations: string;
  /** Folder the images are under. */
  imageDir: string;
  split: Split;
  /** `coco` ids items by `cocoid`, `flickr30k` by file name. Default: `coco`. */
  dataset?: "coco" | "flickr30k";
  /**
   * Where an entry's image is. Default: `imageDir/filepath/filename` (COCO's `train2014/` and
   * `val2014/` folders side by side; Flickr30k entries have no `filepath`).
   */
  imagePath?: (entry: KarpathyImage, imageDir: string) => string;
}

const defaultCaptionImagePath = (entry: KarpathyImage, imageDir: string): string =>
  join(imageDir, entry.filepath ?? "", entry.filename);

/** Reads one split of a Karpathy-format caption file. */
export async function loadCaptionDataset(options: LoadCaptionsOptions): Promise<CaptionItem[]> {
  const file = await readJson(options.annotations, KarpathyFileSchema, "Karpathy-split caption file");
  const dataset = options.dataset ?? "coco";
  const imagePath = options.imagePath ?? defaultCaptionImagePath;
  const items: CaptionItem[] = [];
  file.images.forEach((entry, i) => {
    if (entry.split !== options.split) return;
    let itemId: string;
    if (dataset === "coco") {
      if (entry.cocoid === undefined) {
        throw new FlamingoError(
          EvalErrorCode.Data,
          `${options.annotations} is not a valid COCO Karpathy file:\n✖ missing cocoid\n  → at images[${i}].cocoid`,
        );
      }
      itemId = String(entry.cocoid);
    } else {
      itemId = entry.filename.split(".")[0] as string;
    }
    items.push({ id: itemId, image: imagePath(entry, options.imageDir), captions: entry.sentences.map((s) => s.raw) });
  });
  return items;
}

// ---------------------------------------------------------------------------------------------
// VQA

/** The VQA datasets the reference evaluates. */
export type VqaDatasetName = "vqav2" | "okvqa" | "vizwiz" | "textvqa";

export interface LoadVqaOptions {
  /** The question JSON (`questions[].{image_id, question, question_id}`). */
  questions: string;
  /** The annotation JSON (`annotations[].{question_id, answers[].answer}`). */
  annotations: string;
  /** Folder the images are in. */
  imageDir: string;
  /** Decides the default image file names. Default: `vqav2`. */
  dataset?: VqaDatasetName;
  /**
   * Where a question's image is. Default, as the reference: VQAv2 and OK-VQA
   * `COCO_{folder}_{image_id:012d}.jpg` (`folder` is `imageDir`'s last component, e.g.
   * `val2014`), VizWiz `image_id` itself (a file name), TextVQA `{image_id}.jpg`.
   */
  imagePath?: (question: VqaQuestion, imageDir: string) => string;
}

/** The reference's file naming of each VQA dataset's images. */
export function defaultVqaImagePath(dataset: VqaDatasetName): (question: VqaQuestion, imageDir: string) => string {
  switch (dataset) {
    case "vqav2":
    case "okvqa":
      return (q, dir) => {
        const folder = basename(dir.replace(/[/\\]+$/, ""));
        return join(dir, `COCO_${folder}_${String(q.image_id).padStart(12, "0")}.jpg`);
      };
    case "vizwiz":
      return (q, dir) => join(dir, String(q.image_id));
    case "textvqa":
      return (q, dir) => join(dir, `${q.image_id}.jpg`);
  }
}

/**
 * Reads a VQA question file and its annotations. Answers are matched to questions by
 * `question_id` (the reference pairs them by position, which is the same for the official files).
 */
export async function loadVqaDataset(options: LoadVqaOptions): Promise<VqaItem[]> {
  const [questions, annotations] = await Promise.all([
    readJson(options.questions, VqaQuestionsFileSchema, "VQA question file"),
    readJson(options.annotations, VqaAnnotationsFileSchema, "VQA annotation file"),
  ]);
  const answers = new Map(annotations.annotations.map((a) => [String(a.question_id), a.answers.map((x) => x.answer)]));
  const imagePath = options.imagePath ?? defaultVqaImagePath(options.dataset ?? "vqav2");
  return questions.questions.map((q, i) => {
    const found = answers.get(String(q.question_id));
    if (found === undefined) {
      throw new FlamingoError(
        EvalErrorCode.Data,
        `${options.annotations} has no annotation for question_id ${q.question_id} (questions[${i}] of ${options.questions})`,
      );
    }
    return { id: String(q.question_id), image: imagePath(q, options.imageDir), question: q.question, answers: found };
  });
}

// ---------------------------------------------------------------------------------------------
// HatefulMemes

export interface LoadHatefulMemesOptions {
  /** The JSONL file: one `{id, img, text, label}` per line. */
  annotations: string;
  /** Folder the images are in: an item's image is `imageDir/basename(img)`, as the reference. */
  imageDir: string;
}

/** Reads a HatefulMemes-style JSONL file. */
export async function loadHatefulMemes(options: LoadHatefulMemesOptions): Promise<ClassificationItem[]> {
  const text = await readText(options.annotations);
  const items: ClassificationItem[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new FlamingoError(
        EvalErrorCode.Data,
        `${options.annotations} line ${i + 1} is not valid JSON: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const parsed = HatefulMemesLineSchema.safeParse(value);
    if (!parsed.success) throw dataError(`${options.annotations} line ${i + 1}`, "HatefulMemes record", parsed.error);
    const m = parsed.data;
    items.push({ id: String(m.id), image: join(options.imageDir, basename(m.img)), text: m.text, label: m.label });
  });
  return items;
}
