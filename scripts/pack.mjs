// Packs the npm packages as they are published: each platform package (npm/<platform>/ with
// the .node file `npm run build` made) and the root package with those platform packages as
// optionalDependencies (what `napi prepublish` adds at publish time; the repository's
// package.json leaves them out so that `npm ci` never looks for unpublished versions).
//
// Usage: node scripts/pack.mjs [--out <dir>]   Prints {"root": tgz, "platforms": [tgz…]} as JSON.
// Needs `npm run build` and `npm run build:ts` first; builds nothing itself.

import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
const { values } = parseArgs({ options: { out: { type: "string" } } });
const out = resolve(values.out ?? join(root, ".tmp", "pack"));
mkdirSync(out, { recursive: true });

const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const binaryName = manifest.napi.binaryName;
const staging = mkdtempSync(join(tmpdir(), "flamingo-pack-"));

/** `npm pack` in `dir`, the tarball written to `out`; returns its path. */
function pack(dir) {
  const report = execFileSync("npm", ["pack", "--json", "--pack-destination", out], {
    cwd: dir,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  return join(out, JSON.parse(report)[0].filename);
}

try {
  const platforms = [];
  const optionalDependencies = {};
  for (const platform of readdirSync(join(root, "npm"))) {
    const source = join(root, "npm", platform);
    const binary = join(root, "bindings", "node", `${binaryName}.${platform}.node`);
    if (!existsSync(binary)) {
      throw new Error(`${binary} is missing: run \`npm run build\` on ${platform} first (or pack on that platform)`);
    }
    const dir = join(staging, platform);
    cpSync(source, dir, { recursive: true });
    cpSync(binary, join(dir, `${binaryName}.${platform}.node`));
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    pkg.version = manifest.version;
    writeFileSync(join(dir, "package.json"), `${JSON.stringify(pkg, null, 2)}\n`);
    optionalDependencies[pkg.name] = manifest.version;
    platforms.push(pack(dir));
  }

  if (!existsSync(join(root, "dist", "cli.js"))) throw new Error("dist/ is not built: run `npm run build:ts` first");
  const dir = join(staging, "root");
  mkdirSync(dir);
  for (const entry of manifest.files) {
    if (existsSync(join(root, entry))) cpSync(join(root, entry), join(dir, entry), { recursive: true });
  }
  const { devDependencies: _dev, scripts: _scripts, ...published } = manifest;
  writeFileSync(join(dir, "package.json"), `${JSON.stringify({ ...published, optionalDependencies }, null, 2)}\n`);
  const rootTarball = pack(dir);
  console.log(JSON.stringify({ root: rootTarball, platforms }));
} finally {
  rmSync(staging, { recursive: true, force: true });
}
