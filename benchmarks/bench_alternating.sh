#!/usr/bin/env bash
# Two versions of the code side by side on one machine: n3d-bench alternating between the package in
# BEFORE (a copy of an earlier commit's n3d_ros/) and this checkout's, RUNS times each, on the same scenes,
# with this checkout's model folder for both. Latency claims compare runs made this way, in one call.
#
#   git archive <commit> n3d_ros | tar -x -C build/before        # (mkdir -p build/before first)
#   RUNS=3 bash benchmarks/bench_alternating.sh build/before build/alternating --device cuda --scenes 50
#
# Writes OUT/before_run<i>.json and OUT/after_run<i>.json (n3d-bench's --out) and prints each run's table.
set -euo pipefail
before=$(cd "${1:?folder holding the earlier n3d_ros/}" && pwd)
out=${2:?output folder}
shift 2
here=$(pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
for i in $(seq 1 "${RUNS:-3}"); do
  for side in before after; do
    src=$here; [ "$side" = before ] && src=$before
    # From inside $src: `python -m` puts the working directory ahead of PYTHONPATH.
    (cd "$src" && PYTHONPATH="$src" python -c "import n3d_ros; print('== $side, run $i:', n3d_ros.__file__)" &&
     PYTHONPATH="$src" python -m n3d_ros.tools.bench --model-dir "$here/models/n3d_compact" \
       --out "$out/${side}_run$i.json" "$@")
  done
done
