#!/usr/bin/env bash
# Prepares the GPU run on THIS (CPU-only) machine: builds the CUDA binary, and stages in
# <repo>/.gpu everything scripts/gpu/run.sh needs on a GPU host that has no Rust, no network
# and no ../shared beside the checkout (only the repository and carried paths travel):
#
#   .gpu/flamingo-bench.xz        the CUDA build of crates/flamingo-bench (xz: its PTX is text)
#   .gpu/shared/bench/            reference_bench.py (the reference timings)
#   .gpu/shared/golden/<family>/  the golden fixtures for gpu-parity (llama, opt, gpt_neox, mpt)
#   .gpu/shared/golden/tools/     make_golden.py (reference_bench imports it) + einops_exts.py
#                                 + of/: the reference's model sources (open_flamingo 2.0.1,
#                                 from its PyPI wheel) that make_golden.py falls back to, since
#                                 the GPU host has torch/transformers/einops but no open_flamingo
#
# usage: scripts/gpu/prepare.sh [--skip-build]
# Then, with the device tool: run(command="bash scripts/gpu/run.sh", carry=[".gpu"], timeout_s=600)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="${FLAMINGO_SHARED:-$ROOT/../shared}"
STAGE="$ROOT/.gpu"
CUDA_DIR="${FLAMINGO_CUDA_DIR:-$ROOT/.cuda}"
OPEN_FLAMINGO=open-flamingo==2.0.1
SKIP_BUILD=0
for arg in "$@"; do
  case "$arg" in
    --skip-build) SKIP_BUILD=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
log() { echo "[prepare] $*"; }

[ -f "$SHARED/bench/reference_bench.py" ] || { echo "prepare.sh: no $SHARED/bench/reference_bench.py (set FLAMINGO_SHARED)" >&2; exit 1; }

if [ "$SKIP_BUILD" = 0 ]; then
  log "building the CUDA binary (scripts/build-cuda.sh --no-addon)"
  "$ROOT/scripts/build-cuda.sh" --no-addon
fi
BIN="$CUDA_DIR/dist/flamingo-bench"
[ -x "$BIN" ] || { echo "prepare.sh: no CUDA build at $BIN: run scripts/build-cuda.sh" >&2; exit 1; }
readelf -d "$BIN" | grep -q 'libcuda.so' || { echo "prepare.sh: $BIN is not a CUDA build" >&2; exit 1; }

# The staging folder must travel as a carried (ignored) path and never be committed.
EXCLUDE="$(git -C "$ROOT" rev-parse --git-path info/exclude)"
case "$EXCLUDE" in /*) ;; *) EXCLUDE="$ROOT/$EXCLUDE" ;; esac
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.gpu/' "$EXCLUDE" 2>/dev/null || { echo '/.gpu/' >> "$EXCLUDE"; log "added /.gpu/ to $EXCLUDE"; }

rm -rf "$STAGE"
mkdir -p "$STAGE/shared/bench" "$STAGE/shared/golden/tools/of"
echo '*' > "$STAGE/.gitignore"

log "compressing the binary"
xz -T0 -6 -c "$BIN" > "$STAGE/flamingo-bench.xz"
sha256sum "$BIN" | cut -d' ' -f1 > "$STAGE/flamingo-bench.sha256"

cp "$SHARED/bench/reference_bench.py" "$STAGE/shared/bench/"
for fam in llama opt gpt_neox mpt; do
  mkdir -p "$STAGE/shared/golden/$fam"
  cp -r "$SHARED/golden/$fam/." "$STAGE/shared/golden/$fam/"
done
cp "$SHARED/golden/tools/make_golden.py" "$SHARED/golden/tools/einops_exts.py" "$STAGE/shared/golden/tools/"

log "fetching the reference model sources ($OPEN_FLAMINGO, PyPI wheel, no dependencies)"
WHEELS="$CUDA_DIR/wheels"
mkdir -p "$WHEELS"
ls "$WHEELS"/open_flamingo-2.0.1-*.whl >/dev/null 2>&1 \
  || python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$OPEN_FLAMINGO"
WHEEL="$(ls "$WHEELS"/open_flamingo-2.0.1-*.whl | head -1)"
python3 - "$WHEEL" "$STAGE/shared/golden/tools/of" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
names = ["flamingo.py", "flamingo_lm.py", "helpers.py", "utils.py"]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        with open(f"{dest}/{n}", "wb") as f:
            f.write(z.read(f"open_flamingo/src/{n}"))
with open(f"{dest}/__init__.py", "w") as f:
    f.write("# open_flamingo 2.0.1 src/ (flamingo, flamingo_lm, helpers, utils), from its PyPI wheel\n")
EOF

size=$(du -sb "$STAGE" | cut -f1)
log "staged $STAGE: $((size / 1048576)) MiB (the device tool carries at most 64 MiB with the working tree)"
[ "$size" -lt $((60 * 1048576)) ] || { echo "prepare.sh: .gpu is too large to carry" >&2; exit 1; }
log "next, on the device tool: run(command=\"bash scripts/gpu/run.sh\", carry=[\".gpu\"], timeout_s=600)"
