/**
 * A local stand-in for the Hugging Face hub, speaking the part of its protocol that downloads
 * use, on 127.0.0.1 (a random port):
 *
 * - `HEAD|GET /{org}/{name}/resolve/{revision}/{path}` with `X-Repo-Commit`; a file kept in
 *   git answers 200 with `ETag: "<git blob sha1>"`; an LFS file answers 302 to the CDN with
 *   `X-Linked-Etag: "<sha256>"` and `X-Linked-Size`; 404s carry `X-Error-Code`
 *   (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`); a renamed repository answers a
 *   relative 307 to its new name; a gated one wants `Authorization: Bearer <token>`;
 * - `GET /cdn/{sha256}` on a second port (another origin, like the hub's CDN): the LFS bytes,
 *   with `Range: bytes=N-` (206 + `Content-Range`).
 *
 * Hooks make it misbehave: close the socket after N bytes, send corrupted bytes under the
 * right hash, ignore `Range`. Every request is logged for the tests to inspect.
 */

import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** A file of a fake repository: its bytes, and whether the hub stores it in LFS. */
export interface FakeFile {
  content: Uint8Array | string;
  /** Served through the CDN redirect, identified by its sha256. Default: `false`. */
  lfs?: boolean;
}

export interface FakeRepo {
  /** Commit hash `main` points to. Default: the sha1 of the repository id. */
  commit?: string;
  files: Record<string, FakeFile>;
  /** Wants `Authorization: Bearer {hub.token}`; answers 401 `GatedRepo` otherwise. */
  gated?: boolean;
}

/** One request as the server saw it. */
export interface FakeRequest {
  method: string;
  /** Path and query, as sent. */
  url: string;
  /** The `Range` header, if any. */
  range: string | undefined;
  /** The `Authorization` header, if any. */
  authorization: string | undefined;
  /** The status answered. */
  status: number;
}

type Reply =
  | { status: number; headers: Record<string, string> }
  | { file: StoredFile; headers: Record<string, string> };

interface StoredFile {
  bytes: Buffer;
  lfs: boolean;
  sha256: string;
  gitSha1: string;
  /** `org/name/path`, the key of the hooks. */
  key: string;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The id git gives a blob: `sha1("blob {size}\0" + bytes)`. */
export function gitBlobSha1(bytes: Uint8Array): string {
  return createHash("sha1").update(`blob ${bytes.byteLength}\0`).update(bytes).digest("hex");
}

export class FakeHub {
  /** `http://127.0.0.1:{port}`: the hub. */
  readonly endpoint: string;
  /** `http://127.0.0.1:{other port}`: the CDN that LFS files redirect to (another origin, as on the real hub). */
  readonly cdnEndpoint: string;
  /** Every request, in order. */
  readonly requests: FakeRequest[] = [];
  /** The token gated repositories accept. */
  token = "hf_fake_token";
  /** Answer `Range` requests with 200 and the whole file, as some servers do. */
  ignoreRange = false;

  readonly #servers: Server[];
  readonly #repos = new Map<string, { commit: string; gated: boolean; files: Map<string, StoredFile> }>();
  readonly #renamed = new Map<string, string>();
  readonly #byHash = new Map<string, StoredFile>();
  readonly #interruptions = new Map<string, { afterBytes: number; times: number }>();
  readonly #corrupted = new Set<string>();

