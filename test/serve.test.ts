import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Flamingo, mountFlamingoRoutes, type RunningServer, startFlamingoServer } from "../ts/src/index.js";
import { GRADIENT_PNG } from "./helpers/png.js";

const TINY = join(fileURLToPath(new URL("..", import.meta.url)), "models", "tiny");
const IMAGE = GRADIENT_PNG.toString("base64");

let model: Flamingo;
let service: RunningServer;

beforeAll(async () => {
  model = await Flamingo.fromPretrained(TINY);
  service = await startFlamingoServer(model, { port: 0, maxBodyBytes: 64 * 1024, maxNewTokens: 400 });
});

afterAll(async () => {
  await service?.close();
  await model?.dispose();
});

const post = (path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${service.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init,
  });

/** The value of an unlabelled metric, or of one series (`name{labels}`), in the /metrics text. */
async function metric(series: string): Promise<number> {
  const text = await (await fetch(`${service.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

describe("flamingo HTTP service", () => {
  it("captions a base64 image and answers with JSON", async () => {
    const res = await post("/v1/caption", { image: IMAGE, maxNewTokens: 4 });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { captions: string[]; tokens: number[] };
    expect(body.captions).toHaveLength(1);
    expect(typeof body.captions[0]).toBe("string");
    expect(body.tokens[0]).toBeGreaterThan(0);
    expect(body.tokens[0]).toBeLessThanOrEqual(4);
  });

  it("gives the same caption for the image sent as multipart/form-data as for base64 JSON", async () => {
    const json = (await (await post("/v1/caption", { image: IMAGE, maxNewTokens: 5 })).json()) as {
      captions: string[];
    };
    const form = new FormData();
    form.append("image", new Blob([GRADIENT_PNG], { type: "image/png" }), "gradient.png");
    form.append("maxNewTokens", "5");
    const res = await fetch(`${service.url}/v1/caption`, { method: "POST", body: form });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { captions: string[] }).captions).toEqual(json.captions);
  });

  it("answers a question (vqa) and continues an interleaved prompt (generate)", async () => {
    const vqa = await post("/v1/vqa", { image: IMAGE, question: "what colour?", maxNewTokens: 3 });
    expect(vqa.status).toBe(200);
    expect(typeof ((await vqa.json()) as { answer: string }).answer).toBe("string");
    const gen = await post("/v1/generate", {
      prompt: "<image>Output: two red circles<|endofchunk|><image>Output:",
      images: [IMAGE, IMAGE],
      maxNewTokens: 3,
      minNewTokens: 3,
    });
    expect(gen.status).toBe(200);
    expect(((await gen.json()) as { tokens: number[] }).tokens).toEqual([3]);
  });

  it("streams tokens as Server-Sent Events and ends with a done event matching the non-streamed text", async () => {
    const options = { prompt: "<image>Output:", images: [IMAGE], maxNewTokens: 6, minNewTokens: 6 };
    const whole = (await (await post("/v1/generate", options)).json()) as { text: string };
    const res = await post("/v1/generate", { ...options, stream: true });
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = (await res.text())
      .trim()
      .split("\n\n")
      .map((block) => {
        const [event, data] = block.split("\n");
        return { event: event?.slice("event: ".length), data: JSON.parse(data?.slice("data: ".length) ?? "null") };
      });
    expect(events.map((e) => e.event)).toEqual([...Array(6).fill("token"), "done"]);
    expect(events.slice(0, 6).map((e) => e.data.index)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(events[6]?.data.text).toBe(whole.text);
  });

  it("stops the generation of a client that disconnects mid-stream, and counts it in /metrics", async () => {
    const cancelledBefore = await metric('flamingo_generations_cancelled_total{reason="disconnect"}');
    const tokensBefore = await metric("flamingo_tokens_generated_total");
    const maxNewTokens = 400;
    // node:http rather than fetch: the socket is destroyed right after the first token.
    await new Promise<void>((resolve, reject) => {
      const req = request(`${service.url}/v1/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
      });
      req.on("response", (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", (e) => (req.destroyed ? undefined : reject(e)));
      req.end(
        JSON.stringify({
          prompt: "<image>Output:",
          images: [IMAGE],
          maxNewTokens,
          minNewTokens: maxNewTokens,
          stream: true,
        }),
      );
    });
    // Bounded wait for the server to notice the closed socket and stop.
    let cancelled = cancelledBefore;
    for (let i = 0; i < 100 && cancelled === cancelledBefore; i++) {
      await new Promise((r) => setTimeout(r, 50));
      cancelled = await metric('flamingo_generations_cancelled_total{reason="disconnect"}');
    }
    expect(cancelled).toBe(cancelledBefore + 1);
    expect(await metric("flamingo_generations_running")).toBe(0);
    const made = (await metric("flamingo_tokens_generated_total")) - tokensBefore;
    expect(made).toBeGreaterThan(0);
    expect(made).toBeLessThan(maxNewTokens);
    // The model is free again.
    expect((await post("/v1/caption", { image: IMAGE, maxNewTokens: 2 })).status).toBe(200);
  });

  describe("bad input gets a 4xx JSON error and the server keeps serving", () => {
    const cases: [string, () => Promise<Response>, number, string][] = [
      ["malformed JSON", () => post("/v1/caption", '{"image": '), 400, "invalid_json"],
      [
        "a body over the size limit",
        () => post("/v1/caption", { image: "A".repeat(100 * 1024) }),
        413,
        "payload_too_large",
      ],
      [
        "a wrong content type",
        () => post("/v1/caption", "image=abc", { headers: { "content-type": "text/plain" } }),
        415,
        "unsupported_media_type",
      ],
      [
        "an invalid image",
        () => post("/v1/caption", { image: Buffer.from("not an image at all").toString("base64") }),
        422,
        "invalid_image",
      ],
      ["a missing field", () => post("/v1/vqa", { image: IMAGE }), 400, "invalid_request"],
      ["an unknown field", () => post("/v1/caption", { image: IMAGE, temprature: 1 }), 400, "invalid_request"],
      [
        "a file path instead of image bytes",
        () => post("/v1/caption", { image: "./photos/cat.png" }),
        400,
        "invalid_request",
      ],
      ["an unknown route", () => post("/v1/nothing", { image: IMAGE }), 404, "not_found"],
      ["the wrong method", () => fetch(`${service.url}/v1/caption`), 405, "method_not_allowed"],
      [
        "a broken multipart body",
        () => post("/v1/caption", "--x\r\nno", { headers: { "content-type": "multipart/form-data; boundary=x" } }),
        400,
        "invalid_multipart",
      ],
    ];
    for (const [what, send, status, code] of cases) {
      it(`${what}: ${status} ${code}`, async () => {
        const res = await send();
        expect(res.status).toBe(status);
        expect(res.headers.get("content-type")).toMatch(/^application\/json/);
        const body = (await res.json()) as { error: { code: string; message: string } };
        expect(body.error.code).toBe(code);
        expect(body.error.message.length).toBeGreaterThan(10);
        const health = await fetch(`${service.url}/healthz`);
        expect(health.status).toBe(200);
      });
    }
  });

  it("refuses requests beyond the queue with 429 and serves the rest", async () => {
    const small = await startFlamingoServer(model, { port: 0, concurrency: 1, maxQueue: 1 });
    try {
      const body = JSON.stringify({ prompt: "<image>Output:", images: [IMAGE], maxNewTokens: 30, minNewTokens: 30 });
      const statuses = await Promise.all(
        Array.from({ length: 6 }, () =>
          fetch(`${small.url}/v1/generate`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body,
          }).then(async (r) => {
            await r.arrayBuffer();
            return r.status;
          }),
        ),
      );
      expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(2);
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(1);
      expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    } finally {
      await small.close();
    }
  });

  it("answers 504 when a request outlives its timeout", async () => {
    const slow = await startFlamingoServer(model, { port: 0, timeoutMs: 1, maxNewTokens: 400 });
    try {
      const res = await fetch(`${slow.url}/v1/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "<image>Output:", images: [IMAGE], maxNewTokens: 400, minNewTokens: 400 }),
      });
      expect(res.status).toBe(504);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("timeout");
    } finally {
      await slow.close();
    }
  });

  it("mounts the routes beside an existing server's own routes", async () => {
    const server = createServer((_req, res) => res.end("the app's own page"));
    const handler = mountFlamingoRoutes(server, model, { basePath: "/flamingo" });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      expect(await (await fetch(`${url}/`)).text()).toBe("the app's own page");
      expect(await (await fetch(`${url}/v1/caption`)).text()).toBe("the app's own page");
      const res = await fetch(`${url}/flamingo/v1/caption`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ image: IMAGE, maxNewTokens: 2 }),
      });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { captions: string[] }).captions).toHaveLength(1);
      expect((await fetch(`${url}/flamingo/healthz`)).status).toBe(200);
    } finally {
      handler.close();
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeAllConnections();
      await closed;
    }
  });

  it("reports requests by route and status, queue depth and a latency histogram in /metrics", async () => {
    const text = await (await fetch(`${service.url}/metrics`)).text();
    expect(text).toMatch(/^flamingo_requests_total\{route="\/v1\/caption",status="200"\} [1-9]/m);
    expect(text).toMatch(/^flamingo_requests_total\{route="other",status="404"\} 1$/m);
    expect(text).toMatch(/^flamingo_queue_depth 0$/m);
    expect(text).toMatch(/^flamingo_request_duration_seconds_bucket\{route="\/v1\/caption",le="\+Inf"\} [1-9]/m);
    expect(text).toMatch(/^flamingo_tokens_per_second [0-9.e+-]+$/m);
  });
});
