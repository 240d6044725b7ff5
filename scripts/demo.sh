#!/usr/bin/env bash
# The main job: set up / refresh the venv (scripts/setup_env.sh), then run the demo.
#   bash scripts/demo.sh [demo options]     # options go to `python -m n3d_ros.tools.demo` (see --help)
# ROS: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless already set. ROS_DOMAIN_ID is kept when set; otherwise one in
# 20..99 is picked from this shell's pid so that several demos on one machine do not talk to each other.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup_env.sh
source "$repo/scripts/setup_env.sh"
cd "$repo"
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((20 + $$ % 80))}
echo "[demo] ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE"
exec "$N3D_VENV/bin/python" -m n3d_ros.tools.demo "$@"
