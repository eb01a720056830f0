/**
 * flamingo-vlm: OpenFlamingo-style vision-language models for Node.js, computed by a Rust
 * engine (candle). The public surface, re-exported explicitly.
 */

export { ErrorCode, FlamingoError } from "./errors.js";
export {
  type DownloadFileOptions,
  DownloadFileOptionsSchema,
  defaultCacheDir,
  downloadFile,
  type FlamingoManifest,
  FlamingoManifestSchema,
  formatBytes,
  formatProgressLine,
  HubErrorCode,
  type HubOptions,
  HubOptionsSchema,
  isReleaseId,
  type ProgressCallback,
  type ProgressRenderer,
  type ProgressStream,
  RELEASE_IDS,
  RELEASES,
  type Release,
  type ReleaseId,
  type RenderProgressOptions,
  RenderProgressOptionsSchema,
  type RepoDownload,
  type ResolvedRelease,
  type ResolveReleaseOptions,
  ResolveReleaseOptionsSchema,
  releaseDownloads,
  renderProgress,
  repoFolderName,
  resolveRelease,
  type Snapshot,
  type SnapshotDownloadOptions,
  SnapshotDownloadOptionsSchema,
  snapshotDownload,
  WEIGHT_FILES,
} from "./hub/index.js";
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
