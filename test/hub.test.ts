/**
 * Hub downloads against a local fake hub (test/helpers/fake-hub.ts): the huggingface_hub cache
 * layout, resuming, checksums, errors, offline mode, and resolving the five OpenFlamingo
 * releases and local folders to paths.
 */

import { randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";

import {
  downloadFile,
  FlamingoError,
  formatProgressLine,
  HubErrorCode,
  RELEASE_IDS,
  RELEASES,
  type ReleaseId,
  releaseDownloads,
  renderProgress,
  resolveRelease,
  snapshotDownload,
} from "../ts/src/index.js";
import { FakeHub, gitBlobSha1, sha256Hex } from "./helpers/fake-hub.js";
import { REPO_ROOT } from "./helpers/golden.js";

const REPO = "acme/tiny-lm";
// Big enough to arrive in several chunks, so that a transfer can be cut or aborted midway.
const WEIGHTS = randomBytes(1_000_000);
const CONFIG = JSON.stringify({ model_type: "llama", hidden_size: 8 });

let hub: FakeHub;
let commit: string;
let scratch: string;
let cacheDir: string;

/** Awaits `promise`, expecting a `FlamingoError` with `code`; returns it for more checks. */
async function rejection(promise: Promise<unknown>, code: string): Promise<FlamingoError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, "expected the call to fail").toBeInstanceOf(FlamingoError);
  expect((error as FlamingoError).code, (error as Error).message).toBe(code);
  return error as FlamingoError;
}

function repoDir(repo = REPO): string {
  return join(cacheDir, `models--${repo.replace("/", "--")}`);
}

beforeAll(async () => {
  hub = await FakeHub.start();
  scratch = mkdtempSync(join(tmpdir(), "flamingo-hub-"));
});

afterAll(async () => {
  await hub.close();
  rmSync(scratch, { recursive: true, force: true });
});

beforeEach(() => {
  commit = hub.addRepo(REPO, {
    files: {
      "config.json": { content: CONFIG },
      "model.safetensors": { content: WEIGHTS, lfs: true },
    },
  });
  hub.requests.length = 0;
  hub.ignoreRange = false;
  cacheDir = mkdtempSync(join(scratch, "cache-"));
  // The machine's own hub settings must not leak in (a real token, a real cache, offline mode).
  vi.stubEnv("HF_HOME", join(scratch, "hf-home"));
  vi.stubEnv("HF_TOKEN", "");
  vi.stubEnv("HF_HUB_OFFLINE", "");
  vi.stubEnv("HF_ENDPOINT", "");
  vi.stubEnv("HF_HUB_CACHE", "");
});

afterEach(() => {
  vi.unstubAllEnvs();
});

