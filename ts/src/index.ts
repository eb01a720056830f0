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
export { runTrainCommand, TRAIN_USAGE } from "./train/cli.js";
export { type Batch, DataLoader, dataLoader, type SkipStats } from "./train/data.js";
export { type TrainResult, train } from "./train/loop.js";
export {
  type DataLoaderOptions,
  DataLoaderOptionsSchema,
  type DataPosition,
  DataPositionSchema,
  type DataSourceOptions,
  DataSourceOptionsSchema,
  type LossMultipliers,
  LossMultipliersSchema,
  type ScheduleOptions,
  ScheduleOptionsSchema,
  type TrainConfig,
  TrainConfigSchema,
  type TrainData,
  TrainDataSchema,
  type TrainerOptions,
  TrainerOptionsSchema,
  type TrainOutput,
  TrainOutputSchema,
  type TrainProgress,
} from "./train/options.js";
export { formatDuration, renderTrainProgress } from "./train/progress.js";
export { type PartLoss, type StepResult, type TrainableModel, Trainer } from "./train/trainer.js";
