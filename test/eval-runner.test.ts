/**
 * The few-shot evaluation runner on the bundled shape-scene set (test/fixtures/eval-shapes,
 * made by scripts/eval/make-shapes-fixture.mjs) with the untrained models/tiny: its words are
 * arbitrary, so the tests pin the protocol (how many predictions, which demonstrations, the
 * files written, resuming) and recompute every reported metric from the written predictions.
 */

import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { captionItemPrompt, classificationPrompt, vqaItemPrompt } from "../ts/src/eval/runner.js";
import {
  type CaptionItem,
  type CaptionPrediction,
  type ClassificationPrediction,
  captionMetrics,
  defaultVqaImagePath,
  type EvalReport,
  evaluate,
  Flamingo,
  loadCaptionDataset,
  loadHatefulMemes,
  loadVqaDataset,
  postprocessOkVqa,
  rocAuc,
  runEvalCommand,
  Tokenizer,
  type VqaPrediction,
  vqaAccuracy,
} from "../ts/src/index.js";

const ROOT = join(import.meta.dirname, "..");
const SHAPES = join(ROOT, "test", "fixtures", "eval-shapes");
const TINY = join(ROOT, "models", "tiny");

function scratch(): string {
  return mkdtempSync(join(tmpdir(), "flamingo-eval-"));
}

function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, "utf8")) as T;
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  return (error as { code?: string } | undefined)?.code;
}

describe("rocAuc", () => {
  it("is 0.75 on scikit-learn's documented example", () => {
    // Of the 4 positive/negative pairs, (0.35 vs 0.4) is the only one ranked wrongly.
    expect(rocAuc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])).toBe(0.75);
  });

  it("counts a tie between a positive and a negative as one half", () => {
    // Pairs: (0.5, 0.5) tie → ½, (0.5, 0.2) → 1, (0.9, 0.5) → 1, (0.9, 0.2) → 1: 3.5 / 4.
    expect(rocAuc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])).toBe(0.875);
  });

  it("refuses labels of one class", () => {
    expect(() => rocAuc([1, 1], [0.2, 0.3])).toThrow(/only one class/);
  });
});

describe("the reference's prompts for evaluated items", () => {
  const cap = (id: string, caption: string) => ({ id, image: `${id}.png`, captions: [` ${caption} `, "other"] });
  const demos = [cap("a", "two red circles"), cap("b", "one blue square")];

  it("shows each demonstration's first caption, stripped, and the query open after Output:", () => {
    expect(captionItemPrompt(cap("q", "x"), demos, 2)).toEqual({
      text: "<image>Output:two red circles<|endofchunk|>\n<image>Output:one blue square<|endofchunk|>\n<image>Output:",
      images: ["a.png", "b.png", "q.png"],
    });
  });

  it("zero-shot shows the demonstrations as text, without their <image> tags or images", () => {
    expect(captionItemPrompt(cap("q", "x"), demos, 0)).toEqual({
      text: "Output:two red circles<|endofchunk|>\nOutput:one blue square<|endofchunk|>\n<image>Output:",
      images: ["q.png"],
    });
  });

  it("shows each VQA demonstration's first answer", () => {
    const item = (id: string, q: string, answers: string[]) => ({ id, image: `${id}.png`, question: q, answers });
    const prompt = vqaItemPrompt(item("q", "how many?", ["2"]), [item("d", "what colour?", ["red", "blue"])], 1);
    expect(prompt.text).toBe(
      "<image>Question:what colour? Short answer:red<|endofchunk|>\n<image>Question:how many? Short answer:",
    );
  });

  it("concatenates HatefulMemes demonstrations with no separator and leaves the query open after Answer:", () => {
    const meme = (id: string, text: string, label: 0 | 1) => ({ id, image: `${id}.png`, text, label });
    const prompt = classificationPrompt(meme("q", "hi", 0), [meme("d", "bye", 1), meme("e", "ok", 0)], 2);
    expect(prompt.text).toBe(
      "<image>is an image with: 'bye' written on it. Is it hateful? Answer:yes<|endofchunk|>" +
        "<image>is an image with: 'ok' written on it. Is it hateful? Answer:no<|endofchunk|>" +
        "<image>is an image with: 'hi' written on it. Is it hateful? Answer:",
    );
    expect(prompt.images).toEqual(["d.png", "e.png", "q.png"]);
  });
});

