#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels that scripts/gpu_check.sh installs on
# an offline GPU machine (`gpu_check.sh --wheels DIR`), for that machine's Python and platform.
#
#   bash scripts/fetch_gpu_wheels.sh DIR [--python 3.12] [--platform manylinux2014_x86_64]
#
# With dependencies: pytest, numpy, scipy, quadprog, nltk, rouge-score (the op tests' and the
# metrics' packages) and the build tools (setuptools, wheel, ninja, packaging). Without
# dependencies: liger-kernel and cut-cross-entropy (their dependencies are torch and triton,
# which the GPU machine has and which must not be replaced). rouge-score is
# published as a source archive only: it is built here into a pure-Python wheel.
# PIP (default "python3 -m pip") is the pip that downloads; it never installs anything.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,13p' "$0"; exit 2; }
DEST=$1
shift
PYVER=3.12
PLATFORM=manylinux2014_x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYVER="$2"; shift 2 ;;
    --platform) PLATFORM="$2"; shift 2 ;;
    *) echo "[fetch_gpu_wheels] unknown argument: $1" >&2; exit 2 ;;
  esac
done
read -r -a PIP <<<"${PIP:-python3 -m pip}"
mkdir -p "$DEST"
TARGET=(--python-version "$PYVER" --platform "$PLATFORM" --platform "manylinux_2_28_x86_64" --platform any
        --implementation cp --only-binary=:all:)
echo "[fetch_gpu_wheels] Python $PYVER, $PLATFORM -> $DEST"
# rouge-score's own dependencies come as wheels; rouge-score itself as a wheel built from its sdist.
"${PIP[@]}" download --disable-pip-version-check -q -d "$DEST" "${TARGET[@]}" \
  pytest numpy scipy quadprog nltk absl-py six setuptools wheel ninja packaging
"${PIP[@]}" wheel --disable-pip-version-check -q --no-deps -w "$DEST" rouge-score
"${PIP[@]}" download --disable-pip-version-check -q -d "$DEST" "${TARGET[@]}" --no-deps liger-kernel cut-cross-entropy
ls "$DEST"
echo "[fetch_gpu_wheels] done: copy $DEST to the GPU machine and run: bash scripts/gpu_check.sh --wheels $DEST"
