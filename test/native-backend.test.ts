/**
 * The loader's choice between the CUDA and CPU builds (FLAMINGO_BACKEND), tested with
 * stand-in candidates so that it runs on machines without a GPU or a CUDA package.
 */

import { describe, expect, it } from "vitest";

import { FlamingoError } from "../ts/src/index.js";
import { type BindingCandidate, backendPreference, type NativeBinding, selectBinding } from "../ts/src/native.js";

const binding = (extra: Record<string, unknown> = {}) =>
  ({ version: () => "test", ...extra }) as unknown as NativeBinding;
const notInstalled = (name: string): BindingCandidate => ({
  backend: "cuda",
  source: name,
  load: () => {
    throw Object.assign(new Error(`Cannot find module '${name}'`), { code: "MODULE_NOT_FOUND" });
  },
});
const cpu: BindingCandidate = { backend: "cpu", source: "flamingo-vlm-linux-x64-gnu", load: () => binding() };
const CUDA = "flamingo-vlm-linux-x64-gnu-cuda";

describe("native backend selection", () => {
  it("auto without the CUDA package: the CPU build, with the reason recorded", () => {
    const { info } = selectBinding("auto", notInstalled(CUDA), [cpu], "linux-x64-gnu");
    expect(info).toEqual({
      backend: "cpu",
      requested: "auto",
      source: "flamingo-vlm-linux-x64-gnu",
      platform: "linux-x64-gnu",
      reason: `CUDA build not used: ${CUDA}: not installed`,
    });
  });

  it("auto with a CUDA build that sees no device: the CPU build, saying so", () => {
    const cuda = { backend: "cuda", source: CUDA, load: () => binding({ cudaDeviceCount: () => 0 }) } as const;
    const { info } = selectBinding("auto", cuda, [cpu], "linux-x64-gnu");
    expect(info.backend).toBe("cpu");
    expect(info.reason).toBe(`CUDA build not used: ${CUDA}: no CUDA device is visible`);
  });

  it("auto with a usable CUDA build: the CUDA build", () => {
    const cuda = { backend: "cuda", source: CUDA, load: () => binding({ cudaDeviceCount: () => 1 }) } as const;
    expect(selectBinding("auto", cuda, [cpu], "linux-x64-gnu").info.backend).toBe("cuda");
  });

  it("cpu never tries the CUDA build", () => {
    const cuda = {
      backend: "cuda",
      source: CUDA,
      load: () => {
        throw new Error("must not be loaded");
      },
    } as const;
    const { info } = selectBinding("cpu", cuda, [cpu], "linux-x64-gnu");
    expect(info).toMatchObject({ backend: "cpu", reason: "FLAMINGO_BACKEND=cpu" });
  });

  it("cuda without a usable CUDA build fails, naming the package to install", () => {
    expect(() => selectBinding("cuda", notInstalled(CUDA), [cpu], "linux-x64-gnu")).toThrow(
      /FLAMINGO_BACKEND=cuda.*not installed.*install flamingo-vlm-linux-x64-gnu-cuda/,
    );
  });

  it("falls back from the platform package to the local build, and names both when neither loads", () => {
    const missingPackage = { ...notInstalled("flamingo-vlm-linux-x64-gnu"), backend: "cpu" } as const;
    const local = {
      backend: "cpu",
      source: "/repo/bindings/node/flamingo-vlm.linux-x64-gnu.node",
      load: () => binding(),
    } as const;
    expect(selectBinding("cpu", undefined, [missingPackage, local], "linux-x64-gnu").info.source).toBe(local.source);

    const broken = {
      ...local,
      load: () => {
        throw new Error("invalid ELF header");
      },
    };
    let error: unknown;
    try {
      selectBinding("auto", undefined, [missingPackage, broken], "darwin-arm64");
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlamingoError);
    const message = (error as FlamingoError).message;
    expect((error as FlamingoError).code).toBe("ERR_NATIVE_BINDING");
    expect(message).toContain("darwin-arm64");
    expect(message).toContain("flamingo-vlm-linux-x64-gnu (not installed)");
    expect(message).toContain("(invalid ELF header)");
    expect(message).toContain("npm install flamingo-vlm-darwin-arm64");
  });

  it("reads FLAMINGO_BACKEND, refusing other values", () => {
    expect(backendPreference(undefined)).toBe("auto");
    expect(backendPreference("CUDA")).toBe("cuda");
    expect(() => backendPreference("gpu")).toThrow(/cpu, cuda or auto/);
  });
});

describe("the real CPU build", () => {
  it("reports no CUDA devices, so the loader never mistakes it for a usable CUDA build", async () => {
    const { loadNative } = await import("../ts/src/native.js");
    const native = loadNative() as unknown as { cudaDeviceCount: () => number };
    expect(native.cudaDeviceCount()).toBe(0);
  });
});
