#!/bin/bash
# run_l2kd.sh SEED MODE PHASE   MODE: lll | distil   PHASE: train | test
set -euo pipefail
SEED=$1; MODE=$2; PHASE=$3
H=${PARITY_HOME:?set PARITY_HOME to the harness folder}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # 2 shared cores: one thread each avoids oversubscription
FLAGS=(--data_dir $H/data --model_name $H/init --seq_train_type lll --gen_lm_sample_percentage 0.2 --learning_rate 1e-3
       --n_train_epochs 2 --train_batch_size 8 --logging_steps 1 --seed $SEED --tasks rnnlg.rest rnnlg.hotel)
case $MODE in
  lll)    ROOT=$H/runs/l2kd-lll ;;
  distil) ROOT=$H/runs/l2kd-distil; FLAGS+=(--distil --teacher_dir $H/teachers/seed$SEED/l2kd) ;;
esac
mkdir -p $ROOT $H/timings
TAG=l2kd-$MODE-s$SEED-$PHASE
cd /tmp
export PYTHONPATH=${L2KD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}  # the l2kd checkout under test
/usr/bin/time -v -o $H/timings/$TAG.time ${L2KD_PYTHON:-python} -m l2kd.$PHASE --model_dir_root $ROOT "${FLAGS[@]}" > $H/timings/$TAG.log 2>&1
