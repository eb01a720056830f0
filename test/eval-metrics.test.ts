/**
 * BLEU, CIDEr-D, the PTB tokenization they run on, and VQA accuracy, against the reference
 * tools. The expected values (test/fixtures/metrics/expected.json) were made from
 * test/fixtures/metrics/cases.json by scripts/metrics/make_vectors.py: pycocoevalcap 1.2's
 * `Bleu` and `Cider` scorers on the output of its `PTBTokenizer` (CoreNLP 3.4.1 under
 * OpenJDK 17), and the VQA evaluators' answer processing re-implemented from
 * open_flamingo 655f693 and GT-Vision-Lab/VQA a4f1afd / a013f00 (the provenance is recorded
 * in the file).
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import {
  bleu,
  type CaptionSample,
  captionMetrics,
  cider,
  FlamingoError,
  normalizeVqaAnswer,
  ptbTokenize,
  runPtbTokenizer,
  type VqaSample,
  vqaAccuracy,
} from "../ts/src/index.js";
import { REPO_ROOT } from "./helpers/golden.js";

const FIXTURES = join(REPO_ROOT, "test", "fixtures", "metrics");
const TOLERANCE = 1e-6;

interface Scores {
  bleu: { scores: number[]; perImage: number[][] };
  cider: { score: number; perImage: number[] };
}
interface ExpectedCaptionSet extends Scores {
  name: string;
  tokenized: { candidates: string[]; references: string[][] };
  ptbOutput: { candidates: string; references: string };
  tokenizedScores: Scores;
  pretokenizedScores: Scores;
}
interface VqaScores {
  accuracy: number;
  perQuestion: number[];
}

const cases = JSON.parse(readFileSync(join(FIXTURES, "cases.json"), "utf8")) as {
  captionSets: { name: string; samples: CaptionSample[] }[];
  vqa: VqaSample[];
  tokenizerLines: string[];
};
const expected = JSON.parse(readFileSync(join(FIXTURES, "expected.json"), "utf8")) as {
  captionSets: ExpectedCaptionSet[];
  vqa: Record<"openflamingo" | "official" | "official-2021", VqaScores> & { normalizedPredictions: string[] };
  tokenizer: { ptbOutput: string; tokenized: string[] };
};

function expectClose(actual: number[], wanted: number[], what: string): void {
  expect(actual.length, what).toBe(wanted.length);
  actual.forEach((a, i) => {
    const w = wanted[i] as number;
    expect(Math.abs(a - w), `${what}[${i}]: ${a} vs ${w}`).toBeLessThanOrEqual(TOLERANCE);
  });
}

function expectScores(actual: Scores, wanted: Scores, what: string): void {
  expectClose(actual.bleu.scores, wanted.bleu.scores, `${what} BLEU`);
  actual.bleu.perImage.forEach((row, i) => {
    expectClose(row, wanted.bleu.perImage[i] as number[], `${what} BLEU of image ${i}`);
  });
  expectClose([actual.cider.score], [wanted.cider.score], `${what} CIDEr`);
  expectClose(actual.cider.perImage, wanted.cider.perImage, `${what} CIDEr per image`);
}

describe("PTB tokenization", () => {
  it("prints what the Java PTBTokenizer prints, token for token, on the stress lines", () => {
    expect(runPtbTokenizer(cases.tokenizerLines.join("\n"))).toBe(expected.tokenizer.ptbOutput);
  });

  it("gives pycocoevalcap's tokenization of every stress line", () => {
    expect(ptbTokenize(cases.tokenizerLines)).toEqual(expected.tokenizer.tokenized);
  });

  it("tokenizes each caption set's references and candidates as pycocoevalcap does", () => {
    for (const [i, set] of cases.captionSets.entries()) {
      const want = expected.captionSets[i] as ExpectedCaptionSet;
      const references = set.samples.flatMap((s) => s.references);
      const candidates = set.samples.map((s) => s.candidate);
      expect(runPtbTokenizer(references.map((r) => r.replaceAll("\n", " ")).join("\n"))).toBe(
        want.ptbOutput.references,
      );
      expect(runPtbTokenizer(candidates.map((c) => c.replaceAll("\n", " ")).join("\n"))).toBe(
        want.ptbOutput.candidates,
      );
      expect(captionMetrics(set.samples).tokenized).toEqual(want.tokenized);
    }
  });

  it("splits clitics and negations and keeps the bracket codes pycocoevalcap fails to drop", () => {
    expect(ptbTokenize(["The dog's toy (a ball) isn't here; they can't find it!"])).toEqual([
      "the dog 's toy -lrb- a ball -rrb- is n't here they ca n't find it",
    ]);
  });

  it("repeats an abbreviation's period when the next caption starts with a capital", () => {
    // The captions are one text to the tokenizer: "etc." ends a sentence only before "The".
    expect(ptbTokenize(["pots, pans, etc.", "The kitchen"])).toEqual(["pots pans etc.", "the kitchen"]);
    expect(ptbTokenize(["pots, pans, etc.", "the kitchen"])).toEqual(["pots pans etc.", "the kitchen"]);
    expect(runPtbTokenizer("pots, pans, etc.\nThe kitchen")).toBe("pots , pans , etc. .\nthe kitchen");
    expect(runPtbTokenizer("pots, pans, etc.\nthe kitchen")).toBe("pots , pans , etc.\nthe kitchen");
  });
});

describe("BLEU and CIDEr-D", () => {
  for (const [i, set] of cases.captionSets.entries()) {
    const want = expected.captionSets[i] as ExpectedCaptionSet;

    it(`match pycocoevalcap on the "${set.name}" set (${set.samples.length} images)`, () => {
      expectScores(
        { bleu: bleu(set.samples), cider: cider(set.samples) },
        want.tokenizedScores,
        `${set.name} (tokenized)`,
      );
    });

    it(`match pycocoevalcap's scorers on the untokenized "${set.name}" captions`, () => {
      const options = { pretokenized: true };
      expectScores(
        { bleu: bleu(set.samples, options), cider: cider(set.samples, options) },
        want.pretokenizedScores,
        `${set.name} (pretokenized)`,
      );
    });
  }

  it("computes both from one tokenization in captionMetrics", () => {
    const set = cases.captionSets[0] as { samples: CaptionSample[] };
    const both = captionMetrics(set.samples);
    expect(both.bleu).toEqual(bleu(set.samples));
    expect(both.cider).toEqual(cider(set.samples));
  });

  it("scores one image 0 in CIDEr-D, whose document frequencies come from the set itself", () => {
    const { score, perImage } = cider([{ candidate: "a cat on a mat", references: ["a cat on a mat"] }]);
    expect(score).toBe(0);
    expect(perImage).toEqual([0]);
  });

  it("rejects an image without references, an empty set and n = 0 with ERR_INVALID_INPUT", () => {
    const invalid = expect.objectContaining({ code: "ERR_INVALID_INPUT" });
    expect(() => cider([{ candidate: "a cat", references: [] }])).toThrow(FlamingoError);
    expect(() => cider([{ candidate: "a cat", references: [] }])).toThrow(/references/);
    expect(() => bleu([])).toThrow(invalid);
    expect(() => bleu([{ candidate: "a cat", references: ["a cat"] }], { n: 0 })).toThrow(invalid);
  });
});

describe("VQA accuracy", () => {
  for (const evaluator of ["openflamingo", "official", "official-2021"] as const) {
    it(`matches the ${evaluator} evaluator per question and on average`, () => {
      const result = vqaAccuracy(cases.vqa, { evaluator });
      const want = expected.vqa[evaluator];
      expectClose(result.perQuestion, want.perQuestion, `${evaluator} per question`);
      expectClose([result.accuracy], [want.accuracy], `${evaluator} mean`);
    });
  }

  it("normalizes predictions as the reference does", () => {
    expect(cases.vqa.map((c) => normalizeVqaAnswer(c.prediction))).toEqual(expected.vqa.normalizedPredictions);
  });

  it("scores 0, 0.3, 0.6, 0.9 and 1 when 0 to 4 of 10 humans gave the answer", () => {
    const samples = [0, 1, 2, 3, 4].map((n) => ({
      prediction: "left",
      answers: [...Array(n).fill("left"), ...Array(10 - n).fill("right")],
    }));
    expectClose(vqaAccuracy(samples).perQuestion, [0, 0.3, 0.6, 0.9, 1], "closed form");
  });

  it("defaults to OpenFlamingo's evaluator, which normalizes the human answers too", () => {
    const sample = { prediction: "2", answers: [...Array(5).fill("Two"), ...Array(5).fill("3")] };
    expect(vqaAccuracy([sample]).accuracy).toBe(1);
    expect(vqaAccuracy([sample], { evaluator: "official" }).accuracy).toBe(0);
  });

  it("rejects an unknown evaluator with ERR_INVALID_INPUT", () => {
    expect(() => vqaAccuracy([{ prediction: "yes", answers: ["yes"] }], { evaluator: "vqa" as "official" })).toThrow(
      expect.objectContaining({ code: "ERR_INVALID_INPUT" }),
    );
  });
});
