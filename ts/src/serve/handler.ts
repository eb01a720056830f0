/**
 * The HTTP service on plain `node:http`: `POST /v1/caption`, `/v1/vqa` and `/v1/generate`
 * (JSON with base64 images, or multipart/form-data; Server-Sent Events with `"stream": true`),
 * `GET /healthz` and `GET /metrics`.
 *
 * Every request is bounded: the body by `maxBodyBytes`, the work by a queue of `concurrency`
 * running generations and `maxQueue` waiting ones (429 beyond), the time by `timeoutMs`; a
 * client that goes away cancels its generation through the model's `AbortSignal` support.
 * Every error is a JSON body `{ "error": { "code", "message" } }` with a 4xx/5xx status.
 */

import type { IncomingMessage, Server, ServerResponse } from "node:http";

import type { z } from "zod";

import { ErrorCode, FlamingoError } from "../errors.js";
import { AbortError, type GenerationOptions, type GenerationResult } from "../generate.js";
import type { ImageInput } from "../images.js";
import type { Flamingo } from "../model.js";
import {
  captionPrompt,
  encodePrompts,
  type Prompt,
  postprocessCaption,
  postprocessVqa,
  vqaPrompt,
} from "../prompts.js";
import { type CancelReason, ServiceMetrics } from "./metrics.js";
import { MultipartError, multipartBoundary, parseMultipart } from "./multipart.js";
import { BoundedQueue, QueueFullError } from "./queue.js";
import { formToBody, GENERATION_KEYS, requestSchemas } from "./requests.js";

/** Options of {@link createFlamingoHandler}. */
export interface FlamingoServiceOptions {
  /** Largest request body accepted, in bytes (413 beyond). Default: 10 MiB. */
  maxBodyBytes?: number;
  /**
   * Generations running at once. The model's engine thread runs one native call at a time,
   * so more than 1 interleaves the requests token by token (short requests are not stuck
   * behind long ones) rather than adding compute. Default: 2.
   */
  concurrency?: number;
  /** Requests that may wait for a slot; one more gets 429. Default: 32. */
  maxQueue?: number;
  /** Time a request may take from arrival to the end of its answer, queueing included (504 / a stream `error` event beyond). Default: 60000 ms. */
  timeoutMs?: number;
  /** Most new tokens a request may ask for. Default: 256. */
  maxNewTokens?: number;
  /** Most images in one request, demos included. Default: 16. */
  maxImages?: number;
  /** Largest image (width × height) decoded; checked from the header before decoding. Default: 40,000,000. */
  maxPixels?: number;
  /** Path prefix of every route, e.g. `"/flamingo"`. Default: none. */
  basePath?: string;
}

/** A `node:http` request listener serving the routes, with its metrics and a way to stop. */
export interface FlamingoHandler {
  /** Serves `req`; a path that is not one of the routes gets a 404 JSON error. */
  (req: IncomingMessage, res: ServerResponse): void;
  /** Whether `req`'s path is one of the routes (what {@link mountFlamingoRoutes} dispatches on). */
  handles(req: IncomingMessage): boolean;
  readonly metrics: ServiceMetrics;
  /** Refuses waiting requests and cancels running generations (the model is not disposed). */
  close(): void;
}

/** An error answered as `{ error: { code, message } }` with `status`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

const GENERATION_ROUTES = ["/v1/caption", "/v1/vqa", "/v1/generate"] as const;
type GenerationRoute = (typeof GENERATION_ROUTES)[number];

/** What a generation route asks the model for. */
interface Task {
  prompts: Prompt[];
  options: GenerationOptions;
  /** The JSON answer (and the stream's `done` event) from the decoded texts and the result. */
  answer(texts: string[], result: GenerationResult): Record<string, unknown>;
}

/** Why a request's signal aborted. */
class Cancel {
  constructor(readonly reason: CancelReason) {}
}

const pathOf = (req: IncomingMessage) => (req.url ?? "/").split("?")[0] ?? "/";

