/**
 * Generation benchmark: the reference benchmark's `small-cpu` preset (ViT-B/16 at 224, the
 * OPT-125M shape with cross-attention before every layer, random weights, CPU float32),
 * timed through the public API and, in the same run, the reference itself
 * (`shared/bench/reference_bench.py`, PyTorch eager) on the same machine.
 *
 * `npm run bench:generate [-- --no-reference]`. Figures follow shared/bench/README.md:
 * generate tokens/s = batch × 32 / wall time of one whole `generate` call (vision encoding,
 * a 16-token prompt with one `<image>`, 32 new tokens, greedy, min = max = 32), mean of 2
 * calls after 1 warm-up; prefill = one forward of 1 image + 64 tokens. A benchmark, not a
 * test: it prints a table and never fails on timing.
 */

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { SMALL_CPU, writeRandomModel } from "../test/helpers/random-model.js";
import { Flamingo } from "../ts/src/index.js";

const REPO_ROOT = process.cwd();
const SHARED = resolve(REPO_ROOT, "..", "shared");
// The reference benchmark's token ids (reference_bench.py: EOC, MEDIA = 3, 4).
const EOC = 3;
const MEDIA = 4;
const NEW_TOKENS = 32;
const REPEATS = 2;

type Figures = Record<string, number>;

function images(b: number, size: number, seed: number): { data: Float32Array; shape: number[] } {
  const data = new Float32Array(b * 3 * size * size);
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    data[i] = (s / 2 ** 32) * 4 - 2;
  }
  return { data, shape: [b, 1, 1, 3, size, size] };
}

/** Random ids in 10..30000 with `<image>` first, as the reference's `tokens(dev, b, t, 1)`. */
function prompts(b: number, t: number, seed: number): number[][] {
  let s = seed;
  return Array.from({ length: b }, () =>
    Array.from({ length: t }, (_, i) => {
      s = (s * 1664525 + 1013904223) >>> 0;
      return i === 0 ? MEDIA : 10 + (s % 29990);
    }),
  );
}

/** Mean wall time of `repeats` calls after one warm-up, ms. */
async function timed(fn: () => Promise<unknown>, repeats = REPEATS): Promise<number> {
  await fn();
  const t0 = performance.now();
  for (let i = 0; i < repeats; i++) await fn();
  return (performance.now() - t0) / repeats;
}

async function ours(): Promise<Figures> {
  const cache = join(tmpdir(), "flamingo-vlm-bench", "small-cpu");
  mkdirSync(cache, { recursive: true });
  let t = performance.now();
  const paths = writeRandomModel(cache, SMALL_CPU, 1);
  console.log(`random small-cpu model in ${cache} (${((performance.now() - t) / 1e3).toFixed(1)} s to write or find)`);
  t = performance.now();
  const model = await Flamingo.load({
    ...paths,
    crossAttention: { everyNLayers: 1 },
    tokens: { media: MEDIA, endOfChunk: EOC },
  });
  console.log(`loaded in ${((performance.now() - t) / 1e3).toFixed(1)} s`);
  try {
    return await measure(model);
  } finally {
    await model.dispose();
  }
}

async function measure(model: Flamingo): Promise<Figures> {
  const size = SMALL_CPU.vision.imageSize;
  const r: Figures = {};

  const enc = images(4, size, 1);
  r.encode_images_per_s_b4 = 4 / ((await timed(() => model.encodeVision(enc))) / 1e3);

  const v1 = images(1, size, 2);
  const x64 = prompts(1, 64, 3);
  r.prefill_ms_b1_img1_tok64 = await timed(() =>
    model.forward({ visionX: v1, langX: { data: x64.flat(), shape: [1, 64] } }),
  );

  const lag = monitorEventLoopDelay({ resolution: 1 });
  for (const b of [1, 4]) {
    const vb = images(b, size, 4 + b);
    const xb = prompts(b, 16, 5 + b);
    const options = { maxNewTokens: NEW_TOKENS, minNewTokens: NEW_TOKENS, padTokenId: 0 };
    await model.generate({ visionX: vb, langX: xb }, options); // warm-up
    let native = 0;
    let wall = 0;
    let steps = 0;
    let prefill = 0;
    lag.enable();
    const t0 = performance.now();
    for (let i = 0; i < REPEATS; i++) {
      const out = await model.generate({ visionX: vb, langX: xb }, options);
      native += out.timing.decodeNativeMs;
      wall += out.timing.decodeWallMs;
      steps += out.timing.steps;
      prefill += out.timing.prefillMs;
    }
    const dt = (performance.now() - t0) / REPEATS;
    lag.disable();
    r[`generate_tokens_per_s_b${b}`] = (b * NEW_TOKENS) / (dt / 1e3);
    r[`decode_ms_per_step_b${b}`] = native / steps;
    r[`start_ms_b${b}`] = prefill / REPEATS;
    r[`boundary_share_pct_generate_b${b}`] = (100 * (wall - native)) / wall;
  }
  r.event_loop_lag_max_ms = lag.max / 1e6;

  // Streaming crosses the boundary once per token: the worst case for its share.
  {
    const vb = images(1, size, 9);
    const xb = prompts(1, 16, 10);
    let native = 0;
    let wall = 0;
    for (let i = 0; i < REPEATS; i++) {
      const s = model.stream({ visionX: vb, langX: xb }, { maxNewTokens: NEW_TOKENS, minNewTokens: NEW_TOKENS });
      for await (const _ of s) {
        // Only the timing matters here.
      }
      const out = await s.result;
      native += out.timing.decodeNativeMs;
      wall += out.timing.decodeWallMs;
    }
    r.boundary_share_pct_stream_b1 = (100 * (wall - native)) / wall;
    r.boundary_us_per_call_stream_b1 = (1e3 * (wall - native)) / (REPEATS * NEW_TOKENS);
  }
  r.peak_rss_gib = process.resourceUsage().maxRSS / 2 ** 20;
  return r;
}

