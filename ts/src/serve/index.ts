/**
 * The HTTP service: {@link createFlamingoHandler} / {@link mountFlamingoRoutes} for embedding
 * the routes, {@link startFlamingoServer} for a standalone server (`flamingo serve`).
 */

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import type { Flamingo } from "../model.js";
import { createFlamingoHandler, type FlamingoHandler, type FlamingoServiceOptions } from "./handler.js";

export {
  createFlamingoHandler,
  type FlamingoHandler,
  type FlamingoServiceOptions,
  HttpError,
  type MiddlewareApp,
  mountFlamingoRoutes,
} from "./handler.js";
export { type CancelReason, LATENCY_BUCKETS, ServiceMetrics } from "./metrics.js";

/** Options of {@link startFlamingoServer}. */
export interface StartServerOptions extends FlamingoServiceOptions {
  /** Port; 0 picks a free one. Default: 8080. */
  port?: number;
  /** Interface to bind. Default: `"127.0.0.1"` (set `"0.0.0.0"` to serve other machines). */
  host?: string;
}

/** A running service. */
export interface RunningServer {
  server: Server;
  handler: FlamingoHandler;
  /** `http://host:port`. */
  url: string;
  /** Stops accepting connections, cancels what runs, and resolves once the server has closed. */
  close(): Promise<void>;
}

/** Starts a standalone server for `model` and resolves once it listens. */
export async function startFlamingoServer(model: Flamingo, options: StartServerOptions = {}): Promise<RunningServer> {
  const { port = 8080, host = "127.0.0.1", ...service } = options;
  const handler = createFlamingoHandler(model, service);
  const server = createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return {
    server,
    handler,
    url: `http://${shownHost}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        handler.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
