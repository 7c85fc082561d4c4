#!/usr/bin/env bash
# L2KD's NLG experiment (run_seqkdsoft-NLG.sh): E2E + four RNNLG domains, the order and its reverse,
# seed 531, for every method in METHODS; then the paper-style table.
#   bash scripts/paper/run_nlg.sh            (GPT-2 weights: MODEL_NAME=gpt2 or a local directory)
#   SMALL=1 EPOCHS=1 METHODS="lamol seqkd_soft" bash scripts/paper/run_nlg.sh   (smoke test, tiny model)
. "$(dirname "$0")/common.sh"
SEED="${SEED:-531}"
ORDER=(e2enlg rnnlg.rest rnnlg.hotel rnnlg.tv rnnlg.laptop)
REVERSE=(rnnlg.laptop rnnlg.tv rnnlg.hotel rnnlg.rest e2enlg)
for m in ${METHODS:-finetune lamol word_kd seq_kd seqkd_soft}; do
  run "$m" "$SEED" "${ORDER[@]}"
  run "$m" "$SEED" "${REVERSE[@]}"
done
"$PY" -m l2kd.report $(find "$MODEL_ROOT_DIR" -name accuracy_matrix.json -path "*e2enlg*" -exec dirname {} \; | sort) \
  --out "$MODEL_ROOT_DIR/tables/nlg" --no-plots
