#!/usr/bin/env bash
# L2KD's WCS experiment (run_seqkdsoft-WCS.sh): woz.en, cnn_dailymail, wikisql in all 6 orders,
# seed given as $1 (the original passed it the same way); then the paper-style table.
. "$(dirname "$0")/common.sh"
SEED="${1:-${SEED:-1}}"
ORDERS=("woz.en cnn_dailymail wikisql" "woz.en wikisql cnn_dailymail" "cnn_dailymail woz.en wikisql"
        "cnn_dailymail wikisql woz.en" "wikisql woz.en cnn_dailymail" "wikisql cnn_dailymail woz.en")
for m in ${METHODS:-finetune lamol word_kd seq_kd seqkd_soft}; do
  for o in "${ORDERS[@]}"; do run "$m" "$SEED" $o; done
done
"$PY" -m l2kd.report $(find "$MODEL_ROOT_DIR" -name accuracy_matrix.json -path "*woz.en*" -exec dirname {} \; | sort) \
  --out "$MODEL_ROOT_DIR/tables/wcs" --no-plots
