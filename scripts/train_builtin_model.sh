#!/usr/bin/env bash
# Train the built-in compact model (models/n3d_compact) on one GPU in two stages of 9.7 minutes each
# (19.4 minutes in all, scene generation and export included), because one command on the lent GPU
# may run at most 10 minutes. The two stages make one cosine learning-rate decay: stage 1 covers its
# first half and saves the AdamW state, stage 2 resumes from stage 1's folder (weights, optimizer
# state, tokenizer, training_state.json) and covers the second half; its scene seeds continue where
# stage 1 stopped. --wall-minutes ends each stage's training in time for its export, whatever the
# host's scene set-up took (it took 2x longer on one lent host). --mirror shows half of the images of
# each step reflected left-right (targets turned to match), so every scene in the pool counts twice.
# --compile graphs runs the encoder and the decoder's pass through torch.compile as CUDA graphs: the
# loop was bound by launching kernels, and makes ~1.6x the steps with them. Stage 1 makes the model on a
# 384x288 grid with f0 = 288 px (the 320x240 grid's field of view, 1.44x the pixels: objects 1.2x larger);
# the resumed stage 2 keeps the saved grid. --ema-decays 0.9995 also keeps a moving average of the
# weights, continued across both stages, and writes it as the model folder $out/ema_0.9995: that
# average is the shipped model (its ramp makes it an average of about the last ninth of the steps).
#
#   bash scripts/train_builtin_model.sh 1 build/x    # from scratch
#   bash scripts/train_builtin_model.sh 2 build/x    # resumes
#   python -m n3d_ros.tools.half_weights build/x/ema_0.9995 models/n3d_compact   # weights stored as float16
#
# Further arguments go to n3d_ros.tools.train_compact after the recipe's own and override them.
# Needs a CUDA GPU (about 10 GB of GPU memory) and ~14 CPU workers, which generate, render and
# question the fresh scenes while the GPU trains.
set -euo pipefail
stage=${1:?stage 1 or 2}
out=${2:-build/n3d_compact}
shift $(( $# < 2 ? $# : 2 ))
common=(--device cuda --workers "${WORKERS:-14}" --scenes 16000 --images-per-step 48 --questions-per-image 4
        --refresh-fraction 0.05 --dense-head true --neighbour-weight 0.5 --compile graphs --fine-features true
        --mirror true --ema-decays 0.9995 --lr 1e-3 --minutes "${MINUTES:-9.0}" --wall-minutes "${WALL_MINUTES:-9.7}" --out "$out")
case "$stage" in
  1) python -m n3d_ros.tools.train_compact "${common[@]}" --refresh-every-steps 80 --warmup-steps 300 \
       --lr-span-end 0.5 --save-optimizer true --grid-width 384 --grid-height 288 --f0 288 "$@" ;;
  2) python -m n3d_ros.tools.train_compact "${common[@]}" --refresh-every-steps 120 --warmup-steps 0 \
       --lr-span-start 0.5 --resume "$out" "$@" ;;
  *) echo "stage must be 1 or 2" >&2; exit 2 ;;
esac
