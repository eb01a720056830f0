/**
 * Must-show 1: the packages as published install with the registry unreachable and their
 * `flamingo` CLI captions with the embedded model. Packs the root package and the platform
 * package from what `npm run build` / `npm run build:ts` made (no second native build).
 */

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { afterAll, expect, it } from "vitest";

import { GRADIENT_PNG } from "./helpers/png.js";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
// Outside the repository, so that nothing resolves to the checkout's node_modules.
const tmp = mkdtempSync(join(tmpdir(), "flamingo-install-"));

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const run = (command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}) =>
  execFileSync(command, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });

it("installs the packed tarballs offline and captions with the installed CLI on the embedded model", () => {
  const tarballs = JSON.parse(run("node", ["scripts/pack.mjs", "--out", join(tmp, "tarballs")], ROOT)) as {
    root: string;
    platforms: string[];
  };
  expect(tarballs.platforms).toHaveLength(1);

  const app = join(tmp, "app");
  run("mkdir", ["-p", app], tmp);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true }));
  // An empty cache and a registry nobody listens on: everything must come from the tarballs.
  run(
    "npm",
    [
      "install",
      "--offline",
      "--no-audit",
      "--no-fund",
      "--registry",
      "http://127.0.0.1:9",
      "--cache",
      join(tmp, "npm-cache"),
      ...tarballs.platforms,
      tarballs.root,
    ],
    app,
  );

  writeFileSync(join(app, "gradient.png"), GRADIENT_PNG);
  const cli = join(app, "node_modules", ".bin", "flamingo");
  const env = { FLAMINGO_BACKEND: "auto", NAPI_RS_NATIVE_LIBRARY_PATH: "" };
  const captions = JSON.parse(run(cli, ["caption", "gradient.png", "--max-new-tokens", "4", "--json"], app, env)) as {
    image: string;
    caption: string;
  }[];
  expect(captions).toHaveLength(1);
  expect(captions[0]?.image).toBe("gradient.png");
  expect(typeof captions[0]?.caption).toBe("string");

  // The prebuilt package was chosen, and the missing CUDA package is the recorded reason.
  const info = JSON.parse(run(cli, ["info", "--json"], app, env)) as {
    backend: { backend: string; source: string; reason: string };
    model: { source: string; parametersTotal: number };
  };
  expect(info.backend.backend).toBe("cpu");
  expect(info.backend.source).toBe("flamingo-vlm-linux-x64-gnu");
  expect(info.backend.reason).toContain("flamingo-vlm-linux-x64-gnu-cuda: not installed");
  expect(info.model.source).toMatch(/node_modules\/flamingo-vlm\/models\/(default|tiny)$/);
  expect(info.model.parametersTotal).toBeGreaterThan(0);
});
