#!/usr/bin/env bash
# Shared by the paper scripts: reads DATA_DIR / MODEL_ROOT_DIR from ./env (as train.sh), picks the
# model (MODEL_NAME, default gpt2 from the local Hugging Face cache or a local directory) and, with
# SMALL=1, a minutes-long smoke configuration (tiny-gpt2, few examples) for checking the chain.
set -euo pipefail
for f in ./env scripts/env; do [ -f "$f" ] && { set -a; . "$f"; set +a; break; }; done
: "${DATA_DIR:?set DATA_DIR in ./env (see scripts/env.example)}"
: "${MODEL_ROOT_DIR:?set MODEL_ROOT_DIR in ./env}"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
MODEL_NAME="${MODEL_NAME:-gpt2}"
EXTRA=()
if [ "${SMALL:-0}" = 1 ]; then
  MODEL_NAME=tiny-gpt2
  EXTRA=(--learning_rate 1e-3 --train_batch_size 8 --max_train_examples 16 --max_test_examples 8 --max_gen_len 24 --top_k_qa 1 --quiet)
fi
# L2KD's flags for every run of the paper (run_seqkdsoft-*.sh): lll, task tokens, 20% pseudo-samples, 9 epochs.
L2KD=(--seq_train_type lll --add_task_tokens --gen_lm_sample_percentage 0.2 --n_train_epochs "${EPOCHS:-9}")
run() {  # run METHOD SEED TASK...: train then test one task order with one method
  local method=$1 seed=$2; shift 2
  local flags=()
  case $method in
    lamol) flags=("${L2KD[@]}") ;;
    word_kd) flags=("${L2KD[@]}" --distil) ;;
    seq_kd) flags=("${L2KD[@]}" --seq_distil) ;;
    seqkd_soft) flags=("${L2KD[@]}" --distil --seq_distil) ;;
    finetune|multitask|ewc|mas|gem) flags=(--seq_train_type "$method" --add_task_tokens --n_train_epochs "${EPOCHS:-9}") ;;
    *) echo "unknown method $method" >&2; return 2 ;;
  esac
  local root="$MODEL_ROOT_DIR/$method"
  for mod in l2kd.train l2kd.test; do
    "$PY" -m "$mod" --data_dir "$DATA_DIR" --model_dir_root "$root" --model_name "$MODEL_NAME" --seed "$seed" \
      --tasks "$@" "${flags[@]}" "${EXTRA[@]}"
  done
}
