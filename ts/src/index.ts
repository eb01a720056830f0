/**
 * flamingo-vlm: OpenFlamingo-style vision-language models for Node.js, computed by a Rust
 * engine (candle). The public surface, re-exported explicitly.
 */

export { ErrorCode, FlamingoError } from "./errors.js";
export {
  type BleuOptions,
  BleuOptionsSchema,
  type BleuResult,
  bleu,
  type CaptionMetrics,
  type CaptionMetricsOptions,
  CaptionMetricsOptionsSchema,
  type CaptionSample,
  CaptionSampleSchema,
  type CiderOptions,
  CiderOptionsSchema,
  type CiderResult,
  captionMetrics,
  cider,
  normalizeVqaAnswer,
  PTB_PUNCTUATION,
  processDigitArticle,
  processPunctuation,
  ptbTokenize,
  runPtbTokenizer,
  type TokenizedCaptions,
  type VqaAccuracyOptions,
  VqaAccuracyOptionsSchema,
  type VqaAccuracyResult,
  type VqaSample,
  VqaSampleSchema,
  vqaAccuracy,
} from "./eval/index.js";
export {
  crossAttentionLayers,
  inferDecoderLayersPath,
  type LayerPlan,
  type LmConfigJson,
  numDecoderLayers,
  planLayers,
} from "./layers.js";
export { Flamingo, type LoadReport, type ModelSummary } from "./model.js";
export {
  type CrossAttentionBlockOptions,
  CrossAttentionBlockOptionsSchema,
  type CrossAttentionPlan,
  CrossAttentionPlanSchema,
  type LoadOptions,
  LoadOptionsSchema,
  type PerceiverOptions,
  PerceiverOptionsSchema,
  type Tokens,
  TokensSchema,
} from "./options.js";
export {
  type FloatTensor,
  type FloatTensorInput,
  type ForwardInput,
  ForwardInputSchema,
  type ForwardOutput,
  type IntTensorInput,
} from "./tensor.js";
