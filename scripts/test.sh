#!/usr/bin/env bash
# Run the test suite: set up / refresh the venv (scripts/setup_env.sh), then pytest.
#   bash scripts/test.sh                              # all of test/
#   bash scripts/test.sh test/test_interfaces.py -x   # paths and pytest options pass through
# ROS: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless already set; test/conftest.py gives every test its own
# ROS_DOMAIN_ID. pytest's exit status is returned as is, including 5 (no tests collected): CI must run tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup_env.sh
source "$repo/scripts/setup_env.sh"
cd "$repo"

# Default to test/ unless a path (file, folder or file::test) was given.
targets=(test)
for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then targets=(); break; fi
done

echo "[test] $N3D_VENV/bin/python -m pytest -p no:cacheprovider ${targets[*]} $*"
echo "[test] ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE AMENT_PREFIX_PATH=$AMENT_PREFIX_PATH"
rc=0
"$N3D_VENV/bin/python" -m pytest -p no:cacheprovider "${targets[@]}" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] ERROR: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
