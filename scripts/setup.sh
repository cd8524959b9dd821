#!/usr/bin/env bash
# Idempotent set-up: system packages, .venv with pinned wheels (ROS 2 Kilted + ML stack), colcon build.
# A second run only re-does a step whose inputs changed. Every failure names its step and the reason.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
VENV="$REPO/.venv"
APT_PACKAGES=(cmake g++ make git dataset-fashion-mnist iproute2)

step() { printf '\033[1m[setup] %s\033[0m\n' "$*"; }
fail() { printf '\033[31m[setup] FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

# 1. System packages (apt): only what is missing.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  [ "$(id -u)" = 0 ] && SUDO="" || SUDO="sudo"
  $SUDO apt-get update -qq || fail "apt-get update (no access to Debian's package registry?)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
else
  step "apt: all of ${APT_PACKAGES[*]} present"
fi

# 2. Python virtual environment (3.10+; the ROS 2 Kilted wheels are built for CPython 3.11).
PY=$(command -v python3.11 || command -v python3) || fail "no python3 on PATH"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || fail "$PY is $("$PY" -V 2>&1); the ROS 2 wheels need CPython 3.11"
if [ ! -x "$VENV/bin/python" ]; then
  step "venv: creating $VENV"
  "$PY" -m venv "$VENV" || fail "python -m venv (install python3-venv?)"
fi

# 3. Pinned wheels, re-installed only when requirements.txt / constraints.txt / setup.py change.
want=$(cat requirements.txt constraints.txt setup.py | sha256sum | cut -d' ' -f1)
stamp="$VENV/.eclm_ros_requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "pip: installing requirements.txt (pinned; ~1.5 GB, a few minutes cold)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt \
    || fail "pip install -r requirements.txt (see the pip error above)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    || fail "pip install -e . (the ROS-free core and the eclm-ros command)"
  echo "$want" > "$stamp"
else
  step "pip: requirements unchanged"
fi

# 4. colcon build (interfaces, Python package, executables, launch/config), when its inputs changed.
build_inputs() {
  git ls-files -co --exclude-standard -- package.xml CMakeLists.txt msg srv bin launch config eclm_ros 2>/dev/null \
    | LC_ALL=C sort
  cat package.xml CMakeLists.txt msg/* srv/* bin/*
}
want=$(build_inputs | sha256sum | cut -d' ' -f1)
stamp="$REPO/install/.eclm_ros_build"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "colcon: building eclm_ros (interfaces + Python + executables)"
  (
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    colcon --log-base log build --symlink-install --event-handlers console_cohesion- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
  ) || fail "colcon build (the CMake/rosidl error is above and in log/latest_build)"
  echo "$want" > "$stamp"
else
  step "colcon: build up to date"
fi
step "done. Use it with: source scripts/env.sh"
