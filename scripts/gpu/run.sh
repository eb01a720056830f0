#!/usr/bin/env bash
# The ONE command of a GPU session (H100/H200 through the device tool), prepared by
# scripts/gpu/prepare.sh on a CPU machine:
#
#   run(command="bash scripts/gpu/run.sh", carry=[".gpu"], timeout_s=600)
#
# 1. gpu-parity: the golden parity checks (4 LM families, f32, + an informational bf16 forward)
#    on the GPU                                                         -> $OUT/parity.json
# 2. for 3B-vitl-mpt1b, then 9B-vitl-mpt7b: our benchmark (bf16)        -> $OUT/ours-<preset>.json
#    and the reference (reference_bench.py, PyTorch eager, bf16)        -> $OUT/ref-<preset>.json
# 3. scripts/gpu/report.py: the comparison table with ratios            -> $OUT/report.md
# Everything is logged to $OUT/run.log. Whole run under 8 minutes (--budget, default 450 s):
# each step has a hard `timeout` and a softer --deadline so that a slow step still leaves
# its partial JSON (both benchmarks write theirs after every phase).
#
# usage: scripts/gpu/run.sh [--dry-run] [--budget SECONDS]
#   --dry-run  the same logic on THIS machine's CPU: a CPU build of flamingo-bench, the
#              small-cpu preset, ../shared beside the repository, and $REF_PYTHON (a python
#              with torch + transformers + einops; default python3) for the reference.
#              $OUT defaults to <repo>/.gpu-out.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DRY=0
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${OUT:-}" ]; then
  # Outside the device tool (which sets $OUT): a folder in the repository that git ignores.
  OUT="$ROOT/.gpu-out"
  mkdir -p "$OUT"
  [ -f "$OUT/.gitignore" ] || echo '*' > "$OUT/.gitignore"
fi
mkdir -p "$OUT"
LOG="$OUT/run.log"
: > "$LOG"
T0=$(date +%s)
log() { echo "[run +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
# Runs a step under a hard time limit, its output into the log; never aborts the run.
step() {
  local limit="$1"; shift
  log "\$ $* (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && log "  timed out after ${limit}s (partial results kept)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && log "  exit status $rc"
  return 0
}

if [ "$DRY" = 1 ]; then
  SHARED="${FLAMINGO_SHARED:-$ROOT/../shared}"
  PY="${REF_PYTHON:-python3}"
  DEVICE=cpu
  PRESETS=(small-cpu)
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  log "dry run: building the CPU flamingo-bench (release) in $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release -p flamingo-bench) >> "$LOG" 2>&1 || { log "cargo build failed (see $LOG)"; exit 1; }
  BIN="$CARGO_TARGET_DIR/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}release/flamingo-bench"
  TMP="${TMPDIR:-/tmp}"
  # The CPU preset is far slower than the GPU ones: one preset gets the whole budget.
  LIMITS=(60 $(( BUDGET * 45 / 100 )) $(( BUDGET * 45 / 100 )))
else
  STAGE="$ROOT/.gpu"
  SHARED="$STAGE/shared"
  PY=python3
  DEVICE=cuda
  PRESETS=(3B-vitl-mpt1b 9B-vitl-mpt7b)
  [ -f "$STAGE/flamingo-bench.xz" ] || { log "no $STAGE/flamingo-bench.xz: run scripts/gpu/prepare.sh first and carry .gpu"; exit 1; }
  BIN=/tmp/flamingo-bench
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$STAGE/flamingo-bench.xz" "$BIN"
  chmod +x "$BIN"
  if [ -f "$STAGE/flamingo-bench.sha256" ] && [ "$(sha256sum "$BIN" | cut -d' ' -f1)" != "$(cat "$STAGE/flamingo-bench.sha256")" ]; then
    log "the unpacked binary's checksum differs from prepare.sh's"; exit 1
  fi
  # The binary links libcudart/libcublas(Lt)/libcurand/libnvrtc of CUDA 13 (+ the driver's
  # libcuda.so.1): PyTorch's cu130 wheels carry the former in nvidia/cu13/lib.
  CUDA_LIBS="$(python3 - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
libs = []
for r in roots:
    libs += sorted(glob.glob(os.path.join(r, "cu13", "lib"))) + sorted(glob.glob(os.path.join(r, "*", "lib")))
print(":".join(dict.fromkeys(libs)))
EOF
)"
  for d in /usr/local/nvidia/lib64 /usr/local/cuda/lib64; do [ -d "$d" ] && CUDA_LIBS="$CUDA_LIBS:$d"; done
  export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The random weights (16 GiB for the 9B preset) go to RAM when /dev/shm has room.
  TMP=/tmp
  if [ -d /dev/shm ] && [ "$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ')" -ge 40 ] 2>/dev/null; then TMP=/dev/shm; fi
  # parity, then per preset: ours, reference (seconds; the 9B steps get more).
  # Shares from the first H200 run (parity 29 s with the PTX JIT; 3B: ours 38 s, reference
  # 33 s; 9B: ours 87 s without its training phase, which needs an f32 reload, reference 23 s).
  LIMITS=(40 $(( BUDGET * 15 / 100 )) $(( BUDGET * 12 / 100 )) $(( BUDGET * 40 / 100 )) $(( BUDGET * 22 / 100 )))
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1 || true
fi
log "device=$DEVICE presets=${PRESETS[*]} budget=${BUDGET}s tmp=$TMP out=$OUT"
ldd "$BIN" 2>/dev/null | grep -E 'cuda|cublas|curand|nvrtc|not found' >> "$LOG"

# 1. parity on the device under test.
step "${LIMITS[0]}" "$BIN" gpu-parity --device "$DEVICE" --golden "$SHARED/golden" --bf16 --out "$OUT/parity.json"

# 2. ours, then the reference, per preset.
i=1
REPORT_ARGS=()
for p in "${PRESETS[@]}"; do
  ours_limit="${LIMITS[$i]}"; ref_limit="${LIMITS[$((i + 1))]}"
  # --deadline skips phases that would start late; the margin leaves a started phase time to end.
  step "$ours_limit" "$BIN" bench --preset "$p" --device "$DEVICE" --deadline $(( ours_limit * 2 / 3 )) --tmp "$TMP" --out "$OUT/ours-$p.json"
  step "$ref_limit" env PYTHONUNBUFFERED=1 "$PY" "$SHARED/bench/reference_bench.py" "$OUT/ref-$p.json" --preset "$p" --deadline $(( ref_limit * 2 / 3 ))
  REPORT_ARGS+=(--ours "$OUT/ours-$p.json" --ref "$OUT/ref-$p.json")
  i=$((i + 2))
done

# 3. the table.
"${REPORT_PYTHON:-python3}" "$ROOT/scripts/gpu/report.py" --parity "$OUT/parity.json" "${REPORT_ARGS[@]}" > "$OUT/report.md" 2>> "$LOG"
cat "$OUT/report.md"
log "done; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
