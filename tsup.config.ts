import { existsSync } from "node:fs";

import { defineConfig } from "tsup";

// Commands other branches add to the CLI, built next to it when their sources exist; the CLI
// loads them with a dynamic import and says "not available in this build" otherwise.
const optionalCommands: Record<string, string> = {};
if (existsSync("ts/src/train/cli.ts")) optionalCommands["train-cli"] = "ts/src/train/cli.ts";
if (existsSync("ts/src/eval/cli.ts")) optionalCommands["eval-cli"] = "ts/src/eval/cli.ts";

export default defineConfig({
  // `cli` is the `flamingo` executable (its shebang is kept, and tsup marks it executable).
  entry: { index: "ts/src/index.ts", cli: "ts/src/cli/main.ts", ...optionalCommands },
  format: ["esm", "cjs"],
  // tsup's declaration build sets `baseUrl`, which TypeScript 6 deprecates.
  dts: { entry: { index: "ts/src/index.ts" }, compilerOptions: { ignoreDeprecations: "6.0" } },
  outDir: "dist",
  target: "node20",
  platform: "node",
  sourcemap: true,
  clean: true,
  // `import.meta.url` locates the native loader at run time; shim it in the CJS build.
  shims: true,
  // Runtime dependencies are bundled, so that installing the package needs no registry.
  noExternal: ["zod"],
  // The .node binaries are loaded at run time, never bundled.
  external: [/bindings\/node/, /\.node$/],
});
