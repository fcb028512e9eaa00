#!/usr/bin/env bash
# Builds the Python bindings of the vendored simulation_interfaces package
# (interfaces/simulation_interfaces, the ROS 2 standard simulator services) into the
# pip-wheels venv, where no wheel of it exists: `from simulation_interfaces.srv import
# ResetSimulation` then works from "$VENV/bin/python" and from nodes it starts.
#
# Only for the venv that tools/ensure_venv.sh makes without a ROS 2 distro ("wheels" mode);
# with a distro sourced, install ros-$ROS_DISTRO-simulation-interfaces instead.
#
# It runs the ROS 2 Kilted tool chain from pip (ament_cmake + rosidl, pinned below) with
# CMake and a C/C++ compiler, installing into the venv prefix like the ROS wheels themselves
# (libraries in $VENV/lib, Python package in site-packages). Skips the build when the
# interface files and this script are unchanged since the last successful one. Quiet on
# success; on failure it says which step failed and shows the end of that step's log.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
src=interfaces/simulation_interfaces
# Build-time tools missing from requirements/ros-wheels.txt (the message wheels carry only
# the runtime). Their pip metadata is incomplete: each of these was found missing by CMake.
build_deps=(
  ros-kilted-ament-cmake==2.7.3
  ros-kilted-ament-cmake-include-directories==2.7.3
  ros-kilted-ament-cmake-ros-core==0.14.5
  ros-kilted-ament-package==0.17.2
  ros-kilted-rosidl-default-generators==1.7.1
  ros-kilted-rosidl-core-generators==0.3.1
  catkin-pkg==1.1.1
)
cmake_pip=cmake==3.31.10   # only when the machine has no CMake >= 3.20

die() { echo "build_interfaces: $*" >&2; exit 1; }

[ -x "$venv/bin/python" ] || die "no venv at $venv (run tools/ensure_venv.sh first)"
if [ -f "$venv/.sindyrl-ros-mode" ] && ! grep -qx 'mode=wheels' "$venv/.sindyrl-ros-mode"; then
  die "$venv uses a ROS 2 distro; install ros-\$ROS_DISTRO-simulation-interfaces instead"
fi
venv_abs=$(cd "$venv" && pwd)
py="$venv_abs/bin/python"

check_import() {
  "$py" -c 'from simulation_interfaces.srv import (GetSimulationState, ResetSimulation,
SetSimulationState, StepSimulation)' >/dev/null 2>&1
}

digest=$(for f in tools/build_interfaces.sh $(find "$src" -type f | LC_ALL=C sort); do
  echo "$f"; cat "$f"
done | sha256sum | cut -c1-16)
stamp="$venv_abs/.simulation-interfaces-built"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && check_import; then
  exit 0
fi

build="$venv_abs/.simulation_interfaces-build"
rm -rf "$build"
mkdir -p "$build"
log="$build/build.log"
step() {  # step NAME COMMAND...: run quietly, show the log's end if it fails
  local name=$1; shift
  echo "== $name: $*" >> "$log"
  if ! "$@" >> "$log" 2>&1; then
    echo "build_interfaces: $name failed; end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

step 'pip install (build tools)' \
  "$py" -m pip install --quiet --disable-pip-version-check "${build_deps[@]}"

# CMake: the machine's when recent enough (Debian 12: 3.25), else a pinned one from pip.
cmake=$(command -v cmake || true)
if [ -z "$cmake" ] || ! "$cmake" --version | head -n1 |
    awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 20))}'; then
  step 'pip install (cmake)' "$py" -m pip install --quiet --disable-pip-version-check "$cmake_pip"
  cmake="$venv_abs/bin/cmake"
fi

# A C/C++ compiler, make and Python's headers; as root on Debian they are installed here.
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
[ -f "$inc/Python.h" ] || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step 'apt-get update' apt-get update -q
    step "apt-get install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -f "$inc/Python.h" ] || die "no Python.h in $inc (the venv's Python has no headers)"
  else
    die "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
  fi
fi

# Only the venv prefix: a distro's CMAKE_PREFIX_PATH/AMENT_PREFIX_PATH must not mix in.
run_cmake() {
  env -u CMAKE_PREFIX_PATH AMENT_PREFIX_PATH="$venv_abs" PATH="$venv_abs/bin:$PATH" \
    "$cmake" "$@"
}
step 'cmake configure' run_cmake -S "$src" -B "$build" \
  -DCMAKE_PREFIX_PATH="$venv_abs" -DCMAKE_INSTALL_PREFIX="$venv_abs" \
  -DPython3_EXECUTABLE="$py" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF
step 'cmake build' run_cmake --build "$build" --parallel "$(nproc 2>/dev/null || echo 2)"
step 'cmake install' run_cmake --install "$build"
step 'import check' "$py" -c 'from simulation_interfaces.srv import (GetSimulationState,
ResetSimulation, SetSimulationState, StepSimulation); from simulation_interfaces.msg import (
Result, SimulationState); from rclpy.type_support import check_for_type_support as c
for t in (GetSimulationState, ResetSimulation, SetSimulationState, StepSimulation): c(t)'

echo "$digest" > "$stamp"
rm -rf "$build"
