/**
 * Service benchmark (issue #6, must-show 2): the HTTP service on 127.0.0.1 with the embedded
 * model, driven by an in-process client.
 *
 * 1. Burst: 200 `POST /v1/caption` requests from 16 concurrent clients against a server with
 *    `concurrency` 2 and a queue of 8: every request must end in 200 or 429 (none lost or
 *    hung: each has a 60 s client deadline; a client waits the 429's Retry-After); latency
 *    p50/p99 of the 200s and requests/s.
 * 2. Soak: 1000 sequential requests; RSS after a 200-request warm-up vs at the end (< 10%).
 *
 * `npm run bench:serve`. A benchmark, not a test: it prints a table and exits 1 only when a
 * request was lost or hung (a correctness failure), never on timing.
 */

import { cpus, loadavg } from "node:os";


import { rgbPng } from "../test/helpers/png.js";
import { Flamingo, startFlamingoServer } from "../ts/src/index.js";
import { defaultModelDir } from "../ts/src/cli/default-model.js";

const BURST_REQUESTS = 200;
const CLIENTS = 16;
const SOAK_REQUESTS = 1000;
// RSS climbs over the first ~200 requests (allocator arenas of the thread pool and the engine
// thread filling up) and is flat after; growth is measured from there.
const WARMUP = 200;
const CLIENT_DEADLINE_MS = 60_000;


const image = rgbPng(64, 48, (x, y) => [x * 4, y * 5, (x + y) % 256]).toString("base64");
const body = JSON.stringify({ image, maxNewTokens: 8, numBeams: 1 });

type Outcome = { status: number | "lost"; ms: number; retryAfterMs: number };

async function send(url: string): Promise<Outcome> {
  const start = performance.now();
  try {
    const res = await fetch(`${url}/v1/caption`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      signal: AbortSignal.timeout(CLIENT_DEADLINE_MS),
    });
    await res.arrayBuffer();
    const retryAfterMs = Number(res.headers.get("retry-after") ?? 0) * 1000;
    return { status: res.status, ms: performance.now() - start, retryAfterMs };
  } catch {
    return { status: "lost", ms: performance.now() - start, retryAfterMs: 0 };
  }
}

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0 ? Number.NaN : (sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN);

const modelDir = defaultModelDir();
const model = await Flamingo.fromPretrained(modelDir);
const service = await startFlamingoServer(model, { port: 0, host: "127.0.0.1", concurrency: 2, maxQueue: 8 });
console.log(`model: ${modelDir.split("/").slice(-2).join("/")}; ${cpus().length} CPUs, load ${loadavg()[0]?.toFixed(1)}; server ${service.url}`);

const mb = (b: number) => `${(b / 1024 / 1024).toFixed(1)} MB`;

// 1. Burst.
const outcomes: Outcome[] = [];
let next = 0;
const burstStart = performance.now();
await Promise.all(
  Array.from({ length: CLIENTS }, async () => {
    while (next < BURST_REQUESTS) {
      next++;
      const outcome = await send(service.url);
      outcomes.push(outcome);
      // A polite client honours the 429's Retry-After (seconds) instead of hammering the full queue.
      if (outcome.status === 429) await new Promise((resolve) => setTimeout(resolve, outcome.retryAfterMs));
    }
  }),
);
const burstSeconds = (performance.now() - burstStart) / 1000;
const ok = outcomes.filter((o) => o.status === 200);
const refused = outcomes.filter((o) => o.status === 429);
const other = outcomes.filter((o) => o.status !== 200 && o.status !== 429 && o.status !== "lost");
const lost = outcomes.filter((o) => o.status === "lost");
const okMs = ok.map((o) => o.ms).sort((a, b) => a - b);

// 2. Soak.
for (let i = 0; i < WARMUP; i++) await send(service.url);
global.gc?.();
const rssBefore = process.memoryUsage().rss;
const soakStart = performance.now();
let soakFailed = 0;
const trace: string[] = [];
for (let i = 1; i <= SOAK_REQUESTS; i++) {
  if ((await send(service.url)).status !== 200) soakFailed++;
  if (i % 200 === 0) {
    global.gc?.();
    const m = process.memoryUsage();
    trace.push(`${i}: rss ${mb(m.rss)}, heap ${mb(m.heapUsed)}, external ${mb(m.external)}`);
  }
}
const soakSeconds = (performance.now() - soakStart) / 1000;
global.gc?.();
const rssAfter = process.memoryUsage().rss;
const growth = ((rssAfter - rssBefore) / rssBefore) * 100;

const metrics = await (await fetch(`${service.url}/metrics`)).text();
const tokens = /^flamingo_tokens_generated_total (\S+)$/m.exec(metrics)?.[1];
await service.close();
await model.dispose();

// 3. dispose() frees the native model: load and dispose the model 50 times; without the
// free, RSS would grow by about 50 × the weights.
const DISPOSE_CYCLES = 50;
global.gc?.();
const rssBeforeCycles = process.memoryUsage().rss;
for (let i = 0; i < DISPOSE_CYCLES; i++) {
  await using cycled = await Flamingo.fromPretrained(modelDir);
  void cycled;
}
global.gc?.();
const rssAfterCycles = process.memoryUsage().rss;

const rows: [string, string][] = [
  [`burst: requests (${CLIENTS} clients)`, String(outcomes.length)],
  ["burst: 200 OK", String(ok.length)],
  ["burst: 429 queue full", String(refused.length)],
  ["burst: other status", String(other.length)],
  ["burst: lost or hung", String(lost.length)],
  ["burst: latency p50 (200s)", `${percentile(okMs, 50).toFixed(1)} ms`],
  ["burst: latency p99 (200s)", `${percentile(okMs, 99).toFixed(1)} ms`],
  ["burst: requests/s (all answers)", (outcomes.length / burstSeconds).toFixed(1)],
  ["burst: requests/s (200s)", (ok.length / burstSeconds).toFixed(1)],
  [`soak: ${SOAK_REQUESTS} sequential, failed`, String(soakFailed)],
  ["soak: requests/s", (SOAK_REQUESTS / soakSeconds).toFixed(1)],
  ["soak: RSS after warm-up → after", `${mb(rssBefore)} → ${mb(rssAfter)}`],
  ["soak: RSS growth", `${growth.toFixed(2)}% (goal < 10%)`],
  ["tokens generated (server)", String(tokens)],
  [`load + dispose × ${DISPOSE_CYCLES}: RSS before → after`, `${mb(rssBeforeCycles)} → ${mb(rssAfterCycles)}`],
];
console.log(`soak memory after n requests (after a GC):\n  ${trace.join("\n  ")}`);
const width = Math.max(...rows.map(([k]) => k.length));
console.log(`\n| ${"measure".padEnd(width)} | value |\n|${"-".repeat(width + 2)}|-------|`);
for (const [k, v] of rows) console.log(`| ${k.padEnd(width)} | ${v} |`);
if (lost.length > 0 || other.length > 0 || outcomes.length !== BURST_REQUESTS) process.exitCode = 1;

