#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build the CUDA extension, run every test (CUDA cases
# included, and none of them may skip) and every benchmark on the GPU with the peer rows
# (torch.compile; Liger-Kernel and cut-cross-entropy, installed if absent and possible), and
# write their JSON and logs under a results folder. Meant to finish in under 8 minutes.
# Fails loudly without a GPU.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]      # default gpu_results/<date-time>
#
# VENV (default .venv-gpu) is created when missing, with a CUDA build of torch (TORCH_SPEC,
# default torch==2.14.1, CUDA 13); an existing VENV whose torch sees the GPU is reused.
# CUDA_HOME (default /usr/local/cuda) provides nvcc; without one, CUDA 13's nvcc wheel is
# installed into the venv. TORCH_CUDA_ARCH_LIST defaults to the GPU's own architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS="${1:-gpu_results/$STAMP}"
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
LOG="$RESULTS/gpu_check.log"
START=$SECONDS

die() {
  echo "[gpu_check] FAILED: $*" | tee -a "$LOG" >&2
  exit 1
}
say() { echo "[gpu_check] $* ($((SECONDS - START)) s)" | tee -a "$LOG"; }

command -v nvidia-smi >/dev/null 2>&1 || die "no nvidia-smi: this machine has no NVIDIA driver / GPU"
nvidia-smi -L >"$RESULTS/nvidia-smi.txt" 2>&1 || die "nvidia-smi sees no GPU: $(cat "$RESULTS/nvidia-smi.txt")"
grep -q '^GPU ' "$RESULTS/nvidia-smi.txt" || die "nvidia-smi lists no GPU"
say "GPUs: $(tr '\n' ';' <"$RESULTS/nvidia-smi.txt")"

VENV="${VENV:-.venv-gpu}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "installing ${TORCH_SPEC:-torch==2.14.1} (CUDA build)"
  "${PIP[@]}" "${TORCH_SPEC:-torch==2.14.1}"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "torch $("$PY" -c 'import torch; print(torch.__version__)') in $VENV does not see a GPU"
"${PIP[@]}" "setuptools>=68" wheel ninja packaging numpy pytest quadprog
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
TORCH_CUDA=$("$PY" -c "import torch; print(torch.version.cuda)")

# nvcc for the build: CUDA_HOME's, else the nvcc wheel matching torch's CUDA major version.
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  major=${TORCH_CUDA%%.*}
  say "no nvcc under $CUDA_HOME: installing nvidia-cuda-nvcc for CUDA $major"
  if [ "$major" -ge 13 ]; then
    "${PIP[@]}" "nvidia-cuda-nvcc==${TORCH_CUDA}.*" || die "could not install CUDA $TORCH_CUDA's nvcc; set CUDA_HOME"
    CUDA_HOME="$SITE/nvidia/cu$major"
  else
    die "no nvcc under $CUDA_HOME and CUDA $TORCH_CUDA has no nvcc wheel: set CUDA_HOME to a CUDA $major toolkit"
  fi
fi
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc at $CUDA_HOME/bin/nvcc"
export CUDA_HOME
# torch's pip CUDA wheels keep the CUDA headers (cublas, cusparse, ...) under nvidia/cu13/include
for inc in "$SITE"/nvidia/cu*/include; do
  [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"
done
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"

say "building l2kd with CUDA kernels for sm_$TORCH_CUDA_ARCH_LIST (nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1))"
FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout 300 "${PIP[@]}" --no-build-isolation -e ".[test]" \
  >"$RESULTS/build.log" 2>&1 || die "build failed, see $RESULTS/build.log"
"$PY" - <<'EOF' || die "the built extension has no CUDA kernels"
import torch
import l2kd.ops  # noqa: F401  (loads l2kd._C)
for op in ("kd_loss", "top_k_sample", "gem_project"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"l2kd::{op}", "CUDA"), op
print("CUDA kernels registered:", l2kd.ops.backend())
EOF

# Peers: best effort (the benchmarks record why a peer did not run).
for peer in liger-kernel cut-cross-entropy; do
  mod=${peer//-/_}
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    # --no-deps: never let a peer replace the torch build under test
    if "${PIP[@]}" --no-deps "$peer" >>"$LOG" 2>&1; then
      say "installed $peer"
    else
      say "WARNING: could not install $peer"
    fi
  fi
done
"$PY" -c "import triton" 2>/dev/null || say "WARNING: no triton: Liger / CCE rows will record why they did not run"

say "tests (every CUDA test must run, none may skip)"
set +e
timeout 240 "$PY" -m pytest -q -rs tests/ops tests/test_perf_table.py >"$RESULTS/pytest.log" 2>&1
rc=$?
set -e
tail -3 "$RESULTS/pytest.log" | tee -a "$LOG"
[ "$rc" -eq 0 ] || die "tests failed (rc $rc), see $RESULTS/pytest.log"
if grep -iE '^SKIPPED.*(cuda|gpu)' "$RESULTS/pytest.log" >/dev/null; then
  grep -iE '^SKIPPED.*(cuda|gpu)' "$RESULTS/pytest.log" | head -5 >&2
  die "CUDA tests were skipped on a GPU machine"
fi

# Benchmarks write into benchmarks/results; this run's files are copied to RESULTS.
mark="$RESULTS/.bench-start"
touch "$mark"
bench() {
  local name=$1
  shift
  say "benchmark $name"
  timeout 150 "$PY" "$@" >"$RESULTS/$name.log" 2>&1 || die "benchmark $name failed, see $RESULTS/$name.log"
}
bench kd_loss benchmarks/bench_kd_loss.py --device cuda --quick
bench top_k_sample benchmarks/bench_top_k_sample.py --device cuda --quick
bench gem_project benchmarks/bench_gem_project.py --device cuda --quick
bench gem_step benchmarks/bench_gem_step.py --device cuda --quick
bench kd_throughput benchmarks/kd_throughput.py --device cuda --quick
find "$ROOT/benchmarks/results" -name '*-cuda-*.json' -newer "$mark" -exec cp {} "$RESULTS/" \;
rm -f "$mark"
ls "$RESULTS"/*-cuda-*.json >/dev/null 2>&1 || die "no benchmark JSON was written"
"$PY" benchmarks/perf_table.py --results "$RESULTS" >"$RESULTS/perf_table.md"
say "done: results in $RESULTS"
