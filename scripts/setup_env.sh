#!/usr/bin/env bash
# Create or refresh the Python environment for n3d_ros (pip-wheel route, no ROS distribution needed).
#
#   bash scripts/setup_env.sh          # create/refresh the venv
#   source scripts/setup_env.sh        # same, then also export N3D_VENV, AMENT_PREFIX_PATH, ROS defaults, PATH
#
# Venv path: $N3D_VENV, default <repo>/.venv. Python: $PYTHON, default python3 (must be 3.11: the ROS wheels are cp311).
# Steps, each skipped when its inputs did not change (stamps under $N3D_VENV/.n3d_stamps):
#   1. Debian tools (cmake, g++, make; python3-venv, python3-dev when needed) via apt-get, only if missing and root
#   2. the venv itself
#   3. pip: requirements-torch.txt FIRST, then requirements.txt + requirements-build.txt + requirements-dev.txt
#   4. rewrite the wheel builder's include paths in export_*__rosidl_generator_pyExport.cmake (always; idempotent)
#   5. cmake build of msg/ + srv/ (-DN3D_ROS_INTERFACES_ONLY=ON) installed into the venv prefix
#   6. `pip install -e . --no-deps`, then a check that `import n3d_ros.msg` works from /tmp and the repo root
# Safe to re-run while others use the venv: changes are additive and runs on one venv are serialised by flock.

