#!/usr/bin/env bash
# The compute part of the study in docs/results.md (experiments/study.py), both datasets at once:
# prepare, train 3 seeds x {lambda 0.1, lambda 0} (+ the tinyshakespeare block-1 judge) in
# parallel processes, sample the grid, judge every file, time the stages on this device.
#
#   bash experiments/study_run.sh [DIR]          # DIR defaults to runs/study
#
# Environment: DEVICE (cuda|cpu, default cuda if available), STEPS (4000), N (512 samples per
# setting and model), BATCH (rows per sampler call, 512), and per-phase deadlines in seconds
# TRAIN_S, SAMPLE_S, EVAL_S, TIME_S: a training that reaches its deadline saves its last step and
# the study goes on with it (the report shows the steps each model reached).
set -uo pipefail
STUDY=$(realpath -m "${1:-runs/study}")
cd "$(dirname "$0")/.."  # the experiments run as modules of the repository root
DEVICE=${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
STEPS=${STEPS:-4000}
N=${N:-512}
BATCH=${BATCH:-512}
TRAIN_S=${TRAIN_S:-900}
SAMPLE_S=${SAMPLE_S:-900}
EVAL_S=${EVAL_S:-600}
TIME_S=${TIME_S:-600}
SEEDS=${SEEDS:-0 1 2}
DATASETS=${DATASETS:-synthetic shakespeare}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$STUDY/logs"
phase() { echo "[$(date +%T)] $*" >&2; }

phase "prepare"
for d in $DATASETS; do python -m experiments.study prepare --out "$STUDY" --dataset "$d" || exit 1; done

phase "train (deadline ${TRAIN_S} s)"
for d in $DATASETS; do
  for s in $SEEDS; do
    for m in mix single; do
      timeout "$TRAIN_S" python -m experiments.study train --out "$STUDY" --device "$DEVICE" \
        --dataset "$d" --model "$m" --seed "$s" --steps "$STEPS" \
        >"$STUDY/logs/train-$d-$m-$s.log" 2>&1 &
    done
  done
  if [ "$d" = shakespeare ]; then
    timeout "$TRAIN_S" python -m experiments.study train --out "$STUDY" --device "$DEVICE" \
      --dataset "$d" --model judge --seed 0 --steps "$STEPS" \
      >"$STUDY/logs/train-$d-judge-0.log" 2>&1 &
  fi
done
wait
tail -n 2 "$STUDY"/logs/train-*.log

phase "sample (deadline ${SAMPLE_S} s)"
for d in $DATASETS; do
  for s in $SEEDS; do
    timeout "$SAMPLE_S" python -m experiments.study sample --out "$STUDY" --device "$DEVICE" \
      --dataset "$d" --seed "$s" --n "$N" --batch "$BATCH" >"$STUDY/logs/sample-$d-$s.log" 2>&1 &
  done
done
wait
tail -n 3 "$STUDY"/logs/sample-*.log

phase "eval (deadline ${EVAL_S} s)"
for d in $DATASETS; do
  timeout "$EVAL_S" python -m experiments.study eval --out "$STUDY" --device "$DEVICE" --dataset "$d" \
    --n "$N" --seeds "$(echo "$SEEDS" | tr ' ' ,)" >"$STUDY/logs/eval-$d.log" 2>&1 &
done
wait
tail -n 3 "$STUDY"/logs/eval-*.log

phase "timing on $DEVICE"
for d in $DATASETS; do
  timeout "$TIME_S" python -m experiments.study timing --out "$STUDY" --device "$DEVICE" \
    --dataset "$d" --time-batch "$BATCH" >"$STUDY/logs/timing-$d.log" 2>&1
done
phase "done"
