#!/usr/bin/env bash
# Builds the CUDA flavour of flamingo-vlm on a Linux x64 machine that has NO GPU and no CUDA
# install: a CUDA 13.0 toolchain is assembled from NVIDIA's PyPI wheels in a private folder,
# then the GPU benchmark/parity binary (crates/flamingo-bench) and the Node addon are built
# with `--features cuda`. Idempotent: a second run reuses the toolchain and cargo's cache.
#
# usage: scripts/build-cuda.sh [--toolchain-only] [--no-addon] [--print-env]
#   --toolchain-only  set up .cuda/home and stop (no cargo build)
#   --no-addon        build only the Rust binaries (crates/flamingo-bench)
#   --print-env       print the `export` lines for the toolchain (eval "$(scripts/build-cuda.sh --print-env)")
# environment:
#   FLAMINGO_CUDA_DIR  toolchain + outputs folder (default: <repo>/.cuda, git-ignored by itself)
#   CARGO_TARGET_DIR   cargo target dir (default: $FLAMINGO_CUDA_DIR/target; keep it apart from the
#                      CPU build's, since the `cuda` feature changes candle-core's build)
#   CUDA_COMPUTE_CAP   lowest GPU generation the kernels are compiled for (default 80: Ampere, Hopper and newer)
#   PYTHON             interpreter that creates the wheel venv (default python3)
#
# Why 13.0.x: candle compiles its kernels to PTX, which the driver JIT-compiles at load time, and
# a driver rejects PTX from a newer toolkit than its own. GPU hosts with 580-series drivers
# support CUDA 13.0, so nvcc and the libraries are pinned to 13.0 releases.
#
# Why a generated libcuda.so stub: the wheels carry no driver library, but the binaries link
# `-lcuda` (cudarc's `dynamic-linking`, which candle enables). The stub is compiled from the
# toolkit's own cuda.h (every driver entry point of CUDA 13.0 under its real, versioned symbol
# name), with the soname libcuda.so.1 so that the real driver is what loads at run time. Debian's
# non-free `libcuda1` (bookworm: the 535 driver = CUDA 12.2) would lack any entry point added after
# 12.2 that cudarc's 13.0 bindings call, and needs extra apt sources; the stub has neither problem.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_DIR="${FLAMINGO_CUDA_DIR:-$ROOT/.cuda}"
PYTHON="${PYTHON:-python3}"
TOOLCHAIN_ONLY=0
ADDON=1
PRINT_ENV=0
for arg in "$@"; do
  case "$arg" in
    --toolchain-only) TOOLCHAIN_ONLY=1 ;;
    --no-addon) ADDON=0 ;;
    --print-env) PRINT_ENV=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# The pinned CUDA 13.0 wheels (checked with `pip index versions`; cuRAND 10.4.0 is CUDA 13.0's).
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cccl==13.0.85
)

log() { if [ "$PRINT_ENV" = 1 ]; then echo "# $*" >&2; else echo "[build-cuda] $*"; fi; }

mkdir -p "$CUDA_DIR"
# The folder ignores itself, so the repository's .gitignore needs no entry.
[ -f "$CUDA_DIR/.gitignore" ] || echo '*' > "$CUDA_DIR/.gitignore"

# --- 1. the wheels, in a private venv -------------------------------------------------------
VENV="$CUDA_DIR/venv"
STAMP="$VENV/.flamingo-pins"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ]; then
  log "CUDA wheels already installed in $VENV"
else
  log "installing the CUDA 13.0 wheels into $VENV: ${PINS[*]}"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$STAMP"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU="$SITE/nvidia/cu13"
[ -x "$CU/bin/nvcc" ] || { echo "build-cuda.sh: no nvcc at $CU/bin/nvcc: the wheel layout changed?" >&2; exit 1; }

# --- 2. a CUDA_HOME layout over the wheels -------------------------------------------------
HOME_DIR="$CUDA_DIR/home"
mkdir -p "$HOME_DIR/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$HOME_DIR/$d"; done
# nvcc.profile finds cicc/libdevice at $(TOP)/nvvm and includes at $(TOP)/include, TOP being
# bin/..: true of the wheel folder and of this layout alike.
linked=()
for so in "$CU"/lib/lib*.so.*; do
  base="$(basename "$so")"
  ln -sfn "$so" "$HOME_DIR/lib64/$base"
  plain="${base%%.so.*}.so" # libcublas.so.13 -> libcublas.so: the link-time name
  case "$base" in *.alt.so*) continue ;; esac
  if [ ! -e "$HOME_DIR/lib64/$plain" ] || [ "$(readlink "$HOME_DIR/lib64/$plain")" != "$base" ]; then
    ln -sfn "$base" "$HOME_DIR/lib64/$plain"
  fi
  linked+=("$plain")
done
log "CUDA_HOME=$HOME_DIR (lib64: ${linked[*]})"

