#!/bin/bash
# run_orig.sh SEED MODE PHASE   MODE: lll | retest (test only) | distil | teacher:<task>   PHASE: train | test
# The original (patched, orig.patch) in venv-orig; output under runs/orig-<MODE>/, timing in timings/.
set -euo pipefail
SEED=$1; MODE=$2; PHASE=$3
H=${PARITY_HOME:?set PARITY_HOME to the harness folder}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # 2 shared cores: one thread each avoids oversubscription
export PYTHONPATH=$H/stubs PARITY_INIT_DIR=$H/init PARITY_MEMORY_MIB=11019
FLAGS=(--data_dir $H/data --seq_train_type lll --gen_lm_sample_percentage 0.2 --learning_rate 1e-3
       --n_train_epochs 2 --train_batch_size 8 --logging_steps 1 --seed $SEED)
case $MODE in
  lll)       ROOT=$H/runs/orig-lll; CWD=$H; FLAGS+=(--tasks rnnlg.rest rnnlg.hotel) ;;
  retest)    ROOT=$H/runs/orig-lll-retest; CWD=$H; FLAGS+=(--tasks rnnlg.rest rnnlg.hotel)  # test again: sampling noise alone
             mkdir -p $ROOT/gpt2/lll; rm -rf $ROOT/gpt2/lll/rnnlg.rest_rnnlg.hotel_0.2_$SEED
             cp -r $H/runs/orig-lll/gpt2/lll/rnnlg.rest_rnnlg.hotel_0.2_$SEED $ROOT/gpt2/lll/ ;;
  distil)    ROOT=$H/runs/orig-distil; CWD=$H/teachers/seed$SEED; FLAGS+=(--tasks rnnlg.rest rnnlg.hotel --distil) ;;
  teacher:*) T=${MODE#teacher:}; ROOT=$H/teachers/seed$SEED/models; CWD=$H; FLAGS+=(--tasks $T) ;;
esac
mkdir -p $ROOT $H/timings
TAG=orig-${MODE/:/-}-s$SEED-$PHASE
cd $CWD
/usr/bin/time -v -o $H/timings/$TAG.time $H/venv-orig/bin/python $H/L2KD/$PHASE.py --model_dir_root $ROOT "${FLAGS[@]}" > $H/timings/$TAG.log 2>&1
if [[ $MODE == teacher:* && $PHASE == train ]]; then  # the original reads teachers from models/gpt2/lll/<t>_0.2/<t> (no seed)
  ln -sfn ${T}_0.2_$SEED $ROOT/gpt2/lll/${T}_0.2
fi
