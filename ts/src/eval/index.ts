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
export { EVAL_USAGE, type EvalCommandIo, loadEvalData, runEvalCommand } from "./cli.js";
export {
  type CaptionItem,
  type ClassificationItem,
  defaultVqaImagePath,
  HatefulMemesLineSchema,
  KarpathyFileSchema,
  type KarpathyImage,
  type LoadCaptionsOptions,
  type LoadHatefulMemesOptions,
  type LoadVqaOptions,
  loadCaptionDataset,
  loadHatefulMemes,
  loadVqaDataset,
  type Split,
  VqaAnnotationsFileSchema,
  type VqaDatasetName,
  type VqaItem,
  type VqaQuestion,
  VqaQuestionsFileSchema,
} from "./datasets.js";
export { EvalErrorCode } from "./errors.js";
export { PTB_PUNCTUATION, ptbTokenize, runPtbTokenizer } from "./ptb-tokenize.js";
export { rocAuc } from "./roc-auc.js";
export {
  type CaptionPrediction,
  type ClassificationPrediction,
  EVAL_TASKS,
  type EvalData,
  type EvalMetrics,
  type EvalReport,
  type EvalTask,
  type EvaluateOptions,
  EvaluateOptionsSchema,
  type EvaluateProgress,
  evaluate,
  hatefulMemesPrompt,
  type Prediction,
  postprocessOkVqa,
  type VqaPrediction,
} from "./runner.js";
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