/** A request body, bounded: past `limit` bytes the rest is drained (up to 4× the limit) and a 413 raised. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const tooLarge = () =>
      new HttpError(413, "payload_too_large", `the request body is larger than this server's limit of ${limit} bytes`);
    if (Number.isFinite(declared) && declared > limit * 4) {
      // Not worth draining: answer now and let the connection close.
      reject(tooLarge());
      return;
    }
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else if (size > limit * 4) req.destroy();
    });
    req.on("end", () => (size > limit ? reject(tooLarge()) : resolve(Buffer.concat(chunks, size))));
    req.on("error", reject);
    req.on("close", () => {
      if (req.complete) return;
      reject(size > limit ? tooLarge() : new HttpError(400, "incomplete_body", "the request body ended early"));
    });
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendError(res: ServerResponse, error: HttpError, headers: Record<string, string> = {}): void {
  sendJson(res, error.status, { error: { code: error.code, message: error.message } }, headers);
}

/** A failure from the model or the image loader as the HTTP error a client should see. */
function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof FlamingoError) {
    if (error.code.startsWith("ERR_IMAGE_")) return new HttpError(422, "invalid_image", error.message);
    if (error.code === ErrorCode.InvalidInput) return new HttpError(400, "invalid_request", error.message);
  }
  return new HttpError(500, "internal", `the generation failed: ${(error as Error).message ?? String(error)}`);
}

/** A zod failure as one readable line per issue. */
function validationError(error: z.ZodError): HttpError {
  const issues = error.issues.map((i) => (i.path.length ? `${i.path.join(".")}: ${i.message}` : i.message));
  return new HttpError(400, "invalid_request", issues.join("; "));
}

/**
 * The routes as a `node:http` request listener for `model` (which needs its tokenizer:
 * load it with `Flamingo.fromPretrained`). `http.createServer(createFlamingoHandler(model))`
 * is a complete server; {@link mountFlamingoRoutes} adds the routes to an existing one.
 */
