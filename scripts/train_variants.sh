#!/usr/bin/env bash
# Train variants of the built-in model's recipe side by side on a host with several GPUs: each is a
# full scripts/train_builtin_model.sh run on one GPU with an equal share of the CPU cores. For choosing
# a recipe on validation scenes; the variant is NAME:ARGUMENTS, the arguments override the recipe's.
#
#   bash scripts/train_variants.sh 1 build/sweep "a:" "b:--fine-features false" "c:--lr 2e-3"
#   bash scripts/train_variants.sh 2 build/sweep "a:" "b:--fine-features false" "c:--lr 2e-3"
#
# Each variant writes ROOT/NAME (the model folder) and ROOT/NAME.stageN.log.
set -euo pipefail
stage=${1:?stage 1 or 2}
root=${2:?output folder}
shift 2
(( $# )) || { echo "name at least one variant as NAME:ARGUMENTS" >&2; exit 2; }
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
(( gpus >= $# )) || { echo "$# variants need $# GPUs, found $gpus" >&2; exit 2; }
workers=$(( $(nproc) / $# - 2 ))
(( workers >= 1 )) || workers=1
mkdir -p "$root"
pids=()
i=0
for spec in "$@"; do
  name=${spec%%:*}
  extra=${spec#*:}
  # shellcheck disable=SC2086  # a variant's arguments are split into words on purpose
  CUDA_VISIBLE_DEVICES=$i WORKERS=$workers bash "$(dirname "$0")/train_builtin_model.sh" "$stage" "$root/$name" \
    $extra >"$root/$name.stage$stage.log" 2>&1 &
  pids+=("$!")
  i=$((i + 1))
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
