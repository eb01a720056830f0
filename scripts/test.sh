#!/usr/bin/env bash
# Everything CI checks, in order: Rust format, lints and tests, the addon build, the
# TypeScript build, type check and lint, and the vitest suite through the public API.
set -euo pipefail
cd "$(dirname "$0")/.."

# `napi build` always passes `--target <host triple>`, which puts its artifacts under
# target/<triple>/. Point every cargo command at the same triple so that `cargo test` and the
# addon share one compiled dependency tree instead of building candle twice.
CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
export CARGO_BUILD_TARGET
# candle's CPU kernels: no more threads than the 2-core CI machine has.
export CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-2}"

step() {
  echo
  echo "==> $*"
  "$@"
}

step cargo fmt --all --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo test --workspace
step npm run build
step npm run build:ts
step node scripts/check-dist.mjs
step npx tsc --noEmit
step npx biome check .
mkdir -p .tmp
step npx vitest run --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json
# One plain closing line for log readers that do not know vitest's summary format.
node -e '
const r = JSON.parse(require("fs").readFileSync(".tmp/vitest.json", "utf8"));
console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed`);
'
