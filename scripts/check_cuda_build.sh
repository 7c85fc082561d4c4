#!/usr/bin/env bash
# Compile the CUDA kernels (sm_75, CUDA 13) in a separate cached venv with a CUDA build of
# torch, so CUDA code that no longer compiles fails CI. Nothing built here is run.
# Skips (exit 0) when nvcc is not installed. L2KD_CUDA_VENV overrides the venv location.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "[l2kd] no nvcc under $CUDA_HOME: skipping the CUDA compile check"
  exit 0
fi
VENV="${L2KD_CUDA_VENV:-$HOME/.cache/l2kd/cuda-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch; assert torch.version.cuda" 2>/dev/null; then
  echo "[l2kd] creating CUDA build venv $VENV (torch 2.14.1+cu130)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==2.14.1" ninja "setuptools>=68" wheel packaging
fi
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "[l2kd] compiling CUDA kernels for sm_75 (nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1))"
CUDA_HOME="$CUDA_HOME" CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-7.5}" \
  FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py -q build_ext -b "$OUT/lib" -t "$OUT/tmp"
ls "$OUT"/lib/l2kd/_C*.so >/dev/null
echo "[l2kd] CUDA kernels compiled OK"
