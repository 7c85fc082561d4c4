#!/usr/bin/env bash
# Set up (first run only) and run the offline demo: finetune vs LAMOL on three RNNLG domains.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec "${VENV:-.venv}/bin/python" -m l2kd.demo "$@"