describe("downloadFile", () => {
  it("stores an LFS file as huggingface_hub does: blob named by sha256, snapshot symlink, ref", async () => {
    const seen: Array<[number, number | undefined, string]> = [];
    const path = await downloadFile({
      repo: REPO,
      path: "model.safetensors",
      endpoint: hub.endpoint,
      cacheDir,
      onProgress: (done, total, file) => seen.push([done, total, file]),
    });

    const sha = sha256Hex(WEIGHTS);
    expect(path).toBe(join(repoDir(), "snapshots", commit, "model.safetensors"));
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    expect(lstatSync(path).isSymbolicLink()).toBe(true);
    expect(readlinkSync(path)).toBe(join("..", "..", "blobs", sha));
    expect(readFileSync(join(repoDir(), "blobs", sha)).equals(WEIGHTS)).toBe(true);
    expect(readFileSync(join(repoDir(), "refs", "main"), "utf8")).toBe(commit);
    expect(existsSync(join(repoDir(), "blobs", `${sha}.incomplete`))).toBe(false);

    // HEAD for the metadata, GET at the resolved commit, GET of the CDN redirect target.
    expect(hub.requests.map((r) => `${r.method} ${r.url.split("?")[0]} ${r.status}`)).toEqual([
      `HEAD /${REPO}/resolve/main/model.safetensors 302`,
      `GET /${REPO}/resolve/${commit}/model.safetensors 302`,
      `GET /cdn/${sha} 200`,
    ]);
    expect(seen.at(-1)).toEqual([WEIGHTS.byteLength, WEIGHTS.byteLength, `${REPO}/model.safetensors`]);
    expect(seen.every(([done], i) => i === 0 || done >= (seen[i - 1]?.[0] ?? 0))).toBe(true);
  });

  it("names a small git file's blob by its git sha1, and checks it", async () => {
    const path = await downloadFile({ repo: REPO, path: "config.json", endpoint: hub.endpoint, cacheDir });
    expect(readFileSync(path, "utf8")).toBe(CONFIG);
    expect(readlinkSync(path)).toBe(join("..", "..", "blobs", gitBlobSha1(Buffer.from(CONFIG))));
  });

  it("answers a second call from the cache without any request", async () => {
    const options = { repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir };
    const first = await downloadFile(options);
    const requests = hub.requests.length;
    const seen: number[] = [];
    const second = await downloadFile({ ...options, onProgress: (done) => seen.push(done) });
    expect(second).toBe(first);
    expect(hub.requests.length).toBe(requests);
    expect(seen).toEqual([WEIGHTS.byteLength]);
  });

  it("keeps a resolved branch at its commit until asked to refresh", async () => {
    const options = { repo: REPO, path: "config.json", endpoint: hub.endpoint, cacheDir };
    const old = await downloadFile(options);
    const pushed = hub.addRepo(REPO, { commit: "f".repeat(40), files: { "config.json": { content: "{}" } } });
    hub.requests.length = 0;
    expect(await downloadFile(options)).toBe(old);
    expect(hub.requests).toHaveLength(0);

    const fresh = await downloadFile({ ...options, refresh: true });
    expect(fresh).toBe(join(repoDir(), "snapshots", pushed, "config.json"));
    expect(readFileSync(fresh, "utf8")).toBe("{}");
    expect(readFileSync(join(repoDir(), "refs", "main"), "utf8")).toBe(pushed);
    expect(readFileSync(old, "utf8")).toBe(CONFIG);
  });

  it("resumes an interrupted download with Range: bytes=N- from the bytes on disk", async () => {
    const sha = sha256Hex(WEIGHTS);
    const options = { repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir, retries: 0 };
    hub.interrupt(`${REPO}/model.safetensors`, 300_000);

    const error = await rejection(downloadFile(options), HubErrorCode.Network);
    const partial = join(repoDir(), "blobs", `${sha}.incomplete`);
    const kept = readFileSync(partial);
    // Everything read before the cut is on disk (a fetch stream may drop its last queued chunks).
    expect(kept.byteLength).toBeGreaterThan(0);
    expect(kept.byteLength).toBeLessThanOrEqual(300_000);
    expect(kept.equals(WEIGHTS.subarray(0, kept.byteLength))).toBe(true);
    expect(error.message).toContain(`broke off after ${kept.byteLength} of 1000000 bytes`);
    expect(existsSync(join(repoDir(), "snapshots", commit, "model.safetensors"))).toBe(false);

    hub.requests.length = 0;
    const path = await downloadFile(options);
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    const cdn = hub.requestsTo("/cdn/");
    expect(cdn).toHaveLength(1);
    expect(cdn[0]?.range).toBe(`bytes=${kept.byteLength}-`);
    expect(cdn[0]?.status).toBe(206);
    expect(existsSync(partial)).toBe(false);
  });

  it("retries a broken transfer within one call, resuming where it stopped", async () => {
    hub.interrupt(`${REPO}/model.safetensors`, 250_000, 2);
    const path = await downloadFile({
      repo: REPO,
      path: "model.safetensors",
      endpoint: hub.endpoint,
      cacheDir,
      retries: 2,
    });
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    const cdn = hub.requestsTo("/cdn/");
    expect(cdn.map((r) => r.status)).toEqual([200, 206, 206]);
    const offsets = cdn.map((r) => Number(/^bytes=(\d+)-$/.exec(r.range ?? "bytes=0-")?.[1]));
    // Each try starts where the bytes on disk end: past the first cut, then past the second.
    expect(offsets[0]).toBe(0);
    expect(offsets[1]).toBeGreaterThan(0);
    expect(offsets[1]).toBeLessThanOrEqual(250_000);
    expect(offsets[2]).toBeGreaterThan(offsets[1] ?? 0);
    expect(offsets[2]).toBeLessThanOrEqual((offsets[1] ?? 0) + 250_000);
  });

  it("restarts from the first byte when the server ignores Range", async () => {
    const options = { repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir, retries: 0 };
    hub.interrupt(`${REPO}/model.safetensors`, 400_000);
    await rejection(downloadFile(options), HubErrorCode.Network);
    hub.ignoreRange = true;
    const path = await downloadFile(options);
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    const cdn = hub.requestsTo("/cdn/");
    expect(cdn.map((r) => r.status)).toEqual([200, 200]);
    expect(cdn[1]?.range).toMatch(/^bytes=[1-9]\d*-$/);
  });

  it("rejects bytes that do not hash to the announced sha256 and leaves the cache untouched", async () => {
    const sha = sha256Hex(WEIGHTS);
    const options = { repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir };
    hub.corrupt(`${REPO}/model.safetensors`);
    const error = await rejection(downloadFile(options), HubErrorCode.ChecksumMismatch);
    expect(error.message).toMatch(/^checksum mismatch for acme\/tiny-lm\/model\.safetensors@main/);
    expect(error.message).toContain(`sha256 ${sha}`);
    expect(error.message).toContain("the cache was not modified");
    expect(existsSync(join(repoDir(), "blobs", sha))).toBe(false);
    expect(existsSync(join(repoDir(), "blobs", `${sha}.incomplete`))).toBe(false);
    expect(existsSync(join(repoDir(), "snapshots", commit, "model.safetensors"))).toBe(false);
    expect(existsSync(join(repoDir(), "refs", "main"))).toBe(false);

    hub.corrupt(`${REPO}/model.safetensors`, false);
    const path = await downloadFile(options);
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
  });

  it("rejects a small git file whose bytes do not match its git sha1", async () => {
    hub.corrupt(`${REPO}/config.json`);
    const error = await rejection(
      downloadFile({ repo: REPO, path: "config.json", endpoint: hub.endpoint, cacheDir }),
      HubErrorCode.ChecksumMismatch,
    );
    expect(error.message).toContain(`git-sha1 ${gitBlobSha1(Buffer.from(CONFIG))}`);
    expect(existsSync(join(repoDir(), "snapshots", commit, "config.json"))).toBe(false);
    hub.corrupt(`${REPO}/config.json`, false);
  });

  it("says which repo, file and revision were not found", async () => {
    const base = { endpoint: hub.endpoint, cacheDir };
    const file = await rejection(downloadFile({ ...base, repo: REPO, path: "nope.bin" }), HubErrorCode.NotFound);
    expect(file.message).toMatch(
      /^not found: acme\/tiny-lm\/nope\.bin@main on http:\/\/127\.0\.0\.1:\d+ \(no such file/,
    );
    const repo = await rejection(
      downloadFile({ ...base, repo: "acme/missing", path: "config.json" }),
      HubErrorCode.NotFound,
    );
    expect(repo.message).toMatch(/^not found: acme\/missing\/config\.json@main .*no such repository/);
    const revision = await rejection(
      downloadFile({ ...base, repo: REPO, path: "config.json", revision: "v9" }),
      HubErrorCode.NotFound,
    );
    expect(revision.message).toMatch(/^not found: acme\/tiny-lm\/config\.json@v9 .*no such revision/);
  });

  it("asks for HF_TOKEN on a gated repository, and sends the token to the hub but not to the CDN", async () => {
    hub.addRepo("acme/gated", { gated: true, files: { "model.safetensors": { content: WEIGHTS, lfs: true } } });
    const base = { repo: "acme/gated", path: "model.safetensors", endpoint: hub.endpoint, cacheDir };
    const error = await rejection(downloadFile(base), HubErrorCode.Unauthorized);
    expect(error.message).toContain("HF_TOKEN");
    expect(error.message).toContain("acme/gated/model.safetensors@main");

    hub.requests.length = 0;
    vi.stubEnv("HF_TOKEN", hub.token);
    const path = await downloadFile(base);
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    expect(hub.requestsTo("/acme/gated/").every((r) => r.authorization === `Bearer ${hub.token}`)).toBe(true);
    expect(hub.requestsTo("/cdn/").map((r) => r.authorization)).toEqual([undefined]);
  });

  it("follows the relative redirect of a renamed repository", async () => {
    hub.rename("acme/old-name", REPO);
    const path = await downloadFile({ repo: "acme/old-name", path: "config.json", endpoint: hub.endpoint, cacheDir });
    expect(readFileSync(path, "utf8")).toBe(CONFIG);
    expect(path).toBe(join(repoDir("acme/old-name"), "snapshots", commit, "config.json"));
  });

  it("takes the endpoint from HF_ENDPOINT and the cache folder from HF_HUB_CACHE", async () => {
    vi.stubEnv("HF_ENDPOINT", hub.endpoint);
    vi.stubEnv("HF_HUB_CACHE", cacheDir);
    const path = await downloadFile({ repo: REPO, path: "config.json" });
    expect(path).toBe(join(repoDir(), "snapshots", commit, "config.json"));
    expect(hub.requests.length).toBeGreaterThan(0);
  });

  it("refuses paths that would leave the snapshot folder, before any request", async () => {
    const error = await rejection(
      downloadFile({ repo: REPO, path: "../../evil", endpoint: hub.endpoint, cacheDir }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toContain('"../../evil" is not a valid file path');
    expect(hub.requests).toHaveLength(0);
  });
});

describe("offline mode", () => {
  it("resolves a cached file through refs/main without touching the network", async () => {
    const first = await downloadFile({ repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir });
    hub.requests.length = 0;
    const offline = await downloadFile({ repo: REPO, path: "model.safetensors", cacheDir, offline: true });
    expect(offline).toBe(first);
    vi.stubEnv("HF_HUB_OFFLINE", "1");
    expect(await downloadFile({ repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir })).toBe(first);
    expect(hub.requests).toHaveLength(0);
  });

  it("fails clearly on a file that is not cached, without a request", async () => {
    vi.stubEnv("HF_HUB_OFFLINE", "1");
    const error = await rejection(
      downloadFile({ repo: REPO, path: "config.json", endpoint: hub.endpoint, cacheDir }),
      HubErrorCode.OfflineCacheMiss,
    );
    expect(error.message).toMatch(/^acme\/tiny-lm\/config\.json@main is not in the cache and offline mode is on/);
    expect(hub.requests).toHaveLength(0);
  });
});

describe("abort", () => {
  it("stops on the signal, keeps the partial file, and the next call resumes it", async () => {
    const sha = sha256Hex(WEIGHTS);
    const controller = new AbortController();
    const options = { repo: REPO, path: "model.safetensors", endpoint: hub.endpoint, cacheDir };
    const error = await rejection(
      downloadFile({
        ...options,
        signal: controller.signal,
        onProgress: (done) => {
          if (done > 0) controller.abort();
        },
      }),
      "ABORT_ERR",
    );
    expect(error.message).toContain("aborted");
    const partial = join(repoDir(), "blobs", `${sha}.incomplete`);
    const kept = readFileSync(partial);
    expect(kept.byteLength).toBeGreaterThan(0);
    expect(kept.byteLength).toBeLessThan(WEIGHTS.byteLength);
    expect(kept.equals(WEIGHTS.subarray(0, kept.byteLength))).toBe(true);

    hub.requests.length = 0;
    const path = await downloadFile(options);
    expect(readFileSync(path).equals(WEIGHTS)).toBe(true);
    expect(hub.requestsTo("/cdn/").map((r) => r.range)).toEqual([`bytes=${kept.byteLength}-`]);
  });

  it("rejects at once when the signal is already aborted", async () => {
    await rejection(
      downloadFile({
        repo: REPO,
        path: "config.json",
        endpoint: hub.endpoint,
        cacheDir,
        signal: AbortSignal.abort(),
      }),
      "ABORT_ERR",
    );
    expect(hub.requests).toHaveLength(0);
  });
});

describe("snapshotDownload", () => {
  const shard = (i: number) => `model-0000${i}-of-00002.safetensors`;

  it("fetches an index and every shard it lists, all at one commit", async () => {
    const index = { metadata: {}, weight_map: { a: shard(1), b: shard(2), c: shard(1) } };
    const sharded = hub.addRepo("acme/sharded", {
      files: {
        "config.json": { content: CONFIG },
        "model.safetensors.index.json": { content: JSON.stringify(index) },
        [shard(1)]: { content: "shard one", lfs: true },
        [shard(2)]: { content: "shard two", lfs: true },
      },
    });
    const snapshot = await snapshotDownload("acme/sharded", ["config.json"], {
      weights: true,
      endpoint: hub.endpoint,
      cacheDir,
    });
    expect(snapshot).toEqual({
      repo: "acme/sharded",
      commit: sharded,
      dir: join(repoDir("acme/sharded"), "snapshots", sharded),
      files: ["config.json", "model.safetensors.index.json", shard(1), shard(2)],
    });
    expect(readFileSync(join(snapshot.dir, shard(2)), "utf8")).toBe("shard two");
    // model.safetensors was probed first; later files were asked for at the commit.
    expect(hub.requests.filter((r) => r.method === "HEAD").map((r) => r.url)).toEqual([
      "/acme/sharded/resolve/main/config.json",
      `/acme/sharded/resolve/${sharded}/model.safetensors`,
      `/acme/sharded/resolve/${sharded}/model.safetensors.index.json`,
      `/acme/sharded/resolve/${sharded}/${shard(1)}`,
      `/acme/sharded/resolve/${sharded}/${shard(2)}`,
    ]);
  });

  it("falls back to pytorch_model.bin and remembers the absent formats (.no_exist)", async () => {
    const bin = hub.addRepo("acme/old-format", {
      files: { "config.json": { content: CONFIG }, "pytorch_model.bin": { content: WEIGHTS, lfs: true } },
    });
    const options = { weights: true, optionalFiles: ["tokenizer.json"], endpoint: hub.endpoint, cacheDir };
    const first = await snapshotDownload("acme/old-format", ["config.json"], options);
    expect(first.files).toEqual(["config.json", "pytorch_model.bin"]);
    expect(existsSync(join(repoDir("acme/old-format"), ".no_exist", bin, "model.safetensors"))).toBe(true);
    expect(existsSync(join(repoDir("acme/old-format"), ".no_exist", bin, "tokenizer.json"))).toBe(true);

    hub.requests.length = 0;
    expect(await snapshotDownload("acme/old-format", ["config.json"], options)).toEqual(first);
    expect(hub.requests).toHaveLength(0);
  });

  it("refuses an index whose shard names leave the snapshot folder", async () => {
    hub.addRepo("acme/evil", {
      files: {
        "model.safetensors.index.json": { content: JSON.stringify({ weight_map: { a: "../../../escape.bin" } }) },
      },
    });
    const error = await rejection(
      snapshotDownload("acme/evil", [], { weights: true, endpoint: hub.endpoint, cacheDir }),
      "ERR_INVALID_INPUT",
    );
    expect(error.message).toContain("../../../escape.bin");
    expect(hub.requests.some((r) => r.url.includes("escape"))).toBe(false);
  });
});

describe("releases", () => {
  /** What the table must say, from spec §9. */
  const expected: Record<ReleaseId, { lm: string; everyN: number; rowsTrained: boolean }> = {
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b": {
      lm: "anas-awadalla/mpt-1b-redpajama-200b",
      everyN: 1,
      rowsTrained: true,
    },
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct": {
      lm: "anas-awadalla/mpt-1b-redpajama-200b-dolly",
      everyN: 1,
      rowsTrained: true,
    },
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b": {
      lm: "togethercomputer/RedPajama-INCITE-Base-3B-v1",
      everyN: 2,
      rowsTrained: false,
    },
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct": {
      lm: "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
      everyN: 2,
      rowsTrained: false,
    },
    "openflamingo/OpenFlamingo-9B-vitl-mpt7b": { lm: "anas-awadalla/mpt-7b", everyN: 4, rowsTrained: true },
  };

  it("lists the five releases with their repositories, plans and files", () => {
    expect([...RELEASE_IDS].sort()).toEqual(Object.keys(expected).sort());
    for (const id of RELEASE_IDS) {
      const r = RELEASES[id];
      const e = expected[id];
      expect(r.visionRepo).toBe("openai/clip-vit-large-patch14");
      expect(r.visionOpenClip).toEqual({ model: "ViT-L-14", pretrained: "openai" });
      expect([r.lmRepo, r.tokenizerRepo]).toEqual([e.lm, e.lm]);
      expect(r.crossAttentionEveryN).toBe(e.everyN);
      expect(r.embeddingRowsTrained).toBe(e.rowsTrained);
      expect(r.tokens).toEqual({ media: 50278, endOfChunk: 50277 });
      expect(r.vocabSize).toBe(50280);
      expect(releaseDownloads(id)).toEqual([
        {
          role: "vision",
          repo: "openai/clip-vit-large-patch14",
          files: ["config.json"],
          optionalFiles: [],
          weights: true,
        },
        {
          role: "lm",
          repo: e.lm,
          files: ["config.json", "tokenizer.json"],
          optionalFiles: ["tokenizer_config.json", "special_tokens_map.json"],
          weights: true,
        },
        { role: "checkpoint", repo: id, files: ["checkpoint.pt"], optionalFiles: [], weights: false },
      ]);
    }
  });

  it("resolves all five ids to downloaded paths, then again offline with no request", async () => {
    // Each LM repository in another weight format, as on the hub: single .bin, sharded .bin, safetensors.
    const lmWeights: Record<string, Record<string, { content: string; lfs?: boolean }>> = {
      "anas-awadalla/mpt-1b-redpajama-200b": { "pytorch_model.bin": { content: "mpt1b", lfs: true } },
      "anas-awadalla/mpt-1b-redpajama-200b-dolly": { "pytorch_model.bin": { content: "dolly", lfs: true } },
      "togethercomputer/RedPajama-INCITE-Base-3B-v1": { "pytorch_model.bin": { content: "rpj", lfs: true } },
      "togethercomputer/RedPajama-INCITE-Instruct-3B-v1": { "model.safetensors": { content: "rpj-i", lfs: true } },
      "anas-awadalla/mpt-7b": {
        "pytorch_model.bin.index.json": {
          content: JSON.stringify({
            weight_map: { x: "pytorch_model-00001-of-00002.bin", y: "pytorch_model-00002-of-00002.bin" },
          }),
        },
        "pytorch_model-00001-of-00002.bin": { content: "7b-1", lfs: true },
        "pytorch_model-00002-of-00002.bin": { content: "7b-2", lfs: true },
      },
    };
    hub.addRepo("openai/clip-vit-large-patch14", {
      files: {
        "config.json": { content: '{"model_type":"clip"}' },
        "model.safetensors": { content: "clip", lfs: true },
        "pytorch_model.bin": { content: "clip-bin", lfs: true },
      },
    });
    for (const [lm, weights] of Object.entries(lmWeights)) {
      hub.addRepo(lm, {
        files: {
          "config.json": { content: `{"name":"${lm}"}` },
          "tokenizer.json": { content: `{"tokenizer":"${lm}"}` },
          "special_tokens_map.json": { content: "{}" },
          ...weights,
        },
      });
    }
    for (const id of RELEASE_IDS) hub.addRepo(id, { files: { "checkpoint.pt": { content: `ckpt ${id}`, lfs: true } } });

    const resolved = [];
    for (const id of RELEASE_IDS) {
      const r = await resolveRelease(id, { endpoint: hub.endpoint, cacheDir });
      const e = expected[id];
      const snapshot = (repo: string) =>
        join(repoDir(repo), "snapshots", readFileSync(join(repoDir(repo), "refs", "main"), "utf8"));
      expect(r).toEqual({
        release: id,
        vision: snapshot("openai/clip-vit-large-patch14"),
        lm: snapshot(e.lm),
        tokenizer: join(snapshot(e.lm), "tokenizer.json"),
        checkpoint: join(snapshot(id), "checkpoint.pt"),
        crossAttention: { everyNLayers: e.everyN },
        crossAttentionEveryN: e.everyN,
        tokens: { media: 50278, endOfChunk: 50277 },
        vocabSize: 50280,
        decoderLayersPath: id.includes("rpj3b") ? "gpt_neox.layers" : "transformer.blocks",
        embeddingRowsTrained: e.rowsTrained,
      });
      expect(readFileSync(r.checkpoint ?? "", "utf8")).toBe(`ckpt ${id}`);
      expect(readFileSync(r.tokenizer, "utf8")).toBe(`{"tokenizer":"${e.lm}"}`);
      resolved.push(r);
    }

    // What was transferred (GETs of the resolve URLs), per repository.
    const got = (repo: string) =>
      hub
        .requestsTo(`/${repo}/resolve/`)
        .filter((r) => r.method === "GET")
        .map((r) => r.url.split("/").slice(5).join("/"));
    expect(got("openai/clip-vit-large-patch14")).toEqual(["config.json", "model.safetensors"]);
    expect(got("anas-awadalla/mpt-1b-redpajama-200b")).toEqual([
      "config.json",
      "tokenizer.json",
      "special_tokens_map.json",
      "pytorch_model.bin",
    ]);
    expect(got("togethercomputer/RedPajama-INCITE-Instruct-3B-v1")).toEqual([
      "config.json",
      "tokenizer.json",
      "special_tokens_map.json",
      "model.safetensors",
    ]);
    expect(got("anas-awadalla/mpt-7b")).toEqual([
      "config.json",
      "tokenizer.json",
      "special_tokens_map.json",
      "pytorch_model.bin.index.json",
      "pytorch_model-00001-of-00002.bin",
      "pytorch_model-00002-of-00002.bin",
    ]);
    expect(got("openflamingo/OpenFlamingo-9B-vitl-mpt7b")).toEqual(["checkpoint.pt"]);

    hub.requests.length = 0;
    for (const [i, id] of RELEASE_IDS.entries()) {
      expect(await resolveRelease(id, { cacheDir, offline: true })).toEqual(resolved[i]);
    }
    expect(hub.requests).toHaveLength(0);
  });

  it("names the known releases when an id is neither a release nor a folder", async () => {
    const error = await rejection(resolveRelease("openflamingo/OpenFlamingo-1B", { cacheDir }), "ERR_INVALID_INPUT");
    expect(error.message).toContain("openflamingo/OpenFlamingo-9B-vitl-mpt7b");
  });
});