_n3d_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_n3d_venv=${N3D_VENV:-$_n3d_repo/.venv}
case "$_n3d_venv" in /*) ;; *) _n3d_venv=$PWD/$_n3d_venv ;; esac

_n3d_setup() (
  set -euo pipefail
  repo=$1
  venv=$2
  py=${PYTHON:-python3}
  # A guard inherited from another venv's Python would stop the ROS wheels from setting LD_LIBRARY_PATH.
  unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
  t0=$SECONDS
  say() { printf '[setup_env %3ds] %s\n' "$((SECONDS - t0))" "$*"; }
  die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
  # apt_install WHY PKG...: Debian packages, installed only when running as root; otherwise stop and say what to run.
  apt_install() {
    local why=$1
    shift
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      say "apt-get install $* ($why)"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
      die "$why (Debian: sudo apt-get install $*)"
    fi
  }
  cd "$repo"

  # -- 1. system tools ---------------------------------------------------------------------------------------
  is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }  # ROS wheels are cp311
  missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  if [ ! -x "$venv/bin/python" ]; then
    command -v "$py" >/dev/null || die "no '$py' on PATH; install Python 3.11 (Debian 12: apt-get install python3) or set PYTHON"
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install "missing build tools: ${missing[*]}" "${missing[@]}"

  # -- 2. venv -----------------------------------------------------------------------------------------------
  mkdir -p "$venv"
  exec 9>"$venv/.n3d_setup.lock"
  flock 9 || die "could not lock $venv/.n3d_setup.lock"
  if [ ! -x "$venv/bin/python" ]; then
    is_py311 "$py" || die "$py is $("$py" -V 2>&1); the ROS 2 wheels need Python 3.11 (set PYTHON=/path/to/python3.11)"
    say "creating venv $venv ($("$py" -V 2>&1))"
    if ! "$py" -m venv "$venv"; then
      # Debian ships venv's pip bootstrap separately (python3-venv); retrying over the partial venv is fine.
      apt_install "'$py -m venv' failed" python3-venv
      "$py" -m venv "$venv"
    fi
  fi
  vpy=$venv/bin/python
  is_py311 "$vpy" || die "$venv has $("$vpy" -V 2>&1); the ROS 2 wheels need Python 3.11: remove it or set N3D_VENV"
  stamps=$venv/.n3d_stamps
  mkdir -p "$stamps"
  stamp_ok() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }

  # -- 3. pip requirements -----------------------------------------------------------------------------------
  req_files=(requirements-torch.txt requirements.txt requirements-build.txt requirements-dev.txt)
  pip_hash=$({ "$vpy" -V; sha256sum "${req_files[@]}"; } | sha256sum | cut -c1-64)
  if stamp_ok pip "$pip_hash"; then
    say "pip requirements unchanged (skip)"
  else
    say "pip install -r requirements-torch.txt (torch first)"
    "$vpy" -m pip install -q -r requirements-torch.txt
    say "pip install -r requirements.txt -r requirements-build.txt -r requirements-dev.txt"
    "$vpy" -m pip install -q -r requirements.txt -r requirements-build.txt -r requirements-dev.txt
    echo "$pip_hash" >"$stamps/pip"
  fi

  # -- 4. fix include paths baked into the message wheels ----------------------------------------------------
  # The wheels' export_*__rosidl_generator_pyExport.cmake name the wheel builder's Python and numpy headers
  # (/opt/python/cp311-cp311/...); point them at this venv's.
  fixed=$("$vpy" - <<'PY'
import glob, os, re, sys, sysconfig
import numpy
py_inc, np_inc = sysconfig.get_paths()["include"], numpy.get_include()
def fix_entry(path: str) -> str:
    if re.search(r"numpy/(_core|core)/include/?$", path):
        return np_inc
    if re.search(r"/include/python3\.\d+/?$", path):
        return py_inc
    return path
changed = 0
pattern = os.path.join(sys.prefix, "share", "*", "cmake", "export_*__rosidl_generator_pyExport.cmake")
for name in glob.glob(pattern):
    with open(name, encoding="utf-8") as f:
        text = f.read()
    new = re.sub(r'(INTERFACE_INCLUDE_DIRECTORIES ")([^"]*)(")',
                 lambda m: m[1] + ";".join(fix_entry(p) for p in m[2].split(";")) + m[3], text)
    if new != text:
        tmp = name + ".n3d_tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, name)  # atomic: others may be running cmake against this venv
        changed += 1
print(changed)
PY
)
  [ "$fixed" = 0 ] || say "rewrote Python/numpy include paths in $fixed rosidl export file(s)"
  [ -f "$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
    || apt_install "Python.h (needed to build the message extension) not found for $vpy" python3-dev

  # -- 5. interfaces (msg/srv) -------------------------------------------------------------------------------
  site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  iface_hash=$({ echo "$venv $pip_hash"; sha256sum CMakeLists.txt package.xml msg/*.msg srv/*.srv; } | sha256sum | cut -c1-64)
  if stamp_ok interfaces "$iface_hash" && [ -f "$site/n3d_ros/srv/_spatial_query.py" ]; then
    say "interfaces unchanged (skip cmake)"
  else
    build=$venv/build/n3d_ros_interfaces
    say "building msg/srv with cmake into $venv (build dir $build)"
    rm -rf "$build"
    export AMENT_PREFIX_PATH=$venv CMAKE_PREFIX_PATH=$venv
    log=$venv/build/n3d_ros_interfaces.log
    mkdir -p "$venv/build"
    if ! {
      cmake -S "$repo" -B "$build" -DN3D_ROS_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$vpy" \
        && cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" \
        && cmake --install "$build"
    } >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      die "interface build failed (full log: $log)"
    fi
    echo "$iface_hash" >"$stamps/interfaces"
  fi
  # The generated half must be a namespace portion: with an __init__.py it would shadow the source package.
  [ ! -e "$site/n3d_ros/__init__.py" ] || die "$site/n3d_ros/__init__.py exists; it would shadow the source package (re-run after deleting $stamps/interfaces)"

  # -- 6. editable install of the source package -------------------------------------------------------------
  edit_hash=$({ echo "$repo"; sha256sum setup.py pyproject.toml; } | sha256sum | cut -c1-64)
  if stamp_ok editable "$edit_hash" && compgen -G "$site/n3d_ros-*.dist-info" >/dev/null; then
    say "editable install unchanged (skip)"
  else
    say "pip install -e . --no-deps"
    "$vpy" -m pip install -q -e . --no-deps
    echo "$edit_hash" >"$stamps/editable"
  fi

  check='import n3d_ros, n3d_ros.msg, n3d_ros.srv, n3d_ros.core
from n3d_ros.msg import Object3D
from n3d_ros.srv import SpatialQuery
import os, sys
want = os.path.join(sys.argv[1], "n3d_ros", "__init__.py")
assert os.path.samefile(n3d_ros.__file__, want), f"n3d_ros imported from {n3d_ros.__file__}, expected {want}"'
  for where in /tmp "$repo"; do
    (cd "$where" && "$vpy" -c "$check" "$repo") || die "import check failed when run from $where"
  done
  say "ready: $venv (import n3d_ros, n3d_ros.msg, n3d_ros.srv, n3d_ros.core OK from /tmp and the repo root)"
)

_n3d_sourced=0
(return 0 2>/dev/null) && _n3d_sourced=1
# Called bare (not under `if`/`||`): bash ignores `set -e` inside functions called from a condition. A caller that
# runs with `set -e` (scripts/test.sh) therefore stops right here when setup fails.
_n3d_setup "$_n3d_repo" "$_n3d_venv"
_n3d_rc=$?
unset -f _n3d_setup
if [ "$_n3d_rc" -ne 0 ]; then
  if [ "$_n3d_sourced" = 1 ]; then
    unset _n3d_repo _n3d_venv _n3d_sourced
    return "$_n3d_rc"
  fi
  exit "$_n3d_rc"
fi
export N3D_VENV=$_n3d_venv
# Fast DDS would otherwise send multicast discovery off the machine; tests/demos stay on localhost.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
# The ROS wheels never set it, and ament_index lookups (interfaces, rmw) need it.
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$_n3d_venv:"*) ;;
  *) export AMENT_PREFIX_PATH=$_n3d_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH} ;;
esac
case ":$PATH:" in
  *":$_n3d_venv/bin:"*) ;;
  *) export PATH=$_n3d_venv/bin:$PATH ;;
esac
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE _n3d_repo _n3d_venv _n3d_sourced _n3d_rc