function reference(skip: boolean): Figures | string {
  if (skip) return "skipped (--no-reference)";
  const python = process.env.FLAMINGO_REF_PYTHON ?? "/work/venv-ref/bin/python";
  const script = process.env.FLAMINGO_REF_BENCH ?? join(SHARED, "bench", "reference_bench.py");
  if (!existsSync(python)) return `skipped: no Python at ${python} (set FLAMINGO_REF_PYTHON)`;
  if (!existsSync(script)) return `skipped: no ${script} (set FLAMINGO_REF_BENCH)`;
  const out = join(REPO_ROOT, ".tmp", "reference-bench-small-cpu.json");
  mkdirSync(join(REPO_ROOT, ".tmp"), { recursive: true });
  console.log(`running the reference: ${python} ${script} ${out} --preset small-cpu`);
  const run = spawnSync(python, [script, out, "--preset", "small-cpu"], { stdio: "inherit" });
  if (run.status !== 0 || !existsSync(out)) return `failed (exit ${run.status ?? run.signal})`;
  const all = JSON.parse(readFileSync(out, "utf8")) as { "small-cpu"?: Figures; threads?: number };
  return { ...(all["small-cpu"] ?? {}), threads: all.threads ?? Number.NaN };
}

function table(o: Figures, ref: Figures | string): void {
  const r = typeof ref === "string" ? undefined : ref;
  // [label, our key, reference key, higher is better]
  const rows: [string, string, string | undefined, boolean][] = [
    ["generate tokens/s, b1", "generate_tokens_per_s_b1", "generate_tokens_per_s_b1", true],
    ["generate tokens/s, b4", "generate_tokens_per_s_b4", "generate_tokens_per_s_b4", true],
    ["prefill ms, 1 image + 64 tokens", "prefill_ms_b1_img1_tok64", "prefill_ms_b1_img1_tok64", false],
    ["encode + perceiver images/s, b4", "encode_images_per_s_b4", "encode_images_per_s_b4", true],
    ["peak RSS GiB (ours: inference only)", "peak_rss_gib", "peak_rss_gib", false],
    ["decode ms/step (engine), b1", "decode_ms_per_step_b1", undefined, false],
    ["decode ms/step (engine), b4", "decode_ms_per_step_b4", undefined, false],
    ["start ms (vision + prompt), b1", "start_ms_b1", undefined, false],
    ["boundary share of a step, generate b1 %", "boundary_share_pct_generate_b1", undefined, false],
    ["boundary share of a step, stream b1 %", "boundary_share_pct_stream_b1", undefined, false],
    ["boundary µs per native call, stream b1", "boundary_us_per_call_stream_b1", undefined, false],
    ["worst event-loop lag ms (generate)", "event_loop_lag_max_ms", undefined, false],
  ];
  const fmt = (x: number | undefined) =>
    x === undefined || !Number.isFinite(x) ? "—" : x >= 100 ? x.toFixed(0) : x.toFixed(2);
  const lines = ["| figure | flamingo-vlm | reference | ratio (×, >1 = ours better) |", "|---|---|---|---|"];
  for (const [label, key, refKey, higher] of rows) {
    const mine = o[key];
    const theirs = refKey && r ? r[refKey] : undefined;
    const ratio = mine !== undefined && theirs !== undefined ? (higher ? mine / theirs : theirs / mine) : undefined;
    lines.push(`| ${label} | ${fmt(mine)} | ${fmt(theirs)} | ${fmt(ratio)} |`);
  }
  console.log(`\n${lines.join("\n")}`);
  if (typeof ref === "string") console.log(`reference: ${ref}`);
}

async function main(): Promise<void> {
  const skipReference = process.argv.includes("--no-reference");
  const threads = process.env.CANDLE_NUM_THREADS ?? "(candle default)";
  console.log(
    `machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), load average ${loadavg()
      .map((x) => x.toFixed(1))
      .join(" ")}; CANDLE_NUM_THREADS=${threads}`,
  );
  console.log("the machine may be shared: figures from one run are indicative, ratios more than absolutes\n");
  const o = await ours();
  const ref = reference(skipReference);
  table(o, ref);
  console.log(
    `load average at the end: ${loadavg()
      .map((x) => x.toFixed(1))
      .join(" ")}`,
  );
  const out = join(REPO_ROOT, ".tmp", "bench-generate.json");
  mkdirSync(join(REPO_ROOT, ".tmp"), { recursive: true });
  writeFileSync(out, JSON.stringify({ ours: o, reference: ref, loadavg: loadavg() }, null, 1));
  console.log(`figures written to ${out}`);
}

await main();