describe("datasets", () => {
  it("reads the train and test splits of a Karpathy-format file, images under filepath/filename", async () => {
    const common = { annotations: join(SHAPES, "dataset_coco.json"), imageDir: SHAPES };
    const train = await loadCaptionDataset({ ...common, split: "train" });
    const test = await loadCaptionDataset({ ...common, split: "test" });
    expect(train).toHaveLength(8);
    expect(test).toHaveLength(4);
    expect(test[0]).toEqual({
      id: "1008",
      image: join(SHAPES, "images", "shapes_09.png"),
      captions: ["two blue circles", "A picture of two blue circles.", "two blue circles on a white background"],
    });
  });

  it("names the field and the entry of a caption file of the wrong shape", async () => {
    const dir = scratch();
    const file = join(dir, "bad.json");
    writeFileSync(file, JSON.stringify({ images: [{ filename: "a.png", split: "test", sentences: [{ text: "x" }] }] }));
    const error = await loadCaptionDataset({ annotations: file, imageDir: dir, split: "test" }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_DATA");
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/images\[0\]\.sentences\[0\]\.raw/);
    rmSync(dir, { recursive: true });
  });

  it("joins VQA answers to questions by question_id and names COCO images as the reference", async () => {
    const dir = scratch();
    const questions = join(dir, "q.json");
    const annotations = join(dir, "a.json");
    writeFileSync(questions, JSON.stringify({ questions: [{ image_id: 42, question: "what?", question_id: 7 }] }));
    writeFileSync(annotations, JSON.stringify({ annotations: [{ question_id: 7, answers: [{ answer: "red" }] }] }));
    const items = await loadVqaDataset({ questions, annotations, imageDir: join(dir, "val2014") });
    expect(items).toEqual([
      { id: "7", image: join(dir, "val2014", "COCO_val2014_000000000042.jpg"), question: "what?", answers: ["red"] },
    ]);
    rmSync(dir, { recursive: true });
  });

  it("names VizWiz and TextVQA images as the reference does", () => {
    const q = { image_id: "VizWiz_val_00000007.jpg", question: "?", question_id: 1 };
    expect(defaultVqaImagePath("vizwiz")(q, "/d")).toBe(join("/d", "VizWiz_val_00000007.jpg"));
    expect(defaultVqaImagePath("textvqa")({ ...q, image_id: "0054c91397f2fe05" }, "/d")).toBe(
      join("/d", "0054c91397f2fe05.jpg"),
    );
  });

  it("cuts OK-VQA answers at Question/Answer/Short but keeps what follows a comma", () => {
    expect(postprocessOkVqa("red, blue Question: what")).toBe("red, blue ");
    expect(postprocessOkVqa(" skiing Short answer: no")).toBe(" skiing ");
  });

  it("names the field of a VQA annotation file of the wrong shape", async () => {
    const dir = scratch();
    const questions = join(dir, "q.json");
    const annotations = join(dir, "a.json");
    writeFileSync(questions, JSON.stringify({ questions: [{ image_id: 1, question: "q", question_id: 1 }] }));
    writeFileSync(annotations, JSON.stringify({ annotations: [{ question_id: 1, answers: ["red"] }] }));
    const error = await loadVqaDataset({ questions, annotations, imageDir: dir }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_DATA");
    expect(error.message).toMatch(/annotations\[0\]\.answers\[0\]/);
    rmSync(dir, { recursive: true });
  });

  it("names the line of a HatefulMemes record with a bad label", async () => {
    const dir = scratch();
    const file = join(dir, "test.jsonl");
    writeFileSync(
      file,
      `${JSON.stringify({ id: 1, img: "img/1.png", text: "a", label: 0 })}\n${JSON.stringify({ id: 2, img: "img/2.png", text: "b", label: "yes" })}\n`,
    );
    const error = await loadHatefulMemes({ annotations: file, imageDir: dir }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_DATA");
    expect(error.message).toMatch(/line 2/);
    expect(error.message).toMatch(/label/);
    rmSync(dir, { recursive: true });
  });
});

describe("evaluate on models/tiny", () => {
  let model: Flamingo;
  let train: CaptionItem[];
  let test: CaptionItem[];
  const dirs: string[] = [];
  const out = () => {
    const d = scratch();
    dirs.push(d);
    return d;
  };

  beforeAll(async () => {
    model = await Flamingo.fromPretrained(TINY);
    const common = { annotations: join(SHAPES, "dataset_coco.json"), imageDir: SHAPES };
    train = await loadCaptionDataset({ ...common, split: "train" });
    test = await loadCaptionDataset({ ...common, split: "test" });
  });
  afterAll(async () => {
    await model?.dispose();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("captions every test image with its own 2 demonstrations and reports the CIDEr of the written predictions", async () => {
    const output = out();
    const progress: number[] = [];
    const report = await evaluate({
      model,
      task: "coco",
      data: { train, test },
      shots: 2,
      seed: 7,
      batchSize: 3,
      output,
      onProgress: (p) => progress.push(p.done),
    });
    expect(report.predictions).toHaveLength(4);
    expect(new Set(report.predictions.map((p) => p.id))).toEqual(new Set(test.map((t) => t.id)));
    const trainIds = new Set(train.map((t) => t.id));
    for (const p of report.predictions as CaptionPrediction[]) {
      expect(p.demos).toHaveLength(2);
      expect(new Set(p.demos).size).toBe(2);
      for (const d of p.demos) expect(trainIds.has(d)).toBe(true);
      expect(typeof p.caption).toBe("string");
      expect(p.caption).not.toContain('"');
    }
    expect(progress).toEqual([0, 3, 4]);
    expect(report.decoding).toEqual({ numBeams: 3, lengthPenalty: 0, maxNewTokens: 20 });

    const written = readJson<CaptionPrediction[]>(join(output, "predictions.json"));
    const summary = readJson<Omit<EvalReport, "predictions">>(join(output, "report.json"));
    expect(written).toEqual(report.predictions);
    expect(summary).not.toHaveProperty("predictions");
    expect(summary).toMatchObject({ task: "coco", shots: 2, effectiveShots: 2, seed: 7, numSamples: 4 });
    const byId = new Map(test.map((t) => [t.id, t]));
    const recomputed = captionMetrics(
      written.map((p) => ({ candidate: p.caption, references: byId.get(p.id)?.captions ?? [] })),
    );
    expect(summary.metrics.cider).toBeCloseTo(100 * recomputed.cider.score, 12);
    expect(summary.metrics.bleu).toEqual(recomputed.bleu.scores.map((s) => 100 * s));
    console.log(`models/tiny coco 2-shot on eval-shapes: CIDEr ${summary.metrics.cider?.toFixed(3)}`);
  });

  it("draws the same demonstrations for the same seed whatever the batch size, and others for another seed", async () => {
    const run = (seed: number, batchSize: number) =>
      evaluate({ model, task: "coco", data: { train, test }, shots: 3, seed, batchSize, maxNewTokens: 2 });
    const a = await run(1, 4);
    const b = await run(1, 1);
    const c = await run(2, 4);
    expect(b.predictions.map((p) => p.demos)).toEqual(a.predictions.map((p) => p.demos));
    expect(c.predictions.map((p) => p.demos)).not.toEqual(a.predictions.map((p) => p.demos));
  });

  it("resumes from predictions.jsonl: done items are skipped, a cut-off last line is redone", async () => {
    const output = out();
    const options = { model, task: "coco" as const, data: { train, test }, shots: 1, batchSize: 2, output };
    const first = await evaluate(options);
    const jsonl = join(output, "predictions.jsonl");
    const lines = readFileSync(jsonl, "utf8").trimEnd().split("\n");
    expect(lines).toHaveLength(4);

    const again = await evaluate(options);
    expect(again.resumed).toBe(4);
    expect(again.predictions).toEqual(first.predictions);
    expect(readFileSync(jsonl, "utf8").trimEnd().split("\n")).toHaveLength(4);

    // An interrupted run: two items written, the third cut mid-line.
    writeFileSync(jsonl, `${lines[0]}\n${lines[1]}\n${(lines[2] as string).slice(0, 10)}`);
    const resumed = await evaluate(options);
    expect(resumed.resumed).toBe(2);
    expect(resumed.predictions).toEqual(first.predictions);
    const repaired = readFileSync(jsonl, "utf8").trimEnd().split("\n");
    expect(repaired).toHaveLength(4);
    for (const line of repaired) JSON.parse(line);
  });

  it("refuses to resume an output folder made with other settings", async () => {
    const output = out();
    await evaluate({ model, task: "coco", data: { train, test }, shots: 1, numSamples: 1, maxNewTokens: 2, output });
    const code = await codeOf(
      evaluate({ model, task: "coco", data: { train, test }, shots: 2, numSamples: 1, maxNewTokens: 2, output }),
    );
    expect(code).toBe("ERR_EVAL_RUN_MISMATCH");
  });

  it("zero-shot still draws 2 demonstrations, shown as text only", async () => {
    const report = await evaluate({ model, task: "coco", data: { train, test }, shots: 0, numSamples: 2 });
    expect(report.effectiveShots).toBe(2);
    for (const p of report.predictions) expect(p.demos).toHaveLength(2);
  });

  it("refuses items of another task's shape, naming the field", async () => {
    const vqaItems = test.map((t) => ({ id: t.id, image: t.image, question: "q", answers: ["a"] }));
    const error = await evaluate({ model, task: "coco", data: { train, test: vqaItems } }).catch((e) => e);
    expect(error.code).toBe("ERR_INVALID_INPUT");
    expect(error.message).toMatch(/captions/);
  });

  it("refuses a test split with two items of one id (predictions are keyed by id)", async () => {
    const twice = [test[0] as CaptionItem, { ...(test[1] as CaptionItem), id: (test[0] as CaptionItem).id }];
    const error = await evaluate({ model, task: "coco", data: { train, test: twice } }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_DATA");
    expect(error.message).toMatch(/two items with id "1008"/);
  });

  it("stops at an aborted signal with an AbortError, keeping what was finished", async () => {
    const output = out();
    const controller = new AbortController();
    const error = await evaluate({
      model,
      task: "coco",
      data: { train, test },
      shots: 1,
      batchSize: 1,
      maxNewTokens: 2,
      output,
      onProgress: (p) => {
        if (p.done === 2) controller.abort();
      },
      signal: controller.signal,
    }).catch((e) => e);
    expect(error.name).toBe("AbortError");
    expect(readFileSync(join(output, "predictions.jsonl"), "utf8").trimEnd().split("\n")).toHaveLength(2);
  });

  it("fails with ERR_EVAL_NOT_ENOUGH_DEMOS when asked for more shots than the training split has", async () => {
    const error = await evaluate({ model, task: "coco", data: { train, test }, shots: 9 }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_NOT_ENOUGH_DEMOS");
    expect(error.message).toMatch(/9 shots need 9 demonstrations, but the coco training split has only 8 items/);
    const zeroShot = await codeOf(
      evaluate({ model, task: "coco", data: { train: train.slice(0, 1), test }, shots: 0 }),
    );
    expect(zeroShot).toBe("ERR_EVAL_NOT_ENOUGH_DEMOS");
  });

  it("fails with ERR_EVAL_MISSING_IMAGE, naming the files, before generating anything", async () => {
    const dir = out();
    cpSync(join(SHAPES, "dataset_coco.json"), join(dir, "dataset_coco.json"));
    cpSync(join(SHAPES, "images"), join(dir, "images"), { recursive: true });
    rmSync(join(dir, "images", "shapes_10.png"));
    const common = { annotations: join(dir, "dataset_coco.json"), imageDir: dir };
    const data = {
      train: await loadCaptionDataset({ ...common, split: "train" }),
      test: await loadCaptionDataset({ ...common, split: "test" }),
    };
    const output = join(dir, "run");
    const error = await evaluate({ model, task: "coco", data, shots: 1, output }).catch((e) => e);
    expect(error.code).toBe("ERR_EVAL_MISSING_IMAGE");
    expect(error.message).toContain(join(dir, "images", "shapes_10.png"));
    expect(existsSync(join(output, "predictions.jsonl"))).toBe(false);
  });

  it("answers VQA questions and reports the VQA accuracy of the written answers", async () => {
    const dir = out();
    const ask = (items: CaptionItem[], offset: number) => ({
      questions: items.map((t, i) => ({
        image_id: Number(t.id),
        question: "what is in the picture?",
        question_id: offset + i,
      })),
      annotations: items.map((t, i) => ({
        question_id: offset + i,
        answers: Array.from({ length: 10 }, (_, k) => ({
          answer: (t.captions[0] as string).split(" ")[k % 3] as string,
        })),
      })),
    });
    const image = new Map([...train, ...test].map((t) => [t.id, t.image]));
    const split = async (name: string, items: CaptionItem[], offset: number) => {
      const { questions, annotations } = ask(items, offset);
      writeFileSync(join(dir, `${name}_q.json`), JSON.stringify({ questions }));
      writeFileSync(join(dir, `${name}_a.json`), JSON.stringify({ annotations }));
      return loadVqaDataset({
        questions: join(dir, `${name}_q.json`),
        annotations: join(dir, `${name}_a.json`),
        imageDir: dir,
        imagePath: (q) => image.get(String(q.image_id)) as string,
      });
    };
    const data = { train: await split("train", train, 100), test: await split("test", test, 200) };
    const report = await evaluate({ model, task: "vqav2", data, shots: 2, batchSize: 4 });
    expect(report.decoding?.maxNewTokens).toBe(5);
    const answers = report.predictions as VqaPrediction[];
    expect(answers).toHaveLength(4);
    const byId = new Map(data.test.map((t) => [t.id, t.answers]));
    const recomputed = vqaAccuracy(answers.map((p) => ({ prediction: p.answer, answers: byId.get(p.id) ?? [] })));
    expect(report.metrics.vqaAccuracy).toBeCloseTo(100 * recomputed.accuracy, 12);
  });

  it("ranks no/yes on HatefulMemes-style data with cached-media scoring and reports ROC-AUC", async () => {
    const dir = out();
    const records = [...train, ...test].map((t, i) => ({
      id: Number(t.id),
      img: `img/${t.image.split("/").pop()}`,
      text: t.captions[0],
      label: i % 2,
    }));
    const jsonl = (rows: typeof records) => rows.map((r) => JSON.stringify(r)).join("\n");
    writeFileSync(join(dir, "train.jsonl"), jsonl(records.slice(0, 8)));
    writeFileSync(join(dir, "test.jsonl"), jsonl(records.slice(8)));
    const imageDir = join(SHAPES, "images");
    const data = {
      train: await loadHatefulMemes({ annotations: join(dir, "train.jsonl"), imageDir }),
      test: await loadHatefulMemes({ annotations: join(dir, "test.jsonl"), imageDir }),
    };
    const zeroShot = await evaluate({ model, task: "hateful_memes", data, shots: 0 });
    expect(zeroShot.predictions).toHaveLength(4);
    const report = await evaluate({ model, task: "hateful_memes", data, shots: 2 });
    const predictions = report.predictions as ClassificationPrediction[];
    expect(predictions).toHaveLength(4);
    for (const p of predictions) {
      expect(p.scoreYes).toBeGreaterThan(0);
      expect(p.scoreYes).toBeLessThan(1);
      expect(p.predicted).toBe(p.scoreYes > 0.5 ? "yes" : "no");
    }
    const label = new Map(data.test.map((t) => [t.id, t.label]));
    const labels = predictions.map((p) => label.get(p.id) as number);
    expect(report.metrics.rocAuc).toBeCloseTo(
      100 *
        rocAuc(
          labels,
          predictions.map((p) => p.scoreYes),
        ),
      12,
    );
  });
});

describe("evaluate's scoring, with a stand-in model that always says the same", () => {
  // The untrained tiny model scores 0 everywhere; a model that always generates one text
  // gives non-zero scores, so the report's numbers are checked against recomputed ones.
  async function standIn(generated: string) {
    const tokenizer = await Tokenizer.fromFile(join(TINY, "lm", "tokenizer.json"));
    const rows: number[] = [];
    const model = {
      tokenizer,
      summary: () => ({ imageSize: 32 }),
      imageOptions: () => ({ size: 32 }),
      generate: async (input: { langX: { shape: number[] } }) => {
        rows.push(input.langX.shape[0] as number);
        return { text: Array.from({ length: input.langX.shape[0] as number }, () => generated) };
      },
    };
    return { model: model as unknown as Flamingo, rows };
  }

  it("post-processes the generations as the reference and reports their CIDEr and BLEU", async () => {
    const common = { annotations: join(SHAPES, "dataset_coco.json"), imageDir: SHAPES };
    const train = await loadCaptionDataset({ ...common, split: "train" });
    const test = await loadCaptionDataset({ ...common, split: "test" });
    const { model, rows } = await standIn('two "blue" circles Output: one red star');
    const report = await evaluate({ model, task: "coco", data: { train, test }, shots: 2, batchSize: 3 });
    expect(rows).toEqual([3, 1]);
    for (const p of report.predictions as CaptionPrediction[]) expect(p.caption).toBe("two blue circles ");
    const recomputed = captionMetrics(test.map((t) => ({ candidate: "two blue circles ", references: t.captions })));
    expect(report.metrics.cider).toBeGreaterThan(0);
    // The evaluated order is a seeded permutation; CIDEr's mean does not depend on it.
    expect(report.metrics.cider).toBeCloseTo(100 * recomputed.cider.score, 10);
    expect(report.metrics.bleu?.[0]).toBeCloseTo(100 * (recomputed.bleu.scores[0] as number), 10);
  });

  it("cuts VQA answers at the first ', ' and reports their VQA accuracy", async () => {
    const vqa = (id: string, answers: string[]) => ({
      id,
      image: join(SHAPES, "images", "shapes_01.png"),
      question: "?",
      answers,
    });
    const test = [vqa("1", Array(10).fill("red")), vqa("2", [...Array(2).fill("red"), ...Array(8).fill("blue")])];
    const { model } = await standIn("red, blue Question: x");
    const report = await evaluate({ model, task: "vqav2", data: { train: test, test }, shots: 1 });
    for (const p of report.predictions as VqaPrediction[]) expect(p.answer).toBe("red");
    // 10 humans said "red" → 1; 2 humans → 0.6 (the reference's leave-one-out mean).
    expect(report.metrics.vqaAccuracy).toBeCloseTo(80, 10);
  });
});

describe("flamingo eval", () => {
  const io = () => {
    const out = { text: "" };
    const err = { text: "" };
    return {
      out,
      err,
      io: { stdout: { write: (t: string) => (out.text += t) }, stderr: { write: (t: string) => (err.text += t) } },
    };
  };

  it("prints its usage with --help", async () => {
    const { out, io: streams } = io();
    expect(await runEvalCommand(["--help"], streams)).toBe(0);
    expect(out.text).toMatch(/Usage: flamingo eval --task TASK/);
  });

  it("runs an evaluation and prints the report as JSON with --json", async () => {
    const output = scratch();
    const { out, io: streams } = io();
    const args = ["--task", "coco", "--data", SHAPES, "--model", TINY, "--shots", "1", "--num-samples", "2"];
    const status = await runEvalCommand([...args, "--max-new-tokens", "3", "--output", output, "--json"], streams);
    expect(status).toBe(0);
    const printed = JSON.parse(out.text);
    expect(printed).toMatchObject({ task: "coco", shots: 1, numSamples: 2, output });
    expect(printed.metrics.cider).toBe(readJson<EvalReport>(join(output, "report.json")).metrics.cider);
    rmSync(output, { recursive: true });
  });

  it("draws a progress bar on stderr without --json", async () => {
    const output = scratch();
    const { out, err, io: streams } = io();
    const args = ["--task", "coco", "--data", SHAPES, "--model", TINY, "--num-samples", "2", "--max-new-tokens", "2"];
    expect(await runEvalCommand([...args, "--output", output], streams)).toBe(0);
    expect(err.text).toMatch(/coco 0-shot \[#+\] 2\/2/);
    expect(out.text).toMatch(/coco 0-shot, seed 42, 2 items: CIDEr \d+\.\d\d/);
    rmSync(output, { recursive: true });
  });

  it("exits with 2 and names the problem for an unknown task", async () => {
    const { err, io: streams } = io();
    expect(await runEvalCommand(["--task", "imagenet", "--data", SHAPES, "--model", TINY], streams)).toBe(2);
    expect(err.text).toMatch(/unknown task "imagenet"/);
  });

  it("exits with 1 and the error code for a data folder without the annotation file", async () => {
    const dir = scratch();
    const { err, io: streams } = io();
    expect(await runEvalCommand(["--task", "flickr30k", "--data", dir, "--model", TINY], streams)).toBe(1);
    expect(err.text).toMatch(/dataset_flickr30k\.json.*\[ERR_IO\]/s);
    rmSync(dir, { recursive: true });
  });
});
