/**
 * VQA accuracy exactly as OpenFlamingo computes it (`open_flamingo/eval/vqa_metric.py`,
 * `VQAEval.evaluate`, mlfoundations/open_flamingo 655f693), or as the official evaluator
 * (GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`) does.
 *
 * Per question, with the 10 human answers: for each leave-one-out subset of 9, `min(1,
 * matches / 3)`; the question scores the mean of the 10 (0, 0.3, 0.6, 0.9 or 1 by how many
 * humans gave the answer). The evaluators differ only in how answers are cleaned (`\n`/`\t`
 * → space, then strip) and normalized ({@link processPunctuation}, then
 * {@link processDigitArticle}) before they are compared:
 *
 * | evaluator | prediction | human answers |
 * | --- | --- | --- |
 * | `openflamingo` | cleaned, normalized | cleaned, normalized |
 * | `official` (VQA v2.0 release, a4f1afd; its Python 3 port c4e6a0e) | cleaned, normalized | as given if all 10 are equal, else `processPunctuation` only |
 * | `official-2021` (master since a013f00) | cleaned; normalized only if the cleaned human answers differ | cleaned; normalized only if they differ |
 *
 * So with `official`, "Two" or "a dog" among differing human answers never matches (they are
 * not lower-cased, number-mapped or stripped of articles), and with `official-2021` a
 * prediction "Yes" misses ten humans who all said "yes".
 */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import { pySplit, pyStrip } from "./python.js";

/** The 21 characters `processPunctuation` removes or turns into spaces. */
const PUNCTUATION = [...';/[]"{}()=+\\_-><@`,?!'];
/** `commaStrip`: a comma between digits (Python's `\\d` is any Unicode decimal digit). */
const DIGIT_COMMA_DIGIT = /\p{Nd},\p{Nd}/u;
/** `periodStrip`, `(?!<=\\d)(\\.)(?!\\d)`: the look-behind is a typo, so any period not before a digit. */
const PERIOD_NOT_BEFORE_DIGIT = /\.(?!\p{Nd})/gu;
/**
 * `periodStrip.sub("", text, re.UNICODE)` passes `re.UNICODE` (32) as the *count*: only the
 * first 32 such periods go.
 */
const PERIOD_STRIP_COUNT = 32;

const NUMBER_WORDS = new Map([
  ["none", "0"],
  ["zero", "0"],
  ["one", "1"],
  ["two", "2"],
  ["three", "3"],
  ["four", "4"],
  ["five", "5"],
  ["six", "6"],
  ["seven", "7"],
  ["eight", "8"],
  ["nine", "9"],
  ["ten", "10"],
]);
const ARTICLES = new Set(["a", "an", "the"]);
/**
 * The reference's 120-entry `contractions` table (key=value), verbatim: a few keys are
 * capitalized ("Im", "Ive") and so never match a lower-cased word, and "somebody'd" maps the
 * other way; both are kept.
 */
const CONTRACTIONS = new Map(
  `
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's
whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've
wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all
yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
`
    .trim()
    .split(/\s+/)
    .map((pair) => pair.split("=") as [string, string]),
);

/**
 * The reference's `processPunctuation`: each of 21 punctuation characters is deleted when it
 * touches a space anywhere in the (original) text, or when the text has a comma between
 * digits, and otherwise becomes a space; then up to 32 periods not followed by a digit go.
 */
export function processPunctuation(text: string): string {
  const hasDigitComma = DIGIT_COMMA_DIGIT.test(text);
  let out = text;
  for (const p of PUNCTUATION) {
    const touchesSpace = text.includes(`${p} `) || text.includes(` ${p}`);
    out = out.replaceAll(p, touchesSpace || hasDigitComma ? "" : " ");
  }
  let stripped = 0;
  return out.replace(PERIOD_NOT_BEFORE_DIGIT, (period) => (stripped++ < PERIOD_STRIP_COUNT ? "" : period));
}

/**
 * The reference's `processDigitArticle`: lower-case, split on whitespace, number words
 * "none"/"zero" … "ten" to digits, drop "a"/"an"/"the", restore apostrophes ("dont" →
 * "don't"), join with single spaces.
 */
export function processDigitArticle(text: string): string {
  return pySplit(text.toLowerCase())
    .map((w) => NUMBER_WORDS.get(w) ?? w)
    .filter((w) => !ARTICLES.has(w))
    .map((w) => CONTRACTIONS.get(w) ?? w)
    .join(" ");
}

