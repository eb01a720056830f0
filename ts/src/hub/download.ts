/**
 * Downloads from a Hugging Face hub (or anything speaking its `resolve` protocol) into the
 * shared cache (see `cache.ts`). One file goes through these steps:
 *
 * 1. the cache alone: `refs/{revision}` → `snapshots/{commit}/{path}`; a hit makes no request;
 * 2. `HEAD {endpoint}/{repo}/resolve/{revision}/{path}`: the commit (`X-Repo-Commit`), the
 *    content hash (`X-Linked-Etag` for LFS files, `ETag` otherwise) and the size;
 * 3. `GET …/resolve/{commit}/{path}`, following the redirect to the CDN, into
 *    `blobs/{etag}.incomplete`, resumed with `Range: bytes=N-` when a partial file is there;
 * 4. the bytes on disk are hashed and compared with the ETag; only then does the file become
 *    `blobs/{etag}` and get linked from the snapshot, and `refs/{revision}` get written.
 */

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat, truncate } from "node:fs/promises";
import { dirname, posix } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

import { z } from "zod";

import { ErrorCode, FlamingoError, invalidInput } from "../errors.js";
import {
  checkRepoId,
  checkRepoPath,
  checkRevision,
  defaultCacheDir,
  defaultToken,
  envFlag,
  HubErrorCode,
  isCommitHash,
  isFile,
  normalizeEtag,
  RepoCache,
} from "./cache.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

/**
 * Reports a file's progress: `bytesDone` of `bytesTotal` (`undefined` when the server does
 * not say) for `file`, named `org/name/path`. Called with the full size once for a file the
 * cache already holds; a resumed download starts at the bytes already on disk.
 */
export type ProgressCallback = (bytesDone: number, bytesTotal: number | undefined, file: string) => void;

const DEFAULT_ENDPOINT = "https://huggingface.co";
const MAX_REDIRECTS = 10;
const USER_AGENT = "flamingo-vlm/0.1.0; hf_hub-compatible";

const hubShape = {
  /**
   * Base URL of the hub. Default: `$HF_ENDPOINT`, else `https://huggingface.co`. Files are
   * fetched from `{endpoint}/{repo}/resolve/{revision}/{path}`.
   */
  endpoint: z.url({ protocol: /^https?$/ }).optional(),
  /**
   * The cache folder, laid out as Python's `huggingface_hub` lays it out, so both can share it.
   * Default: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
   */
  cacheDir: z.string().min(1).optional(),
  /**
   * Access token for private and gated repositories. Sent to the endpoint only, never to the
   * CDN it redirects to. Default: `$HF_TOKEN`, else the token `hf auth login` saved.
   */
  token: z.string().min(1).optional(),
  /**
   * Never touch the network: take files from the cache or fail with
   * `ERR_OFFLINE_CACHE_MISS`. Default: `$HF_HUB_OFFLINE` (`1`/`true`), else `false`.
   */
  offline: z.boolean().optional(),
  /**
   * Ask the hub where `revision` points now even when the cache already resolved it (one `HEAD`
   * per file; files that did not change are not downloaded again). Default: `false`: a branch
   * resolved once stays at that commit until refreshed, and a cached file costs no request.
   * Ignored offline and for commit hashes, which never move.
   */
  refresh: z.boolean().optional(),
  /**
   * How many times a transfer that broke off (or a 429/5xx answer) is retried, resuming where
   * it stopped, before the error is thrown. Default: 3.
   */
  retries: z.number().int().nonnegative().max(100).optional(),
  /** Progress of each file as its bytes arrive (see {@link ProgressCallback}). Default: none. */
  onProgress: z.custom<ProgressCallback>((v) => typeof v === "function", "expected a function").optional(),
  /**
   * Aborts the download with an `ABORT_ERR`; the partial file stays in the cache and the next
   * call resumes it. Default: none.
   */
  signal: z.instanceof(AbortSignal).optional(),
};

/** Where to download from and how: shared by every hub function. */
export const HubOptionsSchema: Strict<typeof hubShape> = z.strictObject(hubShape);
export type HubOptions = z.infer<typeof HubOptionsSchema>;

const revisionShape = {
  /** Branch, tag or full commit hash. Default: `"main"`. */
  revision: z.string().min(1).optional(),
};