# The driver stub (see the header). Rebuilt only when cuda.h changes.
STUB="$HOME_DIR/lib64/stubs/libcuda.so"
if [ ! -f "$STUB" ] || [ "$CU/include/cuda.h" -nt "$STUB" ]; then
  log "generating the link-time driver stub $STUB from cuda.h"
  gen="$CUDA_DIR/stub"
  mkdir -p "$gen"
  # After preprocessing, the versioned names (cuMemAlloc -> cuMemAlloc_v2 ...) are the ones the
  # declarations carry, exactly as in the driver's export table.
  echo '#include <cuda.h>' | cc -E -P -I"$CU/include" -x c - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (\t' | sort -u > "$gen/symbols.txt"
  {
    echo '/* Generated by scripts/build-cuda.sh: link-time stand-in for the NVIDIA driver library. */'
    echo '/* Never loaded at run time: the soname is libcuda.so.1, which the driver provides. */'
    while read -r s; do echo "int $s(void) { return 999; /* CUDA_ERROR_UNKNOWN */ }"; done < "$gen/symbols.txt"
  } > "$gen/libcuda_stub.c"
  cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUB" "$gen/libcuda_stub.c"
  log "stub exports $(wc -l < "$gen/symbols.txt") driver entry points"
else
  log "driver stub present: $STUB"
fi

export CUDA_HOME="$HOME_DIR"
export CUDA_PATH="$HOME_DIR"
export PATH="$HOME_DIR/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CUDARC_CUDA_VERSION=13000
export LD_LIBRARY_PATH="$HOME_DIR/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CUDA_DIR/target}"
# `napi build` always passes `--target <host triple>`; building the benchmark for the same
# explicit triple lets both share one compiled tree (candle's kernels are compiled once).
# scripts/test.sh does the same for the CPU build. Set CARGO_BUILD_TARGET= (empty) to build
# without --target (then the addon is built with cargo too, in the same tree).
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET-$(rustc -vV | sed -n 's/^host: //p')}"
[ -n "$CARGO_BUILD_TARGET" ] || unset CARGO_BUILD_TARGET

if [ "$PRINT_ENV" = 1 ]; then
  for v in CUDA_HOME CUDA_PATH PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION LD_LIBRARY_PATH CARGO_TARGET_DIR CARGO_BUILD_TARGET; do
    [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  exit 0
fi
log "nvcc: $(nvcc --version | tail -1)"
log "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION CARGO_TARGET_DIR=$CARGO_TARGET_DIR CARGO_BUILD_TARGET=${CARGO_BUILD_TARGET:-<none>}"
[ "$TOOLCHAIN_ONLY" = 1 ] && { log "toolchain ready (--toolchain-only)"; exit 0; }

# --- 3. the builds -------------------------------------------------------------------------
DIST="$CUDA_DIR/dist"
mkdir -p "$DIST"
cd "$ROOT"
t0=$(date +%s)
log "cargo build --release -p flamingo-bench --features cuda"
cargo build --release -p flamingo-bench --features cuda
OUT_DIR="$CARGO_TARGET_DIR/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}release"
cp -f "$OUT_DIR/flamingo-bench" "$DIST/flamingo-bench"
log "built $DIST/flamingo-bench ($(du -h "$DIST/flamingo-bench" | cut -f1), $(($(date +%s) - t0)) s so far)"

if [ "$ADDON" = 1 ]; then
  if [ -n "${CARGO_BUILD_TARGET:-}" ] && [ -f package.json ] && grep -q '"napi"' package.json \
    && [ -x node_modules/.bin/napi ]; then
    # The package's own addon build (package.json "build"), plus --release and the feature.
    # Only the .node file is wanted: the JS loader and typings are the CPU build's.
    log "napi build --platform --release --features cuda (the package's addon build)"
    npx napi build --platform --release --features cuda \
      --manifest-path bindings/node/Cargo.toml --package-json-path package.json \
      --output-dir "$DIST" --no-js --dts .cuda-index.d.ts
    rm -f "$DIST/.cuda-index.d.ts"
  else
    # Without the napi CLI (no `npm ci` yet), or without --target, the same cdylib is built
    # with cargo and given napi's file name.
    log "building the addon cdylib with cargo (napi build needs node_modules/.bin/napi and the --target tree)"
    cargo build --release -p flamingo-vlm-node --features cuda
    cp -f "$OUT_DIR/libflamingo_vlm_node.so" "$DIST/flamingo-vlm.linux-x64-gnu.node"
  fi
  log "built the addon: $(ls "$DIST"/*.node)"
fi

log "done in $(($(date +%s) - t0)) s. Outputs in $DIST:"
for f in "$DIST"/*; do
  [ -f "$f" ] || continue
  echo "  $(basename "$f")  $(du -h "$f" | cut -f1)  needs: $(readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
done
log "run on a GPU host with LD_LIBRARY_PATH at its CUDA 13 libraries (e.g. PyTorch's nvidia/cu13/lib); see docs/CUDA.md"
