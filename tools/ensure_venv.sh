#!/usr/bin/env bash
# Creates .venv on first use and reinstalls only when the requirements change.
#
# With a ROS 2 distro sourced (ROS_DISTRO set and rclpy importable) the venv sees the
# distro's rclpy and message packages (system site packages) instead of the pip wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${VENV:-.venv}
extra=()
built=()
for arg in "$@"; do extra+=("$arg"); done

if [ -n "${ROS_DISTRO:-}" ] && "$python" -c 'import rclpy' >/dev/null 2>&1; then
  mode="distro-${ROS_DISTRO}"
  requirements=(requirements/base.txt requirements/test.txt)
else
  mode=wheels
  requirements=(requirements/base.txt requirements/ros-wheels.txt requirements/test.txt)
  # No wheel of simulation_interfaces: tools/build_interfaces.sh builds it from these files.
  built=(tools/build_interfaces.sh $(find interfaces/simulation_interfaces -type f | LC_ALL=C sort))
fi
requirements+=("${extra[@]}")

digest=$(cat "${requirements[@]}" "${built[@]}" setup.py setup.cfg package.xml | sha256sum | cut -c1-16)
stamp="$venv/.sindyrl-ros-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$mode $digest" ]; then
  exit 0
fi

if [ -d "$venv" ] && ! grep -q "^mode=$mode\$" "$venv/.sindyrl-ros-mode" 2>/dev/null; then
  echo "ensure_venv: $venv was made for another ROS setup; recreating it for '$mode'"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "ensure_venv: creating $venv ($mode)"
  if [ "$mode" = wheels ]; then
    "$python" -m venv "$venv"
  else
    "$python" -m venv --system-site-packages "$venv"
  fi
  echo "mode=$mode" > "$venv/.sindyrl-ros-mode"
fi

args=()
for r in "${requirements[@]}"; do args+=(-r "$r"); done
echo "ensure_venv: installing ${requirements[*]} (a first install takes about a minute)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
if [ "$mode" = wheels ]; then VENV="$venv" tools/build_interfaces.sh; fi
echo "$mode $digest" > "$stamp"
echo "ensure_venv: $venv ready"
