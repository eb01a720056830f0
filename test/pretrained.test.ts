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
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, relative, sep } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  encodeInterleaved,
  Flamingo,
  FlamingoError,
  HubErrorCode,
  loadImage,
  preprocessImages,
  type ReleaseId,
  Tokenizer,
} from "../ts/src/index.js";
import { type FakeFile, FakeHub } from "./helpers/fake-hub.js";
import { GOLDEN_DIR, REPO_ROOT, tempDir } from "./helpers/golden.js";

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

  it("takes the image size, mean/std and Perceiver sizes from the folder's flamingo.json", async () => {
    const folder = tempDir("flamingo-manifest-");
    try {
      cpSync(TINY, folder.path, { recursive: true });
      const manifest = JSON.parse(readFileSync(join(TINY, "flamingo.json"), "utf8")) as Record<string, unknown>;
      const preprocess = { mean: [0.5, 0.25, 0], std: [0.25, 0.5, 1] };
      writeFileSync(
        join(folder.path, "flamingo.json"),
        JSON.stringify({ ...manifest, imageSize: 32, preprocess, perceiver: { depth: 1, numLatents: 4 } }),
      );
      await using model = await Flamingo.fromPretrained(folder.path);
      expect(model.imageOptions()).toEqual({ size: 32, ...preprocess });

      // A grey 102 (0.4 after /255) normalises with the folder's mean and std.
      const grey = { data: new Uint8Array(40 * 40).fill(102), width: 40, height: 40, channels: 1 as const };
      const image = await loadImage(grey, model.imageOptions());
      expect(image.shape).toEqual([3, 32, 32]);
      const plane = 32 * 32;
      expect(image.data[0]).toBeCloseTo((0.4 - 0.5) / 0.25, 5);
      expect(image.data[plane]).toBeCloseTo((0.4 - 0.25) / 0.5, 5);
      expect(image.data[2 * plane]).toBeCloseTo(0.4, 5);

      const latents = await model.encodeVision(await preprocessImages([[image]], model.imageOptions()));
      expect(latents.shape).toEqual([1, 1, 4, 64]);

      writeFileSync(join(folder.path, "flamingo.json"), JSON.stringify({ ...manifest, imageSize: 224 }));
      const e = await rejection(Flamingo.fromPretrained(folder.path));
      expect(e.code).toBe("ERR_CONFIG");
      expect(e.message).toContain("preprocess.size is 224, but the vision tower");
    } finally {
      folder.cleanup();
    }
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

/** The release's folder name: `openflamingo/OpenFlamingo-3B-vitl-mpt1b` → `OpenFlamingo-3B-vitl-mpt1b`. */
const releaseName = (id: ReleaseId): string => id.split("/")[1] as string;

/** The LM repo each release draws on (spec §9), as the fixture writer lays them out. */
const LM_REPOS: Record<ReleaseId, string> = {
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b": "anas-awadalla/mpt-1b-redpajama-200b",
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b": "togethercomputer/RedPajama-INCITE-Base-3B-v1",
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct": "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
  "openflamingo/OpenFlamingo-9B-vitl-mpt7b": "anas-awadalla/mpt-7b",
};

/** Each release with its stand-in's cross-attention plan (every 1, 2 and 4 layers of 2, 4 and 8). */
const RELEASE_CASES: [ReleaseId, number[]][] = [
  ["openflamingo/OpenFlamingo-3B-vitl-mpt1b", [0, 1]],
  ["openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct", [0, 1]],
  ["openflamingo/OpenFlamingo-4B-vitl-rpj3b", [1, 3]],
  ["openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct", [1, 3]],
  ["openflamingo/OpenFlamingo-9B-vitl-mpt7b", [3, 7]],
];

/** Greedy generation after `<image>Output:` on a golden photo, at the model's image size. */
async function generateAfterImage(model: Flamingo): Promise<number[]> {
  const tokenizer = model.tokenizer as Tokenizer;
  const photo = { image: join(GOLDEN_DIR, "preprocess", "wide.png") };
  const input = await encodeInterleaved(tokenizer, [[photo, "Output:"]], {
    image: { size: model.summary().imageSize },
  });
  const out = await model.generate(input, { maxNewTokens: 6 });
  return out.newTokens[0] as number[];
}

/** What every release stand-in must show once loaded: its tokens, vocabulary, plan and checkpoint. */
function expectReleaseLoaded(model: Flamingo, layers: number[]): void {
  expect(model.tokenizer?.modelTokens).toEqual({ media: 97, endOfChunk: 96 });
  const summary = model.summary();
  // The LM ships 112 rows; OpenFlamingo shrinks them to len(tokenizer) = 99.
  expect(summary.vocabSize).toBe(99);
  expect(summary.crossAttnLayers).toEqual(layers);
  expect(summary.imageSize).toBe(28);
  const report = model.report();
  expect(report.freshInit).toBe(false);
  expect(report.unexpected).toEqual([]);
}

/** Generated ids: up to 6, ids of the resized vocabulary, never `<image>`, ending early only on `<|endofchunk|>`. */
function expectGenerated(tokens: number[]): void {
  expect(tokens.length).toBeGreaterThan(0);
  expect(tokens.length).toBeLessThanOrEqual(6);
  for (const id of tokens) {
    expect(id).toBeGreaterThanOrEqual(0);
    expect(id).toBeLessThan(99);
    expect(id).not.toBe(97);
  }
  if (tokens.length < 6) expect(tokens.at(-1)).toBe(96);
}

describe("the five releases", () => {
  const fixtures = tempDir("flamingo-release-fixtures-");
  const local = tempDir("flamingo-release-local-");
  const cache = tempDir("flamingo-release-cache-");
  let hub: FakeHub;

  /**
   * A release as a user assembles it from the repositories it draws on, each downloaded as
   * `huggingface-cli download --local-dir` lays it out: `vision/` is the CLIP repo, `lm/` the
   * LM repo (with its tokenizer), `checkpoint.pt` the release repo's only file. The folder
   * bears the release's name, which gives its settings.
   */
  function localFolder(id: ReleaseId): string {
    const dir = join(local.path, releaseName(id));
    if (!existsSync(dir)) {
      mkdirSync(dir);
      symlinkSync(join(fixtures.path, "openai", "clip-vit-large-patch14"), join(dir, "vision"));
      symlinkSync(join(fixtures.path, LM_REPOS[id]), join(dir, "lm"));
      symlinkSync(join(fixtures.path, id, "checkpoint.pt"), join(dir, "checkpoint.pt"));
    }
    return dir;
  }

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
    local.cleanup();
    cache.cleanup();
  });

  it("the fixture repositories hold what the real ones do: the release repo only checkpoint.pt, the LMs pytorch_model.bin", () => {
    for (const [id] of RELEASE_CASES) {
      expect(readdirSync(join(fixtures.path, id))).toEqual(["checkpoint.pt"]);
      const lmFiles = readdirSync(join(fixtures.path, LM_REPOS[id]));
      expect(lmFiles).toContain("config.json");
      expect(lmFiles).toContain("tokenizer.json");
      expect(lmFiles.some((f) => /^pytorch_model(-\d{5}-of-\d{5})?\.bin$/.test(f))).toBe(true);
    }
  });

  it.each(RELEASE_CASES)(
    "%s loads from a local folder assembled from its source repositories, and generates",
    async (id, layers) => {
      await using model = await Flamingo.fromPretrained(localFolder(id));
      expectReleaseLoaded(model, layers);
      const tokens = await generateAfterImage(model);
      expectGenerated(tokens);
      const [caption] = await model.caption([join(GOLDEN_DIR, "preprocess", "tall.png")], { maxNewTokens: 4 });
      expect(typeof caption).toBe("string");
      console.log(`${id}: greedy ids ${JSON.stringify(tokens)}, caption ${JSON.stringify(caption)}`);
    },
  );

  it.each(RELEASE_CASES)(
    "%s downloads by id with progress, loads, and generates what the local folder generates",
    async (id, layers) => {
      const events: { file: string; done: number; total: number | undefined }[] = [];
      await using model = await Flamingo.fromPretrained(id, {
        endpoint: hub.endpoint,
        cacheDir: cache.path,
        onProgress: (done, total, file) => events.push({ file, done, total }),
      });
      expectReleaseLoaded(model, layers);

      const checkpoint = events.filter((e) => e.file === `${id}/checkpoint.pt`);
      expect(checkpoint.length).toBeGreaterThan(0);
      const last = checkpoint.at(-1);
      expect(last?.total).toBeGreaterThan(0);
      expect(last?.done).toBe(last?.total);

      const fromHub = await generateAfterImage(model);
      expectGenerated(fromHub);
      await using fromFolder = await Flamingo.fromPretrained(localFolder(id));
      expect(fromHub).toEqual(await generateAfterImage(fromFolder));
    },
  );

  it("a plan without one of the checkpoint's blocks lists its keys in report().unexpected; strict refuses it", async () => {
    const folder = localFolder("openflamingo/OpenFlamingo-4B-vitl-rpj3b");
    await using model = await Flamingo.fromPretrained(folder, { crossAttention: { layers: [1] } });
    const unexpected = model.report().unexpected;
    expect(unexpected).toHaveLength(11);
    for (const key of unexpected) expect(key).toMatch(/^lang_encoder\.gpt_neox\.layers\.3\.gated_cross_attn_layer\./);

    const e = await rejection(Flamingo.fromPretrained(folder, { crossAttention: { layers: [1] }, strict: true }));
    expect(e.code).toBe("ERR_CHECKPOINT");
    expect(e.message).toContain("cross-attention block at LM layer 3, but the layer plan puts them at [1]");
  });

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
    const emptyCache = tempDir("flamingo-release-empty-cache-");
    try {
      const e = await rejection(
        Flamingo.fromPretrained("openflamingo/OpenFlamingo-9B-vitl-mpt7b", {
          endpoint: hub.endpoint,
          cacheDir: emptyCache.path,
          offline: true,
        }),
      );
      expect(e.code).toBe(HubErrorCode.OfflineCacheMiss);
    } finally {
      emptyCache.cleanup();
    }
  });
});
