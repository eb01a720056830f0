/**
 * `Flamingo.fromPretrained` and `Flamingo.load({ tokenizer })`: a model named by a folder or
 * a release id comes with its tokenizer, and the token ids and vocabulary resize are derived
 * from it as the reference's `create_model_and_transforms` derives them.
 *
 * Release ids are resolved against the fake hub (test/helpers/fake-hub.ts) serving the tiny
 * stand-ins that `cargo run -p flamingo-core --example make_release_fixtures -- DIR` writes
 * (each release's LM family, file formats and repository layout, with a 96-token
 * GPT-NeoX-style tokenizer: `<|endofchunk|>` = 96, `<image>` = 97, `<PAD>` = 98, len 99).
 */

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  encodeInterleaved,
  Flamingo,
  FlamingoError,
  HubErrorCode,
  type ReleaseId,
  Tokenizer,
} from "../ts/src/index.js";
import { type FakeFile, FakeHub } from "./helpers/fake-hub.js";
import { REPO_ROOT, tempDir } from "./helpers/golden.js";

const TINY = join(REPO_ROOT, "models", "tiny");

async function rejection(promise: Promise<unknown>): Promise<FlamingoError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, "expected the call to fail").toBeInstanceOf(FlamingoError);
  return error as FlamingoError;
}

describe("fromPretrained on a local folder", () => {
  it("loads models/tiny with its tokenizer, taking the token ids and vocabulary from it", async () => {
    await using model = await Flamingo.fromPretrained(TINY);
    const tokenizer = model.tokenizer as Tokenizer;
    expect(tokenizer).toBeInstanceOf(Tokenizer);
    expect(tokenizer.modelTokens).toEqual({ media: 45, endOfChunk: 44 });
    const summary = model.summary();
    // The LM's config says 47 rows, which is len(tokenizer): nothing to resize, but derived.
    expect(summary.vocabSize).toBe(tokenizer.len());
    expect(summary.crossAttnLayers).toEqual([0, 1]);
    expect(model.report().freshInit).toBe(true);

    // The whole path: interleaved input → ids and images the model takes.
    const red = { data: new Uint8Array(40 * 40 * 3).fill(200), width: 40, height: 40, channels: 3 as const };
    const input = await encodeInterleaved(
      tokenizer,
      [
        [red, "Output: a red circle"],
        [red, "Output:"],
      ],
      {
        image: { size: summary.imageSize },
      },
    );
    const out = await model.forward(input);
    expect(out.logits.shape).toEqual([2, 6, 47]);
    expect(out.logits.data.every(Number.isFinite)).toBe(true);
  });

  it("Flamingo.load takes a tokenizer path instead of token ids and attaches it", async () => {
    await using model = await Flamingo.load({
      vision: join(TINY, "vision"),
      lm: join(TINY, "lm"),
      crossAttention: { everyNLayers: 2 },
      tokenizer: join(TINY, "lm", "tokenizer.json"),
    });
    expect(model.tokenizer?.mediaTokenId).toBe(45);
    expect(model.summary().crossAttnLayers).toEqual([1]);
  });

  it("Flamingo.load without tokens or a tokenizer says which to give", async () => {
    const e = await rejection(
      Flamingo.load({ vision: join(TINY, "vision"), lm: join(TINY, "lm"), crossAttention: { everyNLayers: 1 } }),
    );
    expect(e.code).toBe("ERR_INVALID_INPUT");
    expect(e.message).toContain("give the special token ids (tokens), or a tokenizer");
  });

  it("a hub id that is not a known release gives a clear error, before any download", async () => {
    const e = await rejection(Flamingo.fromPretrained("someone/OpenFlamingo-13B", { offline: true }));
    expect(e.code).toBe("ERR_INVALID_INPUT");
    expect(e.message).toContain('"someone/OpenFlamingo-13B" is neither a local folder nor a known release');
    expect(e.message).toContain("openflamingo/OpenFlamingo-3B-vitl-mpt1b");
  });

  it("options outside the schema are refused", async () => {
    const e = await rejection(Flamingo.fromPretrained(TINY, { vocabSize: -1 }));
    expect(e.code).toBe("ERR_INVALID_INPUT");
    expect(e.message).toContain("vocabSize");
  });
});

/** Every file under `dir`, keyed by its path relative to it, `/`-separated. */
function walk(dir: string, root = dir, out = new Map<string, string>()): Map<string, string> {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, root, out);
    else out.set(relative(root, path).split(sep).join("/"), path);
  }
  return out;
}