/** `\n` and `\t` to spaces, then Python's `strip()`. */
function clean(answer: string): string {
  return pyStrip(answer.replaceAll("\n", " ").replaceAll("\t", " "));
}

/**
 * An answer cleaned and normalized as the evaluators compare it: "  Two dogs.\n" → "2 dogs".
 * (`openflamingo` and `official` always treat predictions this way.)
 */
export function normalizeVqaAnswer(answer: string): string {
  return processDigitArticle(processPunctuation(clean(answer)));
}

const vqaSampleShape = {
  /** The model's answer (after OpenFlamingo's post-processing of the generation). */
  prediction: z.string(),
  /** The human answers (10 in VQAv2, OK-VQA, VizWiz and TextVQA), at least one. */
  answers: z.array(z.string()).min(1),
};
/** One question: a predicted answer and the human answers. */
export const VqaSampleSchema: z.ZodObject<typeof vqaSampleShape, z.core.$strict> = z.strictObject(vqaSampleShape);
export type VqaSample = z.infer<typeof VqaSampleSchema>;

const VqaSamplesSchema = z.array(VqaSampleSchema).min(1);

const vqaAccuracyOptionsShape = {
  /**
   * Whose answer normalization to use: `"openflamingo"` (OpenFlamingo's `vqa_metric.py`,
   * behind its published numbers), `"official"` (the VQA v2.0 release of `vqaEval.py`) or
   * `"official-2021"` (`vqaEval.py` since March 2021). See the module documentation for how
   * they differ. Default: `"openflamingo"`.
   */
  evaluator: z.enum(["openflamingo", "official", "official-2021"]).optional(),
};
/** Options of {@link vqaAccuracy}. */
export const VqaAccuracyOptionsSchema: z.ZodObject<typeof vqaAccuracyOptionsShape, z.core.$strict> =
  z.strictObject(vqaAccuracyOptionsShape);
export type VqaAccuracyOptions = z.infer<typeof VqaAccuracyOptionsSchema>;

/** VQA accuracy, as fractions in [0, 1]. */
export interface VqaAccuracyResult {
  /**
   * Mean over questions. The reference reports `round(100 × accuracy, 2)`; OpenFlamingo's
   * published VQA numbers are that percentage.
   */
  accuracy: number;
  /** Per question, in input order. */
  perQuestion: number[];
}

type Evaluator = NonNullable<VqaAccuracyOptions["evaluator"]>;

/** The prediction and the human answers as the chosen evaluator compares them. */
function compared(prediction: string, answers: readonly string[], evaluator: Evaluator): [string, string[]] {
  switch (evaluator) {
    case "openflamingo":
      return [normalizeVqaAnswer(prediction), answers.map(normalizeVqaAnswer)];
    case "official":
      return [
        normalizeVqaAnswer(prediction),
        new Set(answers).size > 1 ? answers.map(processPunctuation) : [...answers],
      ];
    case "official-2021": {
      const human = answers.map(clean);
      if (new Set(human).size === 1) return [clean(prediction), human];
      return [normalizeVqaAnswer(prediction), human.map((a) => processDigitArticle(processPunctuation(a)))];
    }
  }
}

/**
 * VQA accuracy of predicted answers against human answers. Each human answer is left out in
 * turn (by position: the reference compares answer records, whose ids differ).
 */
export function vqaAccuracy(samples: readonly VqaSample[], options: VqaAccuracyOptions = {}): VqaAccuracyResult {
  const parsedOptions = VqaAccuracyOptionsSchema.safeParse(options);
  if (!parsedOptions.success) throw invalidInput("VQA accuracy options", parsedOptions.error);
  const parsed = VqaSamplesSchema.safeParse(samples);
  if (!parsed.success) throw invalidInput("VQA samples", parsed.error);
  const evaluator = parsedOptions.data.evaluator ?? "openflamingo";

  const perQuestion = parsed.data.map(({ prediction, answers }) => {
    const [predicted, human] = compared(prediction, answers, evaluator);
    const matching = human.filter((a) => a === predicted).length;
    let sum = 0;
    for (const own of human) {
      const others = matching - (own === predicted ? 1 : 0);
      sum += Math.min(1, others / 3);
    }
    return sum / human.length;
  });
  return { accuracy: perQuestion.reduce((a, b) => a + b, 0) / perQuestion.length, perQuestion };
}
