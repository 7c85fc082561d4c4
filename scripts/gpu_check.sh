#!/usr/bin/env bash
# One-shot check of l2kd on a machine with an NVIDIA GPU, offline if need be: build the CUDA
# extension, self-check it, run the op tests (CUDA cases included; none may skip) and every
# benchmark on the GPU with its peers, and pack the logs and JSON into one archive with a
# one-screen summary. Meant to finish in at most 6 minutes on one H200, build included.
#
#   bash scripts/gpu_check.sh [--out DIR] [--wheels DIR] [--speed] [--dry-run]
#
#   --out DIR     results folder (default gpu_results/<date-time>); the archive is DIR.tar.gz and
#                 the summary DIR/gpu_check_summary.txt (also printed at the end)
#   --wheels DIR  install missing Python packages from this folder only (no network): made
#                 beforehand by scripts/fetch_gpu_wheels.sh for the GPU machine's Python
#   --speed       instead of the op tests and benchmarks, the end-to-end speed rows: benchmarks/e2e.py
#                 on GPT-2-small size (random init) for lll, fp32 and mixed precision, with its step
#                 split, host reads per step and start-up, then again with --torch-compile
#                 reduce-overhead (CUDA graphs)
#   --dry-run     every step on CPU at toy sizes: no GPU, no nvidia-smi, no install (missing
#                 packages are listed), no compile (setup.py is evaluated, the extension that is
#                 there is self-checked); the test suite runs this mode
#
# Python: PYTHON (default python3) when its torch sees a GPU (its torch is never replaced);
# otherwise a venv VENV (default .venv-gpu) with TORCH_SPEC (default torch==2.14.1), which needs
# the network or a torch wheel in --wheels. CUDA_HOME (default /usr/local/cuda) provides nvcc.
# Time: every part has its own cap (`timeout`) and the whole run a budget
# (L2KD_GPU_CHECK_BUDGET seconds, default 345); a part that would start past it is skipped.
# Exit status: 0 when every part passed, 1 otherwise (the archive is written either way).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR="" WHEELS="" DRY=0 SPEED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --speed) SPEED=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "[gpu_check] unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
RESULTS="${OUT_DIR:-gpu_results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS/json"
RESULTS=$(cd "$RESULTS" && pwd)
LOG="$RESULTS/gpu_check.log"
STEPS="$RESULTS/steps.tsv"
BUDGET="${L2KD_GPU_CHECK_BUDGET:-345}"
START=$SECONDS
FAILED=0
printf 'part\trc\tseconds\tnote\n' >"$STEPS"

say() { echo "[gpu_check] $* ($((SECONDS - START)) s)" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"; }
die() {
  say "FAILED: $*"
  record abort 1 0 "$*"
  finish
}

# part NAME CAP_S [--optional] CMD...: run CMD under `timeout`, output to NAME.log, never past the budget.
part() {
  local name=$1 cap=$2 optional=0
  shift 2
  if [ "${1:-}" = "--optional" ]; then optional=1; shift; fi
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then
    say "SKIP $name (budget of $BUDGET s spent)"
    record "$name" skip 0 "budget"
    [ "$optional" = 1 ] || FAILED=1
    return 0
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  say "$name (cap $cap s)"
  local t0=$SECONDS rc
  timeout -k 5 "$cap" "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  local note
  note=$(grep -v '^\s*$' "$RESULTS/$name.log" | tail -1 | cut -c1-150)
  [ "$rc" -eq 124 ] && note="timed out after $cap s; $note"
  record "$name" "$rc" "$((SECONDS - t0))" "$note"
  if [ "$rc" -ne 0 ]; then
    say "$name rc=$rc: $note"
    [ "$optional" = 1 ] || FAILED=1
  fi
  return 0
}

finish() {
  summary >"$RESULTS/gpu_check_summary.txt" 2>&1
  tar -czf "$RESULTS.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  cat "$RESULTS/gpu_check_summary.txt"
  echo "[gpu_check] archive: $RESULTS.tar.gz"
  exit "$FAILED"
}

summary() {
  echo "l2kd gpu_check $([ "$DRY" = 1 ] && echo '(DRY RUN on CPU, toy sizes)') $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')," \
    "$((SECONDS - START)) s, $([ "$FAILED" = 0 ] && echo 'all parts passed' || echo 'SOME PARTS FAILED')"
  "${PY:-python3}" - "$DRY" <<'PY' 2>&1 || echo "environment: could not be read (torch does not import)"
import json, os, platform, subprocess, sys
import torch
dry = sys.argv[1] == "1"
gpu = "none (dry run)" if dry or not torch.cuda.is_available() else \
    f"{torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}, " \
    f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB) x{torch.cuda.device_count()}"
print(f"GPU:      {gpu}")
print(f"torch:    {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}, {sys.executable}")
nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
try:
    line = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
except (OSError, IndexError):
    line = "not found"
print(f"CUDA:     runtime {torch.version.cuda}; nvcc {line}")
from l2kd.ops.selfcheck import build_info_path, read_build_info, torch_compiler
info = read_build_info(build_info_path())
cxx = info.get("cxx", {})
print(f"compiler: extension built by {cxx.get('path', '?')} ({cxx.get('version', 'no _build_info.json')})"
      f"{'; nvcc ' + info['nvcc']['version'] if info.get('nvcc') else ''}; torch built with {torch_compiler() or '?'}")
PY
  echo
  column -t -s $'\t' "$RESULTS/steps.tsv" 2>/dev/null | cut -c1-160 || cut -c1-160 "$RESULTS/steps.tsv"
  echo
  echo "files: $(cd "$RESULTS" && ls | tr '\n' ' ' | cut -c1-300)"
}