/**
 * The fixture writer, built as `cargo test --workspace` builds it (same feature set, so after
 * the Rust tests this is a no-op); cargo reports where the executable is. CARGO_TARGET_DIR and
 * CARGO_BUILD_TARGET are inherited.
 */
function releaseFixturesBinary(): string {
  const out = execFileSync(
    "cargo",
    ["build", "--workspace", "--example", "make_release_fixtures", "--message-format=json-render-diagnostics"],
    { cwd: REPO_ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 },
  );
  for (const line of out.split("\n")) {
    if (!line.startsWith("{")) continue;
    const message = JSON.parse(line) as { reason?: string; target?: { name?: string }; executable?: string | null };
    if (
      message.reason === "compiler-artifact" &&
      message.target?.name === "make_release_fixtures" &&
      message.executable
    ) {
      return message.executable;
    }
  }
  throw new Error("cargo built make_release_fixtures but did not say where the executable is");
}

describe("fromPretrained on a release id, through the hub", () => {
  const fixtures = tempDir("flamingo-release-fixtures-");
  const cache = tempDir("flamingo-release-cache-");
  let hub: FakeHub;

  beforeAll(async () => {
    execFileSync(releaseFixturesBinary(), [fixtures.path], { stdio: ["ignore", "ignore", "inherit"] });
    hub = await FakeHub.start();
    // Repositories are the `owner/name` folders; weights and checkpoints go through LFS.
    const repos = new Map<string, Record<string, FakeFile>>();
    for (const [path, file] of walk(fixtures.path)) {
      const [owner, name, ...rest] = path.split("/");
      const repo = `${owner}/${name}`;
      const files = repos.get(repo) ?? {};
      files[rest.join("/")] = { content: readFileSync(file), lfs: /\.(bin|pt|safetensors)$/.test(path) };
      repos.set(repo, files);
    }
    for (const [repo, files] of repos) hub.addRepo(repo, { files });
  }, 900_000);
  afterAll(async () => {
    await hub?.close();
    fixtures.cleanup();
    cache.cleanup();
  });

  const cases: [ReleaseId, number[]][] = [
    ["openflamingo/OpenFlamingo-3B-vitl-mpt1b", [0, 1]],
    ["openflamingo/OpenFlamingo-4B-vitl-rpj3b", [1, 3]],
  ];

  it.each(cases)(
    "%s downloads with progress, loads its checkpoint and resizes the vocabulary to len(tokenizer)",
    async (id, layers) => {
      const events: { file: string; done: number; total: number | undefined }[] = [];
      await using model = await Flamingo.fromPretrained(id, {
        endpoint: hub.endpoint,
        cacheDir: cache.path,
        onProgress: (done, total, file) => events.push({ file, done, total }),
      });
      expect(model.tokenizer?.modelTokens).toEqual({ media: 97, endOfChunk: 96 });
      const summary = model.summary();
      // The LM ships 112 rows; OpenFlamingo shrinks them to len(tokenizer) = 99.
      expect(summary.vocabSize).toBe(99);
      expect(summary.crossAttnLayers).toEqual(layers);
      expect(model.report().freshInit).toBe(false);

      const checkpoint = events.filter((e) => e.file === `${id}/checkpoint.pt`);
      expect(checkpoint.length).toBeGreaterThan(0);
      const last = checkpoint.at(-1);
      expect(last?.total).toBeGreaterThan(0);
      expect(last?.done).toBe(last?.total);
      expect(events.some((e) => e.file === "openai/clip-vit-large-patch14/config.json")).toBe(true);
    },
  );

  it("offline, loads from the cache without a single request", async () => {
    const before = hub.requests.length;
    await using model = await Flamingo.fromPretrained("openflamingo/OpenFlamingo-3B-vitl-mpt1b", {
      endpoint: hub.endpoint,
      cacheDir: cache.path,
      offline: true,
    });
    expect(model.summary().vocabSize).toBe(99);
    expect(hub.requests.length).toBe(before);
  });

  it("offline, a release that is not in the cache fails with ERR_OFFLINE_CACHE_MISS", async () => {
    const e = await rejection(
      Flamingo.fromPretrained("openflamingo/OpenFlamingo-9B-vitl-mpt7b", {
        endpoint: hub.endpoint,
        cacheDir: cache.path,
        offline: true,
      }),
    );
    expect(e.code).toBe(HubErrorCode.OfflineCacheMiss);
  });
});
