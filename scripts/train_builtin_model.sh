#!/usr/bin/env bash
# Train the built-in compact model (models/n3d_compact) the way the shipped one was trained on one
# H100: two stages of 8 minutes of optimization (about 9.5 minutes each with scene generation), because
# one command on the lent GPU may run at most 10 minutes. --wall-minutes shortens a stage's training
# when scene generation is slow (it took 2x longer on one lent host), so each command ends in time.
# Stage 2 resumes from stage 1's folder (weights, tokenizer, training_state.json); its scene seeds
# continue where stage 1 stopped.
#
#   bash scripts/train_builtin_model.sh 1 models/n3d_compact    # from scratch
#   bash scripts/train_builtin_model.sh 2 models/n3d_compact    # resumes
#
# Needs a CUDA GPU (about 10 GB of GPU memory) and ~14 CPU workers, which generate, render and
# question the fresh scenes while the GPU trains.
set -euo pipefail
stage=${1:?stage 1 or 2}
out=${2:-models/n3d_compact}
common=(--device cuda --workers "${WORKERS:-14}" --scenes 16000 --images-per-step 48 --questions-per-image 4
        --refresh-fraction 0.05 --dense-head true --neighbour-weight 0.5 --compile encoder
        --minutes "${MINUTES:-8.0}" --wall-minutes "${WALL_MINUTES:-9.4}" --out "$out")
case "$stage" in
  1) python -m n3d_ros.tools.train_compact "${common[@]}" --refresh-every-steps 80 --lr 1e-3 --warmup-steps 300 ;;
  2) python -m n3d_ros.tools.train_compact "${common[@]}" --refresh-every-steps 120 --lr 5e-4 --warmup-steps 200 \
       --resume "$out" ;;
  *) echo "stage must be 1 or 2" >&2; exit 2 ;;
esac
