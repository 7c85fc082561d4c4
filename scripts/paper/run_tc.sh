#!/usr/bin/env bash
# L2KD's text-classification experiment (run_seqkdsoft-TC.sh): amazon, yelp, yahoo, ag, dbpedia and the
# reverse order, seed given as $1; then the paper-style table.
. "$(dirname "$0")/common.sh"
SEED="${1:-${SEED:-1}}"
ORDER=(amazon yelp yahoo ag dbpedia)
REVERSE=(dbpedia ag yahoo yelp amazon)
for m in ${METHODS:-finetune lamol word_kd seq_kd seqkd_soft}; do
  run "$m" "$SEED" "${ORDER[@]}"
  run "$m" "$SEED" "${REVERSE[@]}"
done
"$PY" -m l2kd.report $(find "$MODEL_ROOT_DIR" -name accuracy_matrix.json -path "*amazon*" -exec dirname {} \; | sort) \
  --out "$MODEL_ROOT_DIR/tables/tc" --no-plots