const downloadFileShape = {
  /** Repository id, `org/name`. Required. */
  repo: z.string().min(1),
  /** Path of the file inside the repository, `/`-separated. Required. */
  path: z.string().min(1),
  ...revisionShape,
  ...hubShape,
};
/** Options of {@link downloadFile}. */
export const DownloadFileOptionsSchema: Strict<typeof downloadFileShape> = z.strictObject(downloadFileShape);
export type DownloadFileOptions = z.infer<typeof DownloadFileOptionsSchema>;

const snapshotShape = {
  ...revisionShape,
  /** Files fetched when the repository has them and skipped when it does not. Default: none. */
  optionalFiles: z.array(z.string().min(1)).optional(),
  /**
   * Also fetch the model weights, in the first format the repository has, in the engine's
   * order of preference: `model.safetensors`, `model.safetensors.index.json`,
   * `pytorch_model.bin`, `pytorch_model.bin.index.json` (an index brings every shard it lists).
   * A format already in the cache is taken as it is. Default: `false`.
   */
  weights: z.boolean().optional(),
  ...hubShape,
};
/** Options of {@link snapshotDownload}. */
export const SnapshotDownloadOptionsSchema: Strict<typeof snapshotShape> = z.strictObject(snapshotShape);
export type SnapshotDownloadOptions = z.infer<typeof SnapshotDownloadOptionsSchema>;

/** Weight files in the order the engine prefers them (`flamingo_core::io::hf`). */
export const WEIGHT_FILES = [
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
] as const;

/** Files of one repository, all from one commit, in the cache. */
export interface Snapshot {
  /** Repository id. */
  repo: string;
  /** The commit every file was taken from. */
  commit: string;
  /** `snapshots/{commit}` in the cache: an HF model folder holding `files`. */
  dir: string;
  /** Repository paths now in `dir`, in the order they were fetched (weights and shards included). */
  files: string[];
}

/** The options resolved against the environment. */
interface Context {
  endpoint: string;
  cacheDir: string;
  token: string | undefined;
  offline: boolean;
  refresh: boolean;
  retries: number;
  signal: AbortSignal | undefined;
  onProgress: ProgressCallback | undefined;
}

async function context(options: HubOptions): Promise<Context> {
  const offline = options.offline ?? envFlag(process.env.HF_HUB_OFFLINE);
  const endpoint = options.endpoint ?? (process.env.HF_ENDPOINT || DEFAULT_ENDPOINT);
  if (!URL.canParse(endpoint) || !/^https?:$/.test(new URL(endpoint).protocol)) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `the hub endpoint "${endpoint}" (HF_ENDPOINT) is not an http(s) URL`,
    );
  }
  return {
    endpoint: endpoint.replace(/\/+$/, ""),
    cacheDir: options.cacheDir ?? defaultCacheDir(),
    token: offline ? undefined : (options.token ?? (await defaultToken())),
    offline,
    refresh: options.refresh ?? false,
    retries: options.retries ?? 3,
    signal: options.signal,
    onProgress: options.onProgress,
  };
}

/**
 * Downloads one file of a hub repository into the cache (or finds it there) and returns its
 * path in the cache's snapshot folder.
 *
 * Throws a `FlamingoError`: `ERR_HUB_NOT_FOUND` (no such repository, revision or file),
 * `ERR_HUB_UNAUTHORIZED` (set `HF_TOKEN`), `ERR_CHECKSUM_MISMATCH` (nothing was written),
 * `ERR_OFFLINE_CACHE_MISS`, `ERR_NETWORK` (after `retries`; the partial file is kept) or
 * `ABORT_ERR`.
 */
export async function downloadFile(options: DownloadFileOptions): Promise<string> {
  const parsed = DownloadFileOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("download options", parsed.error);
  const { repo, path, revision = "main", ...hub } = parsed.data;
  checkRepoId(repo);
  checkRepoPath(path);
  checkRevision(revision);
  const ctx = await context(hub);
  const got = await obtain(ctx, repo, revision, path, true);
  if (got.status !== "file") throw new Error("unreachable: a required file is either found or an error");
  return got.file;
}

/**
 * Downloads several files of one repository, all from the commit the first one resolves to,
 * and returns the snapshot folder: with `weights: true` it is an HF model folder the engine
 * loads as it is. Errors as {@link downloadFile}.
 */
