#!/usr/bin/env bash
# Validate trained variants side by side (the second half of a recipe sweep, after
# scripts/train_variants.sh): each model folder runs `n3d-bench` on validation seeds (2,000,000 and up:
# never trained on, and apart from the test seeds from 1,000,000 that the model card reports), one GPU
# each when there are several, then a table ranks them by the sweep's score, the mean of QA accuracy and
# AP3D@0.25 in both modes.
#
#   bash scripts/bench_variants.sh build/sweep a b c d          # writes build/sweep/NAME.val.json
#
# SCENES (default 60) and DEVICE (default cuda) set the run.
set -euo pipefail
root=${1:?folder of the variants}
shift
(( $# )) || { echo "name at least one variant folder under $root" >&2; exit 2; }
device=${DEVICE:-cuda}
gpus=1
[[ $device == cuda ]] && gpus=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')
pids=()
i=0
for name in "$@"; do
  CUDA_VISIBLE_DEVICES=$(( i % gpus )) python -m n3d_ros.tools.bench --device "$device" --scenes "${SCENES:-60}" \
    --questions-per-scene 8 --first-seed 2000000 --model-dir "$root/$name" --out "$root/$name.val.json" \
    >"$root/$name.val.log" 2>&1 &
  pids+=("$!")
  i=$((i + 1))
  if (( i % gpus == 0 )); then for pid in "${pids[@]}"; do wait "$pid"; done; pids=(); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
python - "$root" "$@" <<'PY'
import json, sys
root, names = sys.argv[1], sys.argv[2:]
rows = []
for n in names:
    m = json.load(open(f"{root}/{n}.val.json"))["modes"]
    mono, depth = m["monocular"], m["depth"]
    qa = (mono["qa_accuracy"], depth["qa_accuracy"])
    ap = (mono["ap3d"]["0.25"], depth["ap3d"]["0.25"])
    ap5 = (mono["ap3d"]["0.5"], depth["ap3d"]["0.5"])
    rel = (mono["median_rel_distance_error"], depth["median_rel_distance_error"])
    rows.append((sum(qa + ap) / 4, n, qa, ap, ap5, rel))
print("| variant | score | QA mono / depth | AP3D@0.25 mono / depth | AP3D@0.5 mono / depth | rel. distance error mono / depth |")
print("|---|---|---|---|---|---|")
for score, n, *pairs in sorted(rows, reverse=True):
    print(f"| {n} | {score:.3f} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in pairs) + " |")
PY
