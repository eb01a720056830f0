/**
 * flamingo-vlm: OpenFlamingo-style vision-language models for Node.js, computed by a Rust
 * engine (candle). The public surface, re-exported explicitly.
 */

export { ErrorCode, FlamingoError } from "./errors.js";
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