# ---- interpreter -----------------------------------------------------------------------------
PY="${PYTHON:-python3}"
PIP_FLAGS=(--disable-pip-version-check -q)
[ -n "$WHEELS" ] && PIP_FLAGS+=(--no-index --find-links "$(cd "$WHEELS" && pwd)")
if [ "$DRY" = 1 ]; then
  DEV=cpu
  "$PY" -c "import torch" 2>/dev/null || die "dry run: $PY has no torch"
  say "dry run on CPU with $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
else
  DEV=cuda
  command -v nvidia-smi >/dev/null 2>&1 || die "no nvidia-smi: this machine has no NVIDIA driver / GPU"
  nvidia-smi >"$RESULTS/nvidia-smi.txt" 2>&1 || die "nvidia-smi sees no GPU: $(head -3 "$RESULTS/nvidia-smi.txt")"
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "using $PY: its torch $("$PY" -c 'import torch; print(torch.__version__)') sees the GPU (left as it is)"
  else
    VENV="${VENV:-.venv-gpu}"
    say "$PY has no torch that sees the GPU: using $VENV with ${TORCH_SPEC:-torch==2.14.1}"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || die "could not create $VENV"
    PY="$VENV/bin/python"
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      "$PY" -m pip install "${PIP_FLAGS[@]}" "${TORCH_SPEC:-torch==2.14.1}" >>"$LOG" 2>&1 \
        || die "could not install ${TORCH_SPEC:-torch==2.14.1} (offline? put a CUDA torch wheel in --wheels)"
      "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "torch in $VENV does not see the GPU"
    fi
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export L2KD_BENCH_RESULTS="$RESULTS/json"