describe("local folders", () => {
  it("resolves a folder with a flamingo.json manifest (models/tiny)", async () => {
    const tiny = join(REPO_ROOT, "models", "tiny");
    expect(await resolveRelease(tiny)).toEqual({
      vision: join(tiny, "vision"),
      lm: join(tiny, "lm"),
      tokenizer: join(tiny, "lm", "tokenizer.json"),
      crossAttention: { everyNLayers: 1 },
      crossAttentionEveryN: 1,
    });
  });

  /** A folder laid out as a release: vision/, lm/ (with the tokenizer), checkpoint.pt. */
  function releaseFolder(name: string): string {
    const dir = join(mkdtempSync(join(scratch, "local-")), name);
    mkdirSync(join(dir, "vision"), { recursive: true });
    mkdirSync(join(dir, "lm"), { recursive: true });
    writeFileSync(join(dir, "lm", "tokenizer.json"), "{}");
    writeFileSync(join(dir, "checkpoint.pt"), "ckpt");
    return dir;
  }

  it("resolves a folder laid out as a release, taking its settings from the folder's name", async () => {
    const dir = releaseFolder("OpenFlamingo-4B-vitl-rpj3b");
    expect(await resolveRelease(dir)).toEqual({
      release: "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
      vision: join(dir, "vision"),
      lm: join(dir, "lm"),
      tokenizer: join(dir, "lm", "tokenizer.json"),
      checkpoint: join(dir, "checkpoint.pt"),
      crossAttention: { everyNLayers: 2 },
      crossAttentionEveryN: 2,
      tokens: { media: 50278, endOfChunk: 50277 },
      vocabSize: 50280,
      decoderLayersPath: "gpt_neox.layers",
      embeddingRowsTrained: false,
    });
  });

  it("asks for the cross-attention plan when an unnamed folder does not say it", async () => {
    const dir = releaseFolder("my-model");
    const error = await rejection(resolveRelease(dir), "ERR_INVALID_INPUT");
    expect(error.message).toContain("crossAttention");
    const r = await resolveRelease(dir, { crossAttention: { layers: [0, 2] } });
    expect(r.crossAttention).toEqual({ layers: [0, 2] });
    expect(r.crossAttentionEveryN).toBeUndefined();
    expect(r.checkpoint).toBe(join(dir, "checkpoint.pt"));
  });

  it("reports a manifest entry that points nowhere", async () => {
    const dir = releaseFolder("broken");
    writeFileSync(join(dir, "flamingo.json"), JSON.stringify({ vision: "vision", lm: "lm", checkpoint: "gone.pt" }));
    const error = await rejection(resolveRelease(dir, { crossAttention: { everyNLayers: 1 } }), "ERR_IO");
    expect(error.message).toContain("gone.pt does not exist");
  });
});

