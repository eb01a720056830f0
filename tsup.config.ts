import { defineConfig } from "tsup";

export default defineConfig({
  entry: { index: "ts/src/index.ts" },
  format: ["esm", "cjs"],
  // tsup's declaration build sets `baseUrl`, which TypeScript 6 deprecates.
  dts: { compilerOptions: { ignoreDeprecations: "6.0" } },
  outDir: "dist",
  target: "node20",
  platform: "node",
  sourcemap: true,
  clean: true,
  // `import.meta.url` locates the native loader at run time; shim it in the CJS build.
  shims: true,
  // The napi-generated loader and the .node binary are loaded at run time, never bundled.
  external: [/bindings\/node/, /\.node$/],
});