# ---- packages: the tests' and metrics' dependencies and the peers -----------------------------
# module:distribution; the peers (Liger, CCE) come without dependencies (they would replace torch).
TORCH_PIN=$("$PY" -c "import torch; print(torch.__version__)")
echo "torch==$TORCH_PIN" >"$RESULTS/constraints.txt"
export PY DRY WHEELS RESULTS TORCH_PIN
install_missing() {
  local nodeps=$1 flags=(--disable-pip-version-check -q -c "$RESULTS/constraints.txt")
  shift
  [ -n "$WHEELS" ] && flags+=(--no-index --find-links "$WHEELS")
  [ "$nodeps" = 1 ] && flags+=(--no-deps)
  for spec in "$@"; do
    local mod=${spec%%:*} dist=${spec#*:}
    "$PY" -c "import $mod" 2>/dev/null && continue
    if [ "$DRY" = 1 ]; then
      echo "dry run: would install $dist${WHEELS:+ from $WHEELS}"
    elif "$PY" -m pip install "${flags[@]}" "$dist"; then
      echo "installed $dist"
    else
      echo "WARNING: could not install $dist (what needs it records why it did not run)"
    fi
  done
}
packages() {
  install_missing 0 pytest:pytest numpy:numpy scipy:scipy quadprog:quadprog nltk:nltk rouge_score:rouge-score \
    setuptools:setuptools ninja:ninja packaging:packaging
  install_missing 1 liger_kernel:liger-kernel cut_cross_entropy:cut-cross-entropy
  "$PY" -c "import triton" 2>/dev/null || echo "no triton: the Liger / CCE rows record why they did not run"
  "$PY" -c "import torch, sys; sys.exit(torch.__version__ != '$TORCH_PIN')" || { echo "torch was replaced!"; return 1; }
  echo "packages ok; torch still $TORCH_PIN"
}
[ -n "$WHEELS" ] && WHEELS=$(cd "$WHEELS" && pwd)
part packages 90 bash -c "$(declare -f install_missing packages); packages"

# ---- build -----------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  # no compile on CPU runners: setup.py is evaluated (sources, flags, the recording build command)
  part build 60 "$PY" setup.py --name
else
  CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
  [ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc at $CUDA_HOME/bin/nvcc: set CUDA_HOME to a CUDA toolkit"
  export CUDA_HOME
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for inc in "$SITE"/nvidia/cu*/include; do  # torch's pip CUDA wheels keep cublas & co. headers here
    [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"
  done
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
  part build 180 env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace
  awk -F'\t' '$1 == "build" && $2 == "0" {ok = 1} END {exit !ok}' "$STEPS" || die "build failed, see $RESULTS/build.log"
fi

# ---- self-check, registration, tests ---------------------------------------------------------
part selfcheck 60 "$PY" -m l2kd.ops.selfcheck
REGISTERED='
import sys, torch
import l2kd.ops
key = "CUDA" if sys.argv[1] == "cuda" else "CPU"
missing = [op for op in ("kd_loss", "top_k_sample", "gem_project")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"l2kd::{op}", key)]
print("backend", l2kd.ops.backend() + ";", key, "kernels missing:", ", ".join(missing) or "none")
sys.exit(1 if missing else 0)
'
part registered 60 "$PY" -c "$REGISTERED" "$DEV"
if [ "$SPEED" = 1 ]; then
  # ---- end-to-end speed (benchmarks/e2e.py; JSON to $RESULTS/json) ------------------------------
  if [ "$DRY" = 1 ]; then
    E2E=(--device cpu --quick --train 8 --test 2 --strategies lll --kernels on --no-contention
         --dispatch-steps 2 --startup-reps 1 --step-reps 1)
  else
    E2E=(--device cuda --model gpt2-small-random --quick --strategies lll --kernels on --no-contention
         --dispatch-steps 8 --startup-reps 2)
  fi
  part e2e 150 "$PY" benchmarks/e2e.py "${E2E[@]}" --out "$RESULTS/json"
  part e2e_compiled 150 --optional "$PY" benchmarks/e2e.py "${E2E[@]}" --precision default --dispatch-steps 0 \
    --startup-reps 0 --torch-compile reduce-overhead --out "$RESULTS/json"
  finish
fi
TESTS=(tests/ops tests/test_selfcheck.py tests/test_perf_table.py)
# dry run: the error-path and self-check tests only (the rest is the ordinary CPU suite's)
[ "$DRY" = 1 ] && TESTS=(tests/ops tests/test_selfcheck.py -k "bad_inputs or checks or crash")
part tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
if [ "$DEV" = cuda ] && grep -qiE '^SKIPPED.*(cuda|gpu)' "$RESULTS/tests.log"; then
  say "FAILED: CUDA tests were skipped on a GPU machine"
  record tests_cuda_skips 1 0 "$(grep -ciE '^SKIPPED.*(cuda|gpu)' "$RESULTS/tests.log") CUDA skips"
  FAILED=1
fi

# ---- benchmarks (their JSON goes to $RESULTS/json) -------------------------------------------
if [ "$DRY" = 1 ]; then
  SIZE=(--toy) PEER=(--peer_timeout 0.01) STEP=(--P 100000 --reps 1 --memory_size 2) KDT=(--quick --toy)
  export L2KD_BENCH_BANDWIDTH_GBPS="${L2KD_BENCH_BANDWIDTH_GBPS:-10}"  # toy floors: no 512 MB probe
else
  SIZE=(--quick) PEER=(--peer_timeout 20) STEP=(--quick) KDT=(--quick)
fi
part bench_kd_loss 75 "$PY" benchmarks/bench_kd_loss.py --device "$DEV" "${SIZE[@]}" "${PEER[@]}"
part bench_top_k_sample 60 "$PY" benchmarks/bench_top_k_sample.py --device "$DEV" "${SIZE[@]}" "${PEER[@]}"
part bench_gem_project 60 "$PY" benchmarks/bench_gem_project.py --device "$DEV" "${SIZE[@]}" "${PEER[@]}"
part bench_gem_step 45 "$PY" benchmarks/bench_gem_step.py --device "$DEV" "${STEP[@]}"
part kd_throughput 75 "$PY" benchmarks/kd_throughput.py --device "$DEV" "${KDT[@]}"
part perf_table 20 --optional "$PY" benchmarks/perf_table.py --results "$RESULTS/json"
finish