  private constructor(servers: [Server, Server]) {
    this.#servers = servers;
    const [hub, cdn] = servers.map((s) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`);
    this.endpoint = hub ?? "";
    this.cdnEndpoint = cdn ?? "";
  }

  /** Starts the hub and its CDN on 127.0.0.1, on ports the system picks. */
  static async start(): Promise<FakeHub> {
    let hub: FakeHub | undefined;
    const listen = async (): Promise<Server> => {
      const server = createServer((req, res) => hub?.handle(req, res));
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", resolve);
      });
      return server;
    };
    hub = new FakeHub([await listen(), await listen()]);
    return hub;
  }

  /** Adds (or replaces) a repository; returns its commit hash. */
  addRepo(repo: string, spec: FakeRepo): string {
    const commit = spec.commit ?? createHash("sha1").update(repo).digest("hex");
    const files = new Map<string, StoredFile>();
    for (const [path, file] of Object.entries(spec.files)) {
      const bytes = Buffer.from(typeof file.content === "string" ? Buffer.from(file.content) : file.content);
      const stored: StoredFile = {
        bytes,
        lfs: file.lfs ?? false,
        sha256: sha256Hex(bytes),
        gitSha1: gitBlobSha1(bytes),
        key: `${repo}/${path}`,
      };
      files.set(path, stored);
      this.#byHash.set(stored.sha256, stored);
    }
    this.#repos.set(repo, { commit, gated: spec.gated ?? false, files });
    return commit;
  }

  /** `oldRepo` now answers with a relative redirect to `newRepo`, as the hub does after a rename. */
  rename(oldRepo: string, newRepo: string): void {
    this.#renamed.set(oldRepo, newRepo);
  }

  /** The next `times` transfers of `org/name/path` stop after `afterBytes` body bytes: the socket is closed. */
  interrupt(key: string, afterBytes: number, times = 1): void {
    this.#interruptions.set(key, { afterBytes, times });
  }

  /** While on, `org/name/path` is served with its first byte flipped, under its true hash. */
  corrupt(key: string, on = true): void {
    if (on) this.#corrupted.add(key);
    else this.#corrupted.delete(key);
  }

  /** Requests whose path (without the query) starts with `prefix`. */
  requestsTo(prefix: string): FakeRequest[] {
    return this.requests.filter((r) => r.url.split("?")[0]?.startsWith(prefix));
  }

  async close(): Promise<void> {
    for (const server of this.#servers) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const record: FakeRequest = {
      method: req.method ?? "",
      url: req.url ?? "",
      range: req.headers.range,
      authorization: req.headers.authorization,
      status: 0,
    };
    this.requests.push(record);
    res.on("finish", () => {
      record.status = res.statusCode;
    });
    res.on("close", () => {
      record.status ||= res.statusCode;
    });
    const reply = this.route(req);
    if ("file" in reply) this.serveBytes(req, res, reply.file, reply.headers);
    else this.answer(req, res, reply.status, reply.headers);
  }

  /** What to answer: headers only, or a file's bytes. */
  private route(req: IncomingMessage): Reply {
    const url = new URL(req.url ?? "/", this.endpoint);
    const segments = url.pathname.split("/").slice(1).map(decodeURIComponent);
    if (segments[0] === "cdn" && segments.length === 2) {
      const file = this.#byHash.get(segments[1] ?? "");
      return file === undefined ? { status: 404, headers: {} } : { file, headers: { ETag: `"${file.sha256}"` } };
    }
    if (segments.length >= 5 && segments[2] === "resolve") {
      const [org, name, , revision, ...path] = segments as [string, string, string, string, ...string[]];
      return this.resolve(req, `${org}/${name}`, revision, path.join("/"));
    }
    return { status: 404, headers: {} };
  }

  private resolve(req: IncomingMessage, repoId: string, revision: string, path: string): Reply {
    const renamed = this.#renamed.get(repoId);
    if (renamed !== undefined) {
      return { status: 307, headers: { Location: `/${renamed}/resolve/${encodeURIComponent(revision)}/${path}` } };
    }
    const repo = this.#repos.get(repoId);
    if (repo === undefined) return { status: 404, headers: { "X-Error-Code": "RepoNotFound" } };
    if (repo.gated && req.headers.authorization !== `Bearer ${this.token}`) {
      return { status: 401, headers: { "X-Error-Code": "GatedRepo" } };
    }
    if (revision !== "main" && revision !== repo.commit) {
      return { status: 404, headers: { "X-Error-Code": "RevisionNotFound" } };
    }
    const commit = { "X-Repo-Commit": repo.commit };
    const file = repo.files.get(path);
    if (file === undefined) return { status: 404, headers: { ...commit, "X-Error-Code": "EntryNotFound" } };
    if (!file.lfs) return { file, headers: { ...commit, ETag: `"${file.gitSha1}"` } };
    // The git ETag of an LFS file is its pointer's; the content hash is X-Linked-Etag.
    const pointer = `version https://git-lfs.github.com/spec/v1\noid sha256:${file.sha256}\nsize ${file.bytes.byteLength}\n`;
    return {
      status: 302,
      headers: {
        ...commit,
        ETag: `"${gitBlobSha1(Buffer.from(pointer))}"`,
        "X-Linked-Etag": `"${file.sha256}"`,
        "X-Linked-Size": String(file.bytes.byteLength),
        Location: `${this.cdnEndpoint}/cdn/${file.sha256}?X-Amz-Signature=fake`,
      },
    };
  }

  /** The bytes of a file, honouring `Range: bytes=N-` unless told not to, and the hooks. */
  private serveBytes(
    req: IncomingMessage,
    res: ServerResponse,
    file: StoredFile,
    headers: Record<string, string>,
  ): void {
    let bytes = file.bytes;
    if (this.#corrupted.has(file.key) && bytes.byteLength > 0) {
      bytes = Buffer.from(bytes);
      bytes[0] = (bytes[0] ?? 0) ^ 0xff;
    }
    const size = bytes.byteLength;
    let start = 0;
    let status = 200;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range && !this.ignoreRange) {
      start = Number(range[1]);
      if (start >= size) {
        this.answer(req, res, 416, { ...headers, "Content-Range": `bytes */${size}` });
        return;
      }
      status = 206;
      headers = { ...headers, "Content-Range": `bytes ${start}-${size - 1}/${size}` };
    }
    const body = bytes.subarray(start);
    res.writeHead(status, { ...headers, "Accept-Ranges": "bytes", "Content-Length": String(body.byteLength) });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    const cut = req.method === "GET" ? this.#interruptions.get(file.key) : undefined;
    if (cut !== undefined && cut.times > 0) {
      cut.times--;
      // Send the first bytes, give the client a moment to read them (a fetch body stream that
      // errors drops the chunks it had queued), then drop the connection mid-body.
      res.write(body.subarray(0, cut.afterBytes), () => setTimeout(() => res.socket?.destroy(), 100));
      return;
    }
    res.end(body);
  }

  private answer(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string>): void {
    const body = req.method === "HEAD" || status < 400 ? "" : JSON.stringify({ error: `HTTP ${status}` });
    res.writeHead(status, { ...headers, "Content-Length": String(Buffer.byteLength(body)) });
    res.end(body);
  }
}
