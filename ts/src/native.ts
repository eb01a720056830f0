/**
 * The native binding, loaded at run time and chosen in this order:
 *
 * 1. `NAPI_RS_NATIVE_LIBRARY_PATH`, when set: that `.node` file and nothing else;
 * 2. with `FLAMINGO_BACKEND=cuda` or `auto` (the default): the CUDA build, the optional
 *    package `flamingo-vlm-<platform>-cuda`, when it is installed, loads, and sees a device;
 * 3. the CPU build: the prebuilt package `flamingo-vlm-<platform>` (an optional dependency
 *    npm picks by `os`/`cpu`/`libc`), then the local build `bindings/node/flamingo-vlm.<platform>.node`
 *    (`npm run build` in a clone).
 *
 * With `auto`, an unusable CUDA build falls back to the CPU one and the reason is kept
 * ({@link nativeBackend}, shown by `flamingo info`). When nothing loads, the error names the
 * platform, each place tried and why it failed, and what to install.
 */

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, isAbsolute, join } from "node:path";
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

/** Which build `FLAMINGO_BACKEND` asks for. */
export type BackendPreference = "cpu" | "cuda" | "auto";

/** Which native build was loaded, from where, and why. */
export interface BackendInfo {
  /** The build in use. */
  backend: "cpu" | "cuda";
  /** What `FLAMINGO_BACKEND` asked for (`auto` when unset). */
  requested: BackendPreference;
  /** The package name or file the binding came from. */
  source: string;
  /** `linux-x64-gnu` and the like: the platform the prebuilt packages are named after. */
  platform: string;
  /** Why this build: e.g. why the CUDA build was not used. */
  reason: string;
}

/** The package root: the nearest folder above this module whose package.json is ours. */
export function packageRoot(): string {
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

/** `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`, …: napi-rs's platform names. */
export function platformName(): string {
  const report = process.report?.getReport?.() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const abi = process.platform === "linux" ? (report?.header?.glibcVersionRuntime ? "-gnu" : "-musl") : "";
  return `${process.platform}-${process.arch}${abi}`;
}

/** The `FLAMINGO_BACKEND` setting. */
export function backendPreference(value = process.env.FLAMINGO_BACKEND): BackendPreference {
  const v = (value ?? "auto").trim().toLowerCase() || "auto";
  if (v === "cpu" || v === "cuda" || v === "auto") return v;
  throw new FlamingoError(
    ErrorCode.InvalidInput,
    `FLAMINGO_BACKEND must be cpu, cuda or auto, not ${JSON.stringify(value)}`,
  );
}

/** One place a binding may come from. */
export interface BindingCandidate {
  backend: "cpu" | "cuda";
  /** A package name or a file path, as `require` takes it. */
  source: string;
  /** Loads it; throws when it is absent or does not load. */
  load(): NativeBinding;
}

/** Why a candidate failed, in a few words. */
function failure(source: string, error: unknown): string {
  const e = error as { code?: string; message?: string };
  if (e?.code === "MODULE_NOT_FOUND" && e.message?.includes(source)) {
    return isAbsolute(source) ? "no such file" : "not installed";
  }
  return (e?.message ?? String(error)).split("\n")[0] ?? "failed to load";
}

/** A CUDA build is usable when it loads and reports at least one device. */
function cudaUsable(binding: NativeBinding): string | undefined {
  const devices = (binding as { cudaDeviceCount?: () => number }).cudaDeviceCount;
  if (typeof devices !== "function") return "the CUDA build does not report its devices (cudaDeviceCount)";
  const n = devices();
  return n > 0 ? undefined : "no CUDA device is visible";
}

/**
 * Picks the binding for `preference` among `cuda` (the CUDA build, if any) and `cpu` (the
 * CPU builds, in order). Pure apart from the candidates' `load`, so that the fallback can be
 * tested without a GPU.
 */
export function selectBinding(
  preference: BackendPreference,
  cuda: BindingCandidate | undefined,
  cpu: readonly BindingCandidate[],
  platform: string,
): { binding: NativeBinding; info: BackendInfo } {
  const tried: string[] = [];
  let reason = "FLAMINGO_BACKEND=cpu";
  if (preference !== "cpu") {
    let why: string;
    if (cuda === undefined) why = `no CUDA build exists for ${platform}`;
    else {
      try {
        const binding = cuda.load();
        const unusable = cudaUsable(binding);
        if (unusable === undefined) {
          const info = {
            backend: "cuda",
            requested: preference,
            source: cuda.source,
            platform,
            reason: "a CUDA device is visible",
          } as const;
          return { binding, info };
        }
        why = `${cuda.source}: ${unusable}`;
      } catch (error) {
        why = `${cuda.source}: ${failure(cuda.source, error)}`;
      }
    }
    if (preference === "cuda") {
      throw new FlamingoError(
        ErrorCode.NativeBinding,
        `FLAMINGO_BACKEND=cuda, but the CUDA build cannot be used (${why}); install ${PACKAGE_NAME}-${platform}-cuda on a machine with an NVIDIA GPU, or set FLAMINGO_BACKEND=auto to fall back to the CPU`,
      );
    }
    reason = `CUDA build not used: ${why}`;
  }
  for (const candidate of cpu) {
    try {
      const binding = candidate.load();
      return { binding, info: { backend: "cpu", requested: preference, source: candidate.source, platform, reason } };
    } catch (error) {
      tried.push(`${candidate.source} (${failure(candidate.source, error)})`);
    }
  }
  throw new FlamingoError(
    ErrorCode.NativeBinding,
    `no native binary of ${PACKAGE_NAME} fits this platform (${platform}, Node ${process.version}); tried ${tried.join(", ")}. ` +
      `Install the prebuilt package: \`npm install ${PACKAGE_NAME}-${platform}\` (npm leaves it out with --omit=optional, or when the ` +
      `lockfile was made on another platform), or build from source with \`npm run build\` (needs a Rust toolchain), ` +
      `or point NAPI_RS_NATIVE_LIBRARY_PATH at a .node file.`,
  );
}

let cached: { binding: NativeBinding; info: BackendInfo } | undefined;

function load(): { binding: NativeBinding; info: BackendInfo } {
  if (cached) return cached;
  const root = packageRoot();
  const platform = platformName();
  const requireFromRoot = createRequire(join(root, "package.json"));
  const candidate = (backend: "cpu" | "cuda", source: string): BindingCandidate => ({
    backend,
    source,
    load: () => requireFromRoot(source) as NativeBinding,
  });
  const override = process.env.NAPI_RS_NATIVE_LIBRARY_PATH;
  if (override) {
    cached = selectBinding("cpu", undefined, [candidate("cpu", override)], platform);
    cached.info.reason = "NAPI_RS_NATIVE_LIBRARY_PATH";
    return cached;
  }
  const devBuild = join(root, "bindings", "node", `${PACKAGE_NAME}.${platform}.node`);
  cached = selectBinding(
    backendPreference(),
    candidate("cuda", `${PACKAGE_NAME}-${platform}-cuda`),
    [candidate("cpu", `${PACKAGE_NAME}-${platform}`), candidate("cpu", devBuild)],
    platform,
  );
  return cached;
}

/** The native binding, loaded on first use. */
export function loadNative(): NativeBinding {
  return load().binding;
}

/** Which native build is in use and why (loads it if it was not yet). */
export function nativeBackend(): BackendInfo {
  return { ...load().info };
}