describe("renderProgress", () => {
  it("formats a progress line with percentage, bar, sizes, speed and time left", () => {
    expect(formatProgressLine("acme/x/model.bin", 1.2e9, 2.85e9, 35.1e6)).toBe(
      "acme/x/model.bin  42% [########            ] 1.20 GB/2.85 GB 35.1 MB/s ETA 0:47",
    );
    expect(formatProgressLine("f", 512, undefined, undefined)).toBe("f 512 B");
  });

  it("prints periodic lines when the output is not a terminal", () => {
    let t = 0;
    const out: string[] = [];
    const p = renderProgress({ stream: { write: (s: string) => out.push(s) }, intervalMs: 1000, now: () => t });
    p.onProgress(0, 4e6, "a/b/w.bin");
    t = 500;
    p.onProgress(1e6, 4e6, "a/b/w.bin"); // within the interval: no line
    t = 1000;
    p.onProgress(2e6, 4e6, "a/b/w.bin");
    t = 2000;
    p.onProgress(4e6, 4e6, "a/b/w.bin");
    p.onProgress(4e6, 4e6, "a/b/w.bin"); // already complete: no line
    p.done();
    expect(out).toEqual([
      "a/b/w.bin   0% 0 B/4.00 MB\n",
      "a/b/w.bin  50% 2.00 MB/4.00 MB 2.00 MB/s ETA 0:01\n",
      "a/b/w.bin 100% 4.00 MB/4.00 MB 2.00 MB/s\n",
    ]);
  });

  it("redraws one line in place on a terminal, cut to its width", () => {
    let t = 0;
    const out: string[] = [];
    const stream = { write: (s: string) => out.push(s), isTTY: true, columns: 80 };
    const p = renderProgress({ stream, now: () => t });
    p.onProgress(0, 1000, "a/b/c");
    t = 1000;
    p.onProgress(1000, 1000, "a/b/c");
    p.onProgress(10, 10, "a/b/d");
    p.done();
    expect(out).toEqual([
      "\r\x1b[2Ka/b/c   0% [                    ] 0 B/1.00 kB",
      "\r\x1b[2Ka/b/c 100% [####################] 1.00 kB/1.00 kB 1.00 kB/s",
      "\r\x1b[2Ka/b/d 100% [####################] 10 B/10 B",
      "\n",
    ]);

    out.length = 0;
    stream.columns = 20;
    const narrow = renderProgress({ stream, now: () => t });
    narrow.onProgress(5, 10, "a/b/c");
    expect(out).toEqual(["\r\x1b[2Ka/b/c  50% [#######"]);
  });
});
