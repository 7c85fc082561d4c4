#!/usr/bin/env bash
# Set up (first run only) and run the offline demo: finetune, LAMOL and LAMOL + Word-KD on three RNNLG
# domains, from the pretrained tiny base shipped in l2kd/resources/pretrained (verified, not rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec "${VENV:-.venv}/bin/python" -m l2kd.demo "$@"
