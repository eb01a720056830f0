/**
 * Evaluation metrics as the reference tools compute them: BLEU-1..4 and CIDEr-D as
 * pycocoevalcap 1.2 does (after its Stanford PTB tokenization, re-implemented here without
 * Java), and VQA accuracy as OpenFlamingo's `vqa_metric.py` (or the official evaluator) does.
 */

export { type BleuOptions, BleuOptionsSchema, type BleuResult, bleu } from "./bleu.js";
export {
  type CaptionMetrics,
  type CaptionMetricsOptions,
  CaptionMetricsOptionsSchema,
  captionMetrics,
} from "./caption-metrics.js";
export { type CaptionSample, CaptionSampleSchema, type TokenizedCaptions } from "./captions.js";
export { type CiderOptions, CiderOptionsSchema, type CiderResult, cider } from "./cider.js";
export { PTB_PUNCTUATION, ptbTokenize, runPtbTokenizer } from "./ptb-tokenize.js";
export {
  normalizeVqaAnswer,
  processDigitArticle,
  processPunctuation,
  type VqaAccuracyOptions,
  VqaAccuracyOptionsSchema,
  type VqaAccuracyResult,
  type VqaSample,
  VqaSampleSchema,
  vqaAccuracy,
} from "./vqa.js";
