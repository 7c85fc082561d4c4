#!/bin/bash
# prep_teacher.sh SEED: the l2kd view of the original's teachers (<dir>/<task>/model-finish)
set -e
H=${PARITY_HOME:?set PARITY_HOME to the harness folder}; S=$1
mkdir -p $H/teachers/seed$S/l2kd
for T in rnnlg.rest rnnlg.hotel; do ln -sfn $H/teachers/seed$S/models/gpt2/lll/${T}_0.2_$S/$T $H/teachers/seed$S/l2kd/$T; done
ls -l $H/teachers/seed$S/l2kd/ $H/teachers/seed$S/models/gpt2/lll/
