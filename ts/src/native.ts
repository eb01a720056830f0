/**
 * The native binding, loaded at run time. The napi-generated loader
 * (`bindings/node/index.js`) is never bundled: it picks the `.node` file for this platform
 * (or `NAPI_RS_NATIVE_LIBRARY_PATH`), and this module turns "no binary fits" into an error
 * that names the platform.
 */

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { ErrorCode, FlamingoError } from "./errors.js";

/** A tensor as the binding takes and returns it. */
export interface NativeTensor<T> {
  data: T;
  shape: number[];
}

/** The binding's `LoadOptions` (bindings/node/src/lib.rs). */
export interface NativeLoadOptions {
  visionDir: string;
  lmDir: string;
  checkpoint?: string;
  mediaTokenId: number;
  endOfChunkTokenId: number;
  crossAttnLayers: number[];
  decoderLayersPath?: string;
  perceiver?: Record<string, unknown>;
  crossAttn?: Record<string, unknown>;
  visionPostLayernorm?: boolean;
  vocabSize?: number;
  strict?: boolean;
  initSeed?: number;
}

export interface NativeForwardInput {
  visionX: NativeTensor<Float32Array>;
  langX: NativeTensor<Int32Array>;
  attentionMask?: NativeTensor<Int32Array>;
  labels?: NativeTensor<Int32Array>;
  allowExcessMediaTokens?: boolean;
}

export interface NativeModel {
  forward(input: NativeForwardInput): Promise<{ logits: NativeTensor<Float32Array>; loss?: number | null }>;
  visionTokens(visionX: NativeTensor<Float32Array>): Promise<NativeTensor<Float32Array>>;
  encodeVision(visionX: NativeTensor<Float32Array>): Promise<NativeTensor<Float32Array>>;
  summary(): unknown;
  report(): unknown;
  readonly disposed: boolean;
  dispose(): Promise<void>;
}

export interface NativeBinding {
  FlamingoModel: { load(options: NativeLoadOptions): Promise<NativeModel> };
  version(): string;
}

const PACKAGE_NAME = "flamingo-vlm";

/** The package root: the nearest folder above this module whose package.json is ours. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, "utf8")) as { name?: string }).name === PACKAGE_NAME) return dir;
      } catch {
        // Not ours or unreadable: keep walking up.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new FlamingoError(
        ErrorCode.NativeBinding,
        `cannot find the ${PACKAGE_NAME} package root above ${fileURLToPath(import.meta.url)}`,
      );
    }
    dir = parent;
  }
}

function platformName(): string {
  const report = process.report?.getReport?.() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const abi = process.platform === "linux" ? (report?.header?.glibcVersionRuntime ? "-gnu" : "-musl") : "";
  return `${process.platform}-${process.arch}${abi}`;
}

let cached: NativeBinding | undefined;

/** The native binding, loaded on first use. */
export function loadNative(): NativeBinding {
  if (cached) return cached;
  const root = packageRoot();
  const loader = join(root, "bindings", "node", "index.js");
  if (!existsSync(loader)) {
    throw new FlamingoError(
      ErrorCode.NativeBinding,
      `the native binding of ${PACKAGE_NAME} is not built (no ${loader}); run \`npm run build\` (needs a Rust toolchain)`,
    );
  }
  try {
    cached = createRequire(import.meta.url)(loader) as NativeBinding;
  } catch (cause) {
    throw new FlamingoError(
      ErrorCode.NativeBinding,
      `no native binary of ${PACKAGE_NAME} fits this platform (${platformName()}, Node ${process.version}); ` +
        `build one with \`npm run build\`, or point NAPI_RS_NATIVE_LIBRARY_PATH at a .node file. ` +
        `Loader said: ${(cause as Error).message.split("\n")[0]}`,
      { cause },
    );
  }
  return cached;
}
