/**
 * Getting models: downloads from the Hugging Face hub into a cache shared with Python, the
 * table of the OpenFlamingo releases, and resolution of a release id or folder to local paths.
 */

export {
  defaultCacheDir,
  HubErrorCode,
  repoFolderName,
} from "./cache.js";
export {
  type DownloadFileOptions,
  DownloadFileOptionsSchema,
  downloadFile,
  type HubOptions,
  HubOptionsSchema,
  type ProgressCallback,
  type Snapshot,
  type SnapshotDownloadOptions,
  SnapshotDownloadOptionsSchema,
  snapshotDownload,
  WEIGHT_FILES,
} from "./download.js";
export {
  formatBytes,
  formatProgressLine,
  type ProgressRenderer,
  type ProgressStream,
  type RenderProgressOptions,
  RenderProgressOptionsSchema,
  renderProgress,
} from "./progress.js";
export {
  type FlamingoManifest,
  FlamingoManifestSchema,
  isReleaseId,
  RELEASE_IDS,
  RELEASES,
  type Release,
  type ReleaseId,
  type RepoDownload,
  type ResolvedRelease,
  type ResolveReleaseOptions,
  ResolveReleaseOptionsSchema,
  releaseDownloads,
  resolveRelease,
} from "./releases.js";