export async function snapshotDownload(
  repo: string,
  files: readonly string[],
  options: SnapshotDownloadOptions = {},
): Promise<Snapshot> {
  const parsed = SnapshotDownloadOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("snapshot options", parsed.error);
  const { revision: asked = "main", optionalFiles = [], weights = false, ...hub } = parsed.data;
  checkRepoId(repo);
  checkRevision(asked);
  for (const f of [...files, ...optionalFiles]) checkRepoPath(f);
  if (files.length === 0 && optionalFiles.length === 0 && !weights) {
    throw new FlamingoError(ErrorCode.InvalidInput, "snapshotDownload needs at least one file, or weights: true");
  }
  const ctx = await context(hub);

  // Every file after the first is asked for at the first one's commit, so a push to the
  // branch in the middle of a download cannot mix two versions in one folder.
  let revision = asked;
  let commit: string | undefined;
  const fetched: string[] = [];
  const take = async (path: string, required: boolean): Promise<string | undefined> => {
    const got = await obtain(ctx, repo, revision, path, required);
    if (got.commit !== undefined && commit === undefined) {
      commit = got.commit;
      revision = got.commit;
    }
    if (got.status !== "file") return undefined;
    fetched.push(path);
    return got.file;
  };

  for (const f of files) await take(f, true);
  for (const f of optionalFiles) await take(f, false);
  if (weights) await takeWeights(ctx, repo, () => revision, take);

  if (commit === undefined) {
    // Only optional files were asked for, offline, and none was cached.
    throw new FlamingoError(
      HubErrorCode.OfflineCacheMiss,
      `no file of ${repo}@${asked} is in the cache (${ctx.cacheDir}) and offline mode is on`,
    );
  }
  return { repo, commit, dir: new RepoCache(ctx.cacheDir, repo).snapshotDir(commit), files: fetched };
}

/** The weights: a cached format if there is one, else the first the hub has; then the shards. */
async function takeWeights(
  ctx: Context,
  repo: string,
  revision: () => string,
  take: (path: string, required: boolean) => Promise<string | undefined>,
): Promise<void> {
  const cache = new RepoCache(ctx.cacheDir, repo);
  let chosen: string | undefined;
  for (const candidate of WEIGHT_FILES) {
    if ((await lookup(ctx, cache, revision(), candidate)).status === "hit") {
      chosen = candidate;
      break;
    }
  }
  if (chosen === undefined && ctx.offline) {
    throw new FlamingoError(
      HubErrorCode.OfflineCacheMiss,
      `the weights of ${repo}@${revision()} are not in the cache (${ctx.cacheDir}; looked for ` +
        `${WEIGHT_FILES.join(", ")}) and offline mode is on`,
    );
  }
  const candidates = chosen === undefined ? WEIGHT_FILES : [chosen];
  for (const candidate of candidates) {
    const file = await take(candidate, chosen !== undefined);
    if (file === undefined) continue;
    if (candidate.endsWith(".index.json")) {
      for (const shard of await shardsOf(file, repo, candidate)) await take(shard, true);
    }
    return;
  }
  throw new FlamingoError(
    HubErrorCode.NotFound,
    `not found: weights of ${repo}@${revision()} (the repository has none of ${WEIGHT_FILES.join(", ")})`,
  );
}

const IndexSchema = z.object({ weight_map: z.record(z.string(), z.string().min(1)) });

