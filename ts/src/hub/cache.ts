/**
 * The hub cache, laid out exactly as Python's `huggingface_hub` lays it out, so that one cache
 * serves both:
 *
 * ```
 * {cacheDir}/models--{org}--{name}/
 *   blobs/{etag}                 file contents, named by the hub's ETag (sha256 for LFS files,
 *                                git sha1 for small ones); `{etag}.incomplete` while downloading
 *   snapshots/{commit}/{path}    relative symlink to ../../blobs/{etag} (a copy where symlinks fail)
 *   refs/{revision}              the commit a branch or tag pointed to when last resolved
 *   .no_exist/{commit}/{path}    empty marker: the hub said this file is absent at this commit
 * ```
 */

import { copyFile, mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";

import { ErrorCode, FlamingoError } from "../errors.js";

/** Error codes raised by the hub client, beside the package's {@link ErrorCode}s. */
export const HubErrorCode = {
  /** The repository, revision or file does not exist on the hub. */
  NotFound: "ERR_HUB_NOT_FOUND",
  /** The hub refused access (HTTP 401/403): a private or gated repository, or a bad token. */
  Unauthorized: "ERR_HUB_UNAUTHORIZED",
  /** The downloaded bytes do not hash to what the hub announced; the cache was left as it was. */
  ChecksumMismatch: "ERR_CHECKSUM_MISMATCH",
  /** Offline mode is on and the file is not in the cache. */
  OfflineCacheMiss: "ERR_OFFLINE_CACHE_MISS",
  /** The hub could not be reached, or the transfer broke off (the partial file is kept for resuming). */
  Network: "ERR_NETWORK",
  /** The server answered in a way the hub protocol does not allow (e.g. no `X-Repo-Commit`). */
  Protocol: "ERR_HUB_PROTOCOL",
} as const;

export type HubErrorCode = (typeof HubErrorCode)[keyof typeof HubErrorCode];

const COMMIT_HASH = /^[0-9a-f]{40}$/;

/** Whether a revision is a full commit hash (immutable) rather than a branch or tag name. */
export function isCommitHash(revision: string): boolean {
  return COMMIT_HASH.test(revision);
}

/** An environment flag as `huggingface_hub` reads it: `1`, `true`, `yes` or `on`. */
export function envFlag(value: string | undefined): boolean {
  return value !== undefined && ["1", "true", "yes", "on"].includes(value.trim().toLowerCase());
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
export function hfHome(env: NodeJS.ProcessEnv = process.env): string {
  const home = nonEmpty(env.HF_HOME);
  if (home) return home;
  const xdg = nonEmpty(env.XDG_CACHE_HOME);
  return join(xdg ?? join(homedir(), ".cache"), "huggingface");
}

/**
 * The default cache folder, as `huggingface_hub` picks it: `$HF_HUB_CACHE`, else the legacy
 * `$HUGGINGFACE_HUB_CACHE`, else `{HF_HOME}/hub`.
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return nonEmpty(env.HF_HUB_CACHE) ?? nonEmpty(env.HUGGINGFACE_HUB_CACHE) ?? join(hfHome(env), "hub");
}

/**
 * The access token when none is passed: `$HF_TOKEN`, else the legacy `$HUGGING_FACE_HUB_TOKEN`,
 * else the file `hf auth login` writes (`$HF_TOKEN_PATH`, default `{HF_HOME}/token`).
 */
export async function defaultToken(env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const fromEnv = nonEmpty(env.HF_TOKEN) ?? nonEmpty(env.HUGGING_FACE_HUB_TOKEN);
  if (fromEnv) return fromEnv.trim();
  const file = nonEmpty(env.HF_TOKEN_PATH) ?? join(hfHome(env), "token");
  try {
    return nonEmpty((await readFile(file, "utf8")).trim());
  } catch {
    return undefined;
  }
}

/** `org/name` → `models--org--name`, the repository's folder in the cache. */
export function repoFolderName(repo: string): string {
  return `models--${repo.split("/").join("--")}`;
}

/**
 * Where one repository's files live in a cache. All paths it hands out stay inside `root`:
 * repository paths, revisions and ETags are checked before they become file names.
 */
export class RepoCache {
  /** `{cacheDir}/models--{org}--{name}`. */
  readonly root: string;

  constructor(
    readonly cacheDir: string,
    readonly repo: string,
  ) {
    this.root = join(cacheDir, repoFolderName(repo));
  }

  blob(etag: string): string {
    return join(this.root, "blobs", etag);
  }

  incomplete(etag: string): string {
    return `${this.blob(etag)}.incomplete`;
  }

  snapshotDir(commit: string): string {
    return join(this.root, "snapshots", commit);
  }

  snapshotFile(commit: string, path: string): string {
    return join(this.snapshotDir(commit), ...path.split("/"));
  }

  /** The commit a revision resolves to from the cache alone, if it is known. */
  async commitOf(revision: string): Promise<string | undefined> {
    if (isCommitHash(revision)) return revision;
    try {
      const commit = (await readFile(join(this.root, "refs", ...revision.split("/")), "utf8")).trim();
      return isCommitHash(commit) ? commit : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * What the cache alone says about `path` at `revision`: the file (`hit`), a recorded absence
   * (`absent`), or nothing (`miss`).
   */
  async lookup(
    revision: string,
    path: string,
  ): Promise<
    | { status: "hit"; commit: string; file: string; size: number }
    | { status: "absent"; commit: string }
    | { status: "miss"; commit?: string }
  > {
    const commit = await this.commitOf(revision);
    if (commit === undefined) return { status: "miss" };
    const file = this.snapshotFile(commit, path);
    const found = await statFile(file);
    if (found) return { status: "hit", commit, file, size: found.size };
    if (await statFile(join(this.root, ".no_exist", commit, ...path.split("/")))) {
      return { status: "absent", commit };
    }
    return { status: "miss", commit };
  }

  /** Records that the hub has no `path` at `commit`, so that later lookups need no request. */
  async markAbsent(commit: string, path: string): Promise<void> {
    const marker = join(this.root, ".no_exist", commit, ...path.split("/"));
    await mkdir(dirname(marker), { recursive: true });
    await writeFile(marker, "");
  }

  /** Points `refs/{revision}` at `commit` (nothing to record when the revision is a commit). */
  async writeRef(revision: string, commit: string): Promise<void> {
    if (revision === commit) return;
    const ref = join(this.root, "refs", ...revision.split("/"));
    await mkdir(dirname(ref), { recursive: true });
    await writeFile(ref, commit);
  }

  /**
   * Makes `snapshots/{commit}/{path}` point at `blobs/{etag}`: a relative symlink as
   * `huggingface_hub` makes, or a copy where the file system refuses symlinks (Windows without
   * developer mode).
   */
  async linkSnapshot(commit: string, path: string, etag: string): Promise<string> {
    const link = this.snapshotFile(commit, path);
    const blob = this.blob(etag);
    await mkdir(dirname(link), { recursive: true });
    await rm(link, { force: true });
    try {
      await symlink(relative(dirname(link), blob), link);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw error;
      await copyFile(blob, link);
    }
    return link;
  }
}

async function statFile(path: string): Promise<{ size: number } | undefined> {
  try {
    const s = await stat(path);
    return s.isFile() ? { size: s.size } : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `path` is an existing regular file (following symlinks). */
export async function isFile(path: string): Promise<boolean> {
  return (await statFile(path)) !== undefined;
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/;

/** Checks a repository id (`org/name`, or a bare legacy `name`). */
export function checkRepoId(repo: string): string {
  if (!REPO_ID.test(repo) || repo.includes("..") || repo.includes("--")) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `"${repo}" is not a hub repository id: expected "org/name" (letters, digits, "-", "_", "."; no "--" or "..")`,
    );
  }
  return repo;
}

/**
 * Checks a file path inside a repository (also the shard names an index file lists, which
 * come from the network): `/`-separated, relative, with no empty, `.` or `..` segment, so it
 * can never name a file outside the snapshot folder.
 */
export function checkRepoPath(path: string, what = "file path"): string {
  const segments = path.split("/");
  const bad = path.includes("\\") || path.includes("\0") || segments.some((s) => s === "" || s === "." || s === "..");
  if (bad) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `"${path}" is not a valid ${what}: expected a relative "/"-separated path without "." or ".." segments`,
    );
  }
  return path;
}

/** Checks a revision (branch, tag or commit), which becomes a file name under `refs/`. */
export function checkRevision(revision: string): string {
  try {
    return checkRepoPath(revision, "revision");
  } catch (error) {
    if (error instanceof FlamingoError) {
      throw new FlamingoError(error.code, `"${revision}" is not a valid revision (a branch, tag or commit hash)`);
    }
    throw error;
  }
}

/** An `ETag` header without its weak marker and quotes, as `huggingface_hub` normalises it. */
export function normalizeEtag(etag: string): string {
  return etag.replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
}