export function createFlamingoHandler(model: Flamingo, options: FlamingoServiceOptions = {}): FlamingoHandler {
  const maxBodyBytes = options.maxBodyBytes ?? 10 * 1024 * 1024;
  const timeoutMs = options.timeoutMs ?? 60_000;
  const maxPixels = options.maxPixels ?? 40_000_000;
  const base = (options.basePath ?? "").replace(/\/+$/, "");
  const queue = new BoundedQueue(options.concurrency ?? 2, options.maxQueue ?? 32);
  const metrics = new ServiceMetrics(() => ({ queueDepth: queue.waiting, running: queue.running }));
  const schemas = requestSchemas({ maxNewTokens: options.maxNewTokens ?? 256, maxImages: options.maxImages ?? 16 });
  const running = new Set<AbortController>();
  const tokenizer = model.tokenizer;
  if (tokenizer === undefined) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      "the service needs the model's tokenizer: load the model with Flamingo.fromPretrained",
    );
  }
  // The model's own preprocessing (size, mean, std), as `caption` and `vqa` use it.
  const imageOptions = model.imageOptions();
  let closed = false;

  const routeOf = (req: IncomingMessage): string | undefined => {
    const path = pathOf(req);
    if (!path.startsWith(`${base}/`)) return undefined;
    const route = path.slice(base.length);
    return ["/healthz", "/metrics", ...GENERATION_ROUTES].includes(route) ? route : undefined;
  };

  /** A validated body as the prompts and options of its route. */
  function taskOf(route: GenerationRoute, body: unknown): Task & { stream: boolean } {
    const pick = (r: Record<string, unknown>): GenerationOptions =>
      Object.fromEntries(GENERATION_KEYS.filter((k) => r[k] !== undefined).map((k) => [k, r[k]]));
    const usage = (result: GenerationResult) => ({
      tokens: result.newTokens.map((t) => t.length),
      stopped: result.stopped,
    });
    const parse = <S extends z.ZodType>(schema: S): z.output<S> => {
      const parsed = schema.safeParse(body);
      if (!parsed.success) throw validationError(parsed.error);
      return parsed.data;
    };
    if (route === "/v1/caption") {
      const r = parse(schemas.caption);
      const images: ImageInput[] = r.images ?? (r.image ? [r.image] : []);
      return {
        prompts: images.map((query) => captionPrompt({ demos: r.demos, query, textOnlyDemos: r.textOnlyDemos })),
        // The reference's decoding (3 beams) unless streaming, where beams would hold every token back to the end.
        options: { numBeams: r.stream ? 1 : 3, lengthPenalty: 0, maxNewTokens: 20, ...pick(r) },
        answer: (texts, result) => ({ captions: texts.map(postprocessCaption), ...usage(result) }),
        stream: r.stream ?? false,
      };
    }
    if (route === "/v1/vqa") {
      const r = parse(schemas.vqa);
      return {
        prompts: [
          vqaPrompt({
            demos: r.demos,
            query: { image: r.image, question: r.question },
            textOnlyDemos: r.textOnlyDemos,
          }),
        ],
        options: { numBeams: r.stream ? 1 : 3, lengthPenalty: 0, maxNewTokens: 5, ...pick(r) },
        answer: (texts, result) => ({ answer: postprocessVqa(texts[0] ?? ""), ...usage(result) }),
        stream: r.stream ?? false,
      };
    }
    const r = parse(schemas.generate);
    return {
      prompts: [{ text: r.prompt, images: r.images }],
      options: { maxNewTokens: 20, ...pick(r) },
      answer: (texts, result) => ({ text: texts[0] ?? "", ...usage(result) }),
      stream: r.stream ?? false,
    };
  }

  async function readRequest(req: IncomingMessage, route: GenerationRoute): Promise<unknown> {
    const type = (req.headers["content-type"] ?? "").toLowerCase();
    const isJson = /^application\/json\b/.test(type);
    const isForm = /^multipart\/form-data\b/.test(type);
    if (!isJson && !isForm) {
      throw new HttpError(
        415,
        "unsupported_media_type",
        `send application/json (images as base64) or multipart/form-data, not ${type || "a body without Content-Type"}`,
      );
    }
    const body = await readBody(req, maxBodyBytes);
    if (isJson) {
      try {
        return JSON.parse(body.toString("utf8"));
      } catch (error) {
        throw new HttpError(400, "invalid_json", `the body is not valid JSON: ${(error as Error).message}`);
      }
    }
    try {
      const parts = parseMultipart(body, multipartBoundary(type));
      return formToBody(parts, route === "/v1/vqa" ? "image" : route === "/v1/generate" ? "images" : "either");
    } catch (error) {
      if (error instanceof MultipartError) throw new HttpError(400, "invalid_multipart", error.message);
      throw error;
    }
  }

  async function serveGeneration(req: IncomingMessage, res: ServerResponse, route: GenerationRoute): Promise<number> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Cancel("timeout")), timeoutMs);
    const onClose = () => {
      if (!res.writableFinished) controller.abort(new Cancel("disconnect"));
    };
    res.on("close", onClose);
    let release: (() => void) | undefined;
    let tokens = 0;
    let started = 0;
    let completed = false;
    running.add(controller);
    try {
      if (req.method !== "POST") throw new HttpError(405, "method_not_allowed", `${route} takes POST`);
      const task = taskOf(route, await readRequest(req, route));
      try {
        release = await queue.acquire(controller.signal);
      } catch (error) {
        if (error instanceof QueueFullError) throw new HttpError(429, "queue_full", error.message);
        throw error;
      }
      const signal = controller.signal;
      const input = await encodePrompts(tokenizer as NonNullable<typeof tokenizer>, task.prompts, {
        image: { ...imageOptions, maxPixels },
      });
      if (signal.aborted) throw signal.reason;
      started = performance.now();
      const modelInput = { visionX: input.visionX, langX: input.langX, attentionMask: input.attentionMask };
      if (!task.stream) {
        const result = await model.generate(modelInput, { ...task.options, signal });
        tokens = result.newTokens.reduce((n, t) => n + t.length, 0);
        completed = true;
        sendJson(res, 200, task.answer(result.text ?? [], result));
        return 200;
      }
      const generation = model.stream(modelInput, { ...task.options, signal });
      res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      });
      for await (const event of generation) {
        tokens++;
        res.write(`event: token\ndata: ${JSON.stringify(event)}\n\n`);
      }
      const result = await generation.result;
      completed = true;
      res.end(`event: done\ndata: ${JSON.stringify(task.answer(result.text ?? [], result))}\n\n`);
      return 200;
    } catch (caught) {
      let error = caught;
      const reason = controller.signal.reason;
      if (controller.signal.aborted && (caught instanceof AbortError || caught === reason)) {
        const why: CancelReason = reason instanceof Cancel ? reason.reason : "shutdown";
        if (started > 0) metrics.observeCancel(why);
        if (why === "disconnect") return 499; // nginx's "client closed request": nobody to answer
        error =
          why === "timeout"
            ? new HttpError(504, "timeout", `the request took longer than this server's limit of ${timeoutMs} ms`)
            : new HttpError(503, "shutting_down", "the server is shutting down");
      }
      const http = toHttpError(error);
      if (res.headersSent) {
        // A stream already under way: say why it ends.
        res.end(`event: error\ndata: ${JSON.stringify({ error: { code: http.code, message: http.message } })}\n\n`);
      } else {
        const headers: Record<string, string> =
          http.status === 413 ? { connection: "close" } : http.status === 429 ? { "retry-after": "1" } : {};
        sendError(res, http, headers);
      }
      return http.status;
    } finally {
      clearTimeout(timer);
      res.off("close", onClose);
      running.delete(controller);
      release?.();
      if (started > 0) metrics.observeGeneration(tokens, (performance.now() - started) / 1000, completed);
    }
  }

  function serveInfo(req: IncomingMessage, res: ServerResponse, route: string): number {
    if (req.method !== "GET" && req.method !== "HEAD") {
      sendError(res, new HttpError(405, "method_not_allowed", `${route} takes GET`));
      return 405;
    }
    if (route === "/metrics") {
      const text = metrics.render();
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
      res.end(text);
      return 200;
    }
    const status = closed ? 503 : 200;
    sendJson(res, status, {
      status: closed ? "closing" : "ok",
      queueDepth: queue.waiting,
      running: queue.running,
      model: model.summary(),
    });
    return status;
  }

  const handler = ((req: IncomingMessage, res: ServerResponse) => {
    const begun = performance.now();
    const route = routeOf(req);
    const done = (status: number) =>
      metrics.observeRequest(route ?? "other", status, (performance.now() - begun) / 1000);
    if (route === undefined) {
      // Read (and drop) any body so that the client gets the answer, not a reset.
      req.resume();
      sendError(res, new HttpError(404, "not_found", `no route ${req.method} ${pathOf(req)}`));
      done(404);
    } else if (route === "/healthz" || route === "/metrics") {
      done(serveInfo(req, res, route));
    } else if (closed) {
      req.resume();
      sendError(res, new HttpError(503, "shutting_down", "the server is shutting down"));
      done(503);
    } else {
      serveGeneration(req, res, route as GenerationRoute).then(done, (error: unknown) => {
        sendError(res, toHttpError(error));
        done(500);
      });
    }
  }) as FlamingoHandler;
  Object.defineProperty(handler, "metrics", { value: metrics });
  handler.handles = (req) => routeOf(req) !== undefined;
  handler.close = () => {
    closed = true;
    queue.rejectWaiting(new Cancel("shutdown"));
    for (const controller of running) controller.abort(new Cancel("shutdown"));
  };
  return handler;
}

/** An app with Connect/Express-style middleware (`app.use((req, res, next) => …)`). */
export interface MiddlewareApp {
  use(middleware: (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void): unknown;
}

/**
 * Adds the routes to an existing server: a `node:http` `Server` (requests to other paths go
 * to the server's own `request` listeners, or get a 404 JSON when it has none) or an app
 * with `use()` middleware (other paths go to `next()`). Returns the handler (metrics, close).
 */
export function mountFlamingoRoutes(
  target: Server | MiddlewareApp,
  model: Flamingo,
  options: FlamingoServiceOptions = {},
): FlamingoHandler {
  const handler = createFlamingoHandler(model, options);
  if ("listeners" in target && typeof target.listeners === "function") {
    const server = target as Server;
    const others = server.listeners("request") as ((req: IncomingMessage, res: ServerResponse) => void)[];
    server.removeAllListeners("request");
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      if (handler.handles(req) || others.length === 0) handler(req, res);
      else for (const listener of others) listener.call(server, req, res);
    });
  } else {
    (target as MiddlewareApp).use((req, res, next) => (handler.handles(req) ? handler(req, res) : next()));
  }
  return handler;
}
