/** The `flamingo` command line, run in-process with captured output. */

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";

import { afterAll, describe, expect, it } from "vitest";

import { runCli } from "../ts/src/cli/run.js";
import { GRADIENT_PNG, rgbPng } from "./helpers/png.js";

const tmp = mkdtempSync(join(tmpdir(), "flamingo-cli-"));
const IMAGE = join(tmp, "gradient.png");
const OTHER = join(tmp, "orange.png");
writeFileSync(IMAGE, GRADIENT_PNG);
writeFileSync(
  OTHER,
  rgbPng(20, 20, () => [250, 128, 7]),
);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function cli(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cliUntil(undefined, ...argv);
}

/** Runs the CLI; `untilStopped` ends a `serve`; `onStdout` sees the output as it comes. */
async function cliUntil(
  control: { untilStopped: () => Promise<void>; onStdout: (text: string) => void } | undefined,
  ...argv: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const err = new PassThrough();
  err.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const code = await runCli(argv, {
    stdout: {
      write: (t: string) => {
        stdout += t;
        control?.onStdout(stdout);
      },
    },
    stderr: err,
    ...(control ? { untilStopped: control.untilStopped } : {}),
  });
  return { code, stdout, stderr };
}

describe("flamingo CLI", () => {
  it("prints help for the program and every command", async () => {
    expect((await cli("--help")).stdout).toMatch(/Commands:[\s\S]*caption[\s\S]*serve[\s\S]*info/);
    for (const command of ["caption", "vqa", "generate", "serve", "info", "train", "eval"]) {
      const { code, stdout } = await cli(command, "--help");
      expect(code, command).toBe(0);
      expect(stdout, command).toContain(`flamingo ${command}`);
    }
  });

  it("captions image files with the embedded model, one JSON entry per image", async () => {
    const { code, stdout } = await cli("caption", IMAGE, OTHER, "--max-new-tokens", "3", "--json");
    expect(code).toBe(0);
    const out = JSON.parse(stdout) as { image: string; caption: string }[];
    expect(out.map((o) => o.image)).toEqual([IMAGE, OTHER]);
    for (const o of out) expect(typeof o.caption).toBe("string");
  });

  it("takes few-shot demos as image=caption", async () => {
    const { code, stdout } = await cli(
      "caption",
      IMAGE,
      "--demo",
      `${OTHER}=an orange square`,
      "--beams",
      "1",
      "--json",
    );
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toHaveLength(1);
  });

  it("answers a question about an image", async () => {
    const { code, stdout } = await cli("vqa", IMAGE, "what", "colour", "is", "it?", "--json");
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ image: IMAGE, question: "what colour is it?" });
  });

  it("builds the generate prompt from --image and --text in command-line order", async () => {
    const { code, stdout } = await cli(
      "generate",
      "--image",
      OTHER,
      "--text",
      "An orange square.",
      "--image",
      IMAGE,
      "--text",
      "An image of",
      "--max-new-tokens",
      "4",
      "--json",
    );
    expect(code).toBe(0);
    const out = JSON.parse(stdout) as { prompt: string; tokens: number[] };
    expect(out.prompt).toBe("<image>An orange square.<|endofchunk|><image>An image of");
    expect(out.tokens.length).toBeGreaterThan(0);
    expect(out.tokens.length).toBeLessThanOrEqual(4);
  });

  it("reports versions, the backend and its reason, and the model summary", async () => {
    const { code, stdout } = await cli("info", "--json");
    expect(code).toBe(0);
    const info = JSON.parse(stdout);
    expect(info.package).toEqual({ name: "flamingo-vlm", version: expect.any(String) });
    expect(info.backend.backend).toBe("cpu");
    expect(info.devices[0]).toMatch(/^cpu \(\d+ threads?/);
    expect(info.backend.reason).toMatch(/CUDA build not used|FLAMINGO_BACKEND=cpu|NAPI_RS_NATIVE_LIBRARY_PATH/);
    expect(info.model.parametersTotal).toBeGreaterThan(info.model.parametersTrainable);
    expect(info.model.layerPlan.crossAttentionLayers).toEqual(info.model.crossAttnLayers);
    const text = await cli("info");
    expect(text.stdout).toMatch(/parameters: [\d,]+ total, [\d,]+ trainable/);
  });

  it("serves the HTTP routes until stopped", async () => {
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => {
      stop = resolve;
    });
    let announced!: (url: string) => void;
    const url = new Promise<string>((resolve) => {
      announced = resolve;
    });
    const run = cliUntil(
      {
        untilStopped: () => stopped,
        onStdout: (text) => {
          const match = /"url":"([^"]+)"/.exec(text);
          if (match?.[1]) announced(match[1]);
        },
      },
      "serve",
      "--port",
      "0",
      "--json",
    );
    const base = await url;
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const health = (await (await fetch(`${base}/healthz`)).json()) as { status: string };
    expect(health.status).toBe("ok");
    stop();
    expect((await run).code).toBe(0);
  });

  it("says train and eval are not in this build", async () => {
    const train = await cli("train");
    expect(train.code).toBe(1);
    expect(train.stderr).toContain("not available in this build");
    const evaluate = await cli("eval");
    expect(evaluate.code).toBe(1);
    expect(evaluate.stderr).toContain("not yet available");
  });

  it("exits 2 with a pointer to --help on a bad command line, and 1 with the error code on a bad image", async () => {
    expect((await cli("frobnicate")).code).toBe(2);
    const bad = await cli("caption", IMAGE, "--beams", "many");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--beams must be a non-negative integer[\s\S]*flamingo caption --help/);
    const missing = await cli("caption", join(tmp, "nope.png"), "--json");
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.stdout).error.code).toBe("ERR_IO");
  });
});