/** The shard files an HF `*.index.json` lists, once each, in order of first mention. */
async function shardsOf(indexFile: string, repo: string, indexPath: string): Promise<string[]> {
  const label = `${repo}/${indexPath}`;
  let json: unknown;
  try {
    json = JSON.parse(await readFile(indexFile, "utf8"));
  } catch (error) {
    throw new FlamingoError(ErrorCode.CorruptFile, `${label} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const parsed = IndexSchema.safeParse(json);
  if (!parsed.success) {
    throw new FlamingoError(ErrorCode.CorruptFile, `${label} has no "weight_map" of tensor names to shard files`);
  }
  const shards = [...new Set(Object.values(parsed.data.weight_map))];
  // Shard names come from the network: each must stay inside the snapshot folder.
  const folder = posix.dirname(indexPath);
  return shards.map((s) => checkRepoPath(folder === "." ? s : `${folder}/${s}`, `shard name in ${label}`));
}

type Obtained =
  | { status: "file"; file: string; commit: string }
  | { status: "absent"; commit: string | undefined }
  | { status: "unknown"; commit: undefined };

/** One file: from the cache, else from the hub. `required` turns an absence into an error. */
async function obtain(
  ctx: Context,
  repo: string,
  revision: string,
  path: string,
  required: boolean,
): Promise<Obtained> {
  const cache = new RepoCache(ctx.cacheDir, repo);
  const what = `${repo}/${path}@${revision}`;
  const label = `${repo}/${path}`;
  throwIfAborted(ctx, what);

  const cached = await lookup(ctx, cache, revision, path);
  if (cached.status === "hit") {
    ctx.onProgress?.(cached.size, cached.size, label);
    return { status: "file", file: cached.file, commit: cached.commit };
  }
  if (cached.status === "absent") {
    if (required)
      throw notFound(ctx, what, `recorded as absent at ${cached.commit} in the cache; refresh: true asks again`);
    return { status: "absent", commit: cached.commit };
  }
  if (ctx.offline) {
    if (!required) return { status: "unknown", commit: undefined };
    throw new FlamingoError(
      HubErrorCode.OfflineCacheMiss,
      `${what} is not in the cache and offline mode is on (offline: true or HF_HUB_OFFLINE=1); ` +
        `the cache is ${ctx.cacheDir}: go online once to download it there`,
    );
  }

  return withRetries(ctx, async (): Promise<Obtained> => {
    const meta = await headFile(ctx, repo, revision, path, what);
    if (meta.status === "absent") {
      if (meta.commit !== undefined) {
        await cache.markAbsent(meta.commit, path);
        await cache.writeRef(revision, meta.commit);
      }
      if (required) throw notFound(ctx, what, "no such file at this revision");
      return { status: "absent", commit: meta.commit };
    }
    const blob = cache.blob(meta.etag);
    if (await isFile(blob)) {
      const size = (await stat(blob)).size;
      ctx.onProgress?.(size, size, label);
    } else {
      const tmp = cache.incomplete(meta.etag);
      await mkdir(dirname(tmp), { recursive: true });
      await transfer(ctx, resolveUrl(ctx.endpoint, repo, meta.commit, path), tmp, meta.size, what, label);
      await verify(tmp, meta.etag, what);
      await rename(tmp, blob);
    }
    const file = await cache.linkSnapshot(meta.commit, path, meta.etag);
    await cache.writeRef(revision, meta.commit);
    return { status: "file", file, commit: meta.commit };
  });
}

/** The cache's answer, or none when the caller wants the hub's answer (`refresh`). */
async function lookup(ctx: Context, cache: RepoCache, revision: string, path: string) {
  if (ctx.refresh && !ctx.offline && !isCommitHash(revision)) return { status: "miss" } as const;
  return cache.lookup(revision, path);
}

function resolveUrl(endpoint: string, repo: string, revision: string, path: string): string {
  const repoPart = repo.split("/").map(encodeURIComponent).join("/");
  const pathPart = path.split("/").map(encodeURIComponent).join("/");
  return `${endpoint}/${repoPart}/resolve/${encodeURIComponent(revision)}/${pathPart}`;
}

type Metadata = { status: "file"; commit: string; etag: string; size: number | undefined };

/** `HEAD` on the resolve URL: where the file is and what it hashes to. */
async function headFile(
  ctx: Context,
  repo: string,
  revision: string,
  path: string,
  what: string,
): Promise<Metadata | { status: "absent"; commit: string | undefined }> {
  const url = resolveUrl(ctx.endpoint, repo, revision, path);
  // Relative redirects (a renamed repository) are the hub's own and are followed; an absolute
  // one goes to the CDN, and the metadata is on the redirect itself, as huggingface_hub reads it.
  const response = await hubFetch(ctx, url, "HEAD", { "accept-encoding": "identity" }, "relative");
  const h = response.headers;
  const commit = h.get("x-repo-commit") ?? undefined;
  const hubCode = h.get("x-error-code");
  // A missing file is an answer, not a failure: optional files and weight formats are probed so.
  if (response.status === 404 && hubCode !== "RepoNotFound" && hubCode !== "RevisionNotFound") {
    return { status: "absent", commit };
  }
  if (response.status >= 400) throw statusError(ctx, response, what);
  const etag = h.get("x-linked-etag") ?? h.get("etag");
  if (commit === undefined || etag === null) {
    throw new FlamingoError(
      HubErrorCode.Protocol,
      `${ctx.endpoint} answered ${what} without ${commit === undefined ? "X-Repo-Commit" : "an ETag"}: ` +
        "it does not look like a Hugging Face hub (check HF_ENDPOINT, or a proxy in between)",
    );
  }
  const normalized = normalizeEtag(etag);
  if (!/^[\w.-]+$/.test(normalized) || !/^[0-9a-f]{40}$/.test(commit)) {
    throw new FlamingoError(HubErrorCode.Protocol, `${ctx.endpoint} sent a malformed ETag or commit for ${what}`);
  }
  const sizeHeader = h.get("x-linked-size") ?? h.get("content-length");
  const size = sizeHeader === null ? undefined : Number(sizeHeader);
  return { status: "file", commit, etag: normalized, size: Number.isSafeInteger(size) ? size : undefined };
}

/**
 * `GET` into `tmp`, appending to what is there with a `Range` request. A server that ignores
 * the range (200 instead of 206) gets the file rewritten from its first byte.
 */
async function transfer(
  ctx: Context,
  url: string,
  tmp: string,
  total: number | undefined,
  what: string,
  label: string,
): Promise<void> {
  let offset = await sizeOf(tmp);
  if (total !== undefined && offset > total) {
    await truncate(tmp, 0);
    offset = 0;
  }
  if (total !== undefined && offset === total) {
    if (total === 0) await (await open(tmp, "w")).close();
    return;
  }
  const headers: Record<string, string> = { "accept-encoding": "identity" };
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const response = await hubFetch(ctx, url, "GET", headers, "all");
  if (response.status === 206) {
    const start = /^bytes (\d+)-/.exec(response.headers.get("content-range") ?? "")?.[1];
    if (Number(start) !== offset) {
      await response.body?.cancel();
      await truncate(tmp, 0);
      throw retryable(
        new FlamingoError(HubErrorCode.Protocol, `the server resumed ${what} at the wrong offset; restarting it`),
      );
    }
  } else if (response.status === 200) {
    offset = 0;
  } else if (response.status === 416) {
    await response.body?.cancel();
    await truncate(tmp, 0);
    throw retryable(new FlamingoError(HubErrorCode.Protocol, `the server refused to resume ${what}; restarting it`));
  } else {
    await response.body?.cancel();
    throw statusError(ctx, response, what);
  }

  let done = offset;
  ctx.onProgress?.(done, total, label);
  const file = await open(tmp, offset === 0 ? "w" : "a");
  try {
    if (response.body) {
      for await (const chunk of response.body) {
        await file.write(chunk);
        done += chunk.byteLength;
        ctx.onProgress?.(done, total, label);
      }
    }
  } catch (error) {
    throwIfAborted(ctx, what);
    throw retryable(
      new FlamingoError(
        HubErrorCode.Network,
        `the download of ${what} broke off after ${done}${total === undefined ? "" : ` of ${total}`} bytes ` +
          `(${reason(error)}); the partial file is kept and the next call resumes it`,
        { cause: error },
      ),
    );
  } finally {
    await file.close();
  }
  if (total !== undefined && done < total) {
    throw retryable(
      new FlamingoError(
        HubErrorCode.Network,
        `the download of ${what} ended after ${done} of ${total} bytes; the partial file is kept and the next call resumes it`,
      ),
    );
  }
  if (total !== undefined && done > total) {
    await rm(tmp, { force: true });
    throw new FlamingoError(HubErrorCode.Protocol, `the server sent ${done} bytes for ${what}, announced ${total}`);
  }
}

/**
 * Checks the bytes on disk against the ETag. The hub's ETag is a content hash: the sha256 for
 * LFS files (`X-Linked-Etag`) and the git blob sha1 (`sha1("blob {size}\0" + bytes)`) for
 * files kept in git. Any other ETag (not a hub, or a proxy) says nothing checkable, so the
 * file is taken as it is. Reading back from disk also checks what was actually written.
 */
async function verify(tmp: string, etag: string, what: string): Promise<void> {
  let kind: "sha256" | "git-sha1";
  if (/^[0-9a-f]{64}$/.test(etag)) kind = "sha256";
  else if (/^[0-9a-f]{40}$/.test(etag)) kind = "git-sha1";
  else return;
  const hash = createHash(kind === "sha256" ? "sha256" : "sha1");
  if (kind === "git-sha1") hash.update(`blob ${(await stat(tmp)).size}\0`);
  for await (const chunk of createReadStream(tmp)) hash.update(chunk as Buffer);
  const actual = hash.digest("hex");
  if (actual === etag) return;
  await rm(tmp, { force: true });
  throw new FlamingoError(
    HubErrorCode.ChecksumMismatch,
    `checksum mismatch for ${what}: the hub announced ${kind} ${etag} but the bytes received hash to ${actual}; ` +
      "the partial download was deleted and the cache was not modified",
  );
}

/**
 * `fetch` with redirects followed by hand, so that the token goes to the endpoint's origin only
 * (a CDN gets a pre-signed URL, not the user's credentials) and so that `HEAD` can stop at the
 * CDN redirect, where the hub puts its metadata.
 */
async function hubFetch(
  ctx: Context,
  url: string,
  method: "HEAD" | "GET",
  headers: Record<string, string>,
  follow: "relative" | "all",
): Promise<Response> {
  const hubOrigin = new URL(ctx.endpoint).origin;
  let current = new URL(url);
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const sent: Record<string, string> = { "user-agent": USER_AGENT, ...headers };
    if (ctx.token !== undefined && current.origin === hubOrigin) sent.authorization = `Bearer ${ctx.token}`;
    let response: Response;
    try {
      response = await fetch(current, { method, headers: sent, redirect: "manual", signal: ctx.signal });
    } catch (error) {
      throwIfAborted(ctx, current.href);
      throw retryable(
        new FlamingoError(
          HubErrorCode.Network,
          `could not reach ${current.origin} (${reason(error)}); to use only what is cached, set HF_HUB_OFFLINE=1`,
          { cause: error },
        ),
      );
    }
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || location === null) return response;
    if (follow === "relative" && /^([a-z][a-z0-9+.-]*:|\/\/)/i.test(location)) return response;
    await response.body?.cancel();
    current = new URL(location, current);
  }
  throw new FlamingoError(HubErrorCode.Protocol, `more than ${MAX_REDIRECTS} redirects from ${url}`);
}

function statusError(ctx: Context, response: Response, what: string): FlamingoError {
  const status = response.status;
  const hubCode = response.headers.get("x-error-code");
  const detail = hubCode ? `HTTP ${status}, ${hubCode}` : `HTTP ${status}`;
  if (status === 401 || status === 403) {
    const tokenHint =
      ctx.token === undefined
        ? "no token was sent: set HF_TOKEN (or pass token) to a token with read access"
        : "the token sent (token option, HF_TOKEN or the saved login) was refused or lacks access";
    return new FlamingoError(
      HubErrorCode.Unauthorized,
      `access denied to ${what} (${detail}): the repository is private or gated, or does not exist; ` +
        `${tokenHint}, and for a gated repository accept its terms on the hub first`,
    );
  }
  if (status === 404) {
    const why = hubCode === "RevisionNotFound" ? "no such revision" : "no such repository";
    return notFound(ctx, what, why);
  }
  const error = new FlamingoError(HubErrorCode.Network, `${ctx.endpoint} answered ${detail} for ${what}`);
  return status === 429 || status >= 500 ? retryable(error) : error;
}

function notFound(ctx: Context, what: string, why: string): FlamingoError {
  return new FlamingoError(HubErrorCode.NotFound, `not found: ${what} on ${ctx.endpoint} (${why})`);
}

/** Errors worth another try: the network, a 429/5xx answer, a bad resume. */
const retryables = new WeakSet<Error>();

function retryable(error: FlamingoError): FlamingoError {
  retryables.add(error);
  return error;
}

async function withRetries<T>(ctx: Context, attempt: () => Promise<T>): Promise<T> {
  for (let tries = 0; ; tries++) {
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof Error) || !retryables.has(error) || tries >= ctx.retries) throw error;
      try {
        await delay(Math.min(250 * 2 ** tries, 4000), undefined, { signal: ctx.signal });
      } catch {
        throwIfAborted(ctx, "the download");
      }
    }
  }
}

function throwIfAborted(ctx: Context, what: string): void {
  if (!ctx.signal?.aborted) return;
  throw new FlamingoError(
    ErrorCode.Aborted,
    `the download of ${what} was aborted; a partial file stays in the cache and the next call resumes it`,
    { cause: ctx.signal.reason },
  );
}

function reason(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message ?? String(error);
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}
