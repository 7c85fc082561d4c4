#!/usr/bin/env bash
# Drop-in for the original test.sh: reads DATA_DIR and MODEL_ROOT_DIR from ./env (or
# scripts/env, or the environment) and passes every other flag through unchanged.
set -euo pipefail
for f in ./env scripts/env "$(dirname "$0")/env"; do [ -f "$f" ] && { set -a; . "$f"; set +a; break; }; done
: "${DATA_DIR:?set DATA_DIR in ./env (see scripts/env.example)}"
: "${MODEL_ROOT_DIR:?set MODEL_ROOT_DIR in ./env (see scripts/env.example)}"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m l2kd.test --data_dir "$DATA_DIR" --model_dir_root "$MODEL_ROOT_DIR" "$@"
