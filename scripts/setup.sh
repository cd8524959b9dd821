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
want=$(cat requirements.txt requirements-nodeps.txt requirements-ray.txt constraints.txt setup.py | sha256sum | cut -d' ' -f1)
stamp="$VENV/.eclm_ros_requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "pip: installing requirements.txt (pinned; ~1.5 GB, a few minutes cold)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt \
    || fail "pip install -r requirements.txt (see the pip error above)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt \
    || fail "pip install --no-deps -r requirements-nodeps.txt (see the pip error above)"
  # optional for the product (the cloud's learning on Ray workers); installed here so the tests cover it
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-ray.txt -c constraints.txt \
    || fail "pip install -r requirements-ray.txt (see the pip error above)"
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

# 5. launch + launch_ros (pure Python, put on the venv's path by a .pth file), composition_interfaces (which
#    launch_ros imports) and vision_msgs (colcon-built into install/) from the unmodified upstream sources in
#    ../shared/ros2-src: no registry this machine reaches has them. A robot gets them from apt
#    (ros-<distro>-launch-ros, ros-<distro>-vision-msgs).
#    Looked for in $ECLM_ROS2_SRC, beside the checkout, then in the team's shared folder (a CI clone lives
#    elsewhere).
has_ros2_src() { [ -d "$1/launch/launch/launch" ] && [ -d "$1/rcl_interfaces/composition_interfaces" ] \
  && [ -d "$1/vision_msgs/vision_msgs" ]; }
ROS2_SRC=${ECLM_ROS2_SRC:-}
if [ -z "$ROS2_SRC" ]; then
  for candidate in "$REPO/../shared/ros2-src" /work/shared/ros2-src; do
    if has_ros2_src "$candidate"; then ROS2_SRC=$candidate; break; fi
  done
  ROS2_SRC=${ROS2_SRC:-$REPO/../shared/ros2-src}
fi
if ! has_ros2_src "$ROS2_SRC"; then
  step "launch: SKIPPED: no ROS 2 launch sources in $ROS2_SRC (set ECLM_ROS2_SRC); the launch tests will skip"
else
  ROS2_SRC=$(cd "$ROS2_SRC" && pwd)
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  want=$(printf '%s\n' "$ROS2_SRC/launch/launch" "$ROS2_SRC/launch/launch_xml" "$ROS2_SRC/launch/launch_yaml" \
    "$ROS2_SRC/launch_ros/launch_ros")
  if [ "$(cat "$site/eclm_ros2_src.pth" 2>/dev/null)" != "$want" ]; then
    step "launch: putting launch, launch_xml, launch_yaml, launch_ros from $ROS2_SRC on the venv's path"
    echo "$want" > "$site/eclm_ros2_src.pth"
  else
    step "launch: launch sources on the path"
  fi
  # The wheels' CMake exports name their build host's include folders; a third-party package cannot rewrite
  # them after the fact as our CMakeLists does, so point them, once, at this interpreter's folders.
  stamp="$VENV/.eclm_ros_cmake_includes"
  if [ ! -f "$stamp" ]; then
    step "cmake: pointing the wheels' exported include folders at this Python and NumPy"
    py_inc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_inc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
    grep -l '/opt/python/cp311-cp311/' "$VENV"/share/*/cmake/*.cmake 2>/dev/null | while read -r f; do
      sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
        -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g" "$f"
    done
    touch "$stamp"
  fi
  # composition_interfaces (launch_ros imports it) and vision_msgs (the edge's standard outputs), built by colcon
  interfaces=("$ROS2_SRC/rcl_interfaces/composition_interfaces" "$ROS2_SRC/vision_msgs/vision_msgs")
  want=$(find "${interfaces[@]}" -type f \( -name '*.msg' -o -name '*.srv' -o -name package.xml \
    -o -name CMakeLists.txt \) | LC_ALL=C sort | xargs cat | sha256sum)
  stamp="$REPO/install/.ros2_src_interfaces_build"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "colcon: building composition_interfaces and vision_msgs from $ROS2_SRC (about two minutes)"
    (
      # shellcheck disable=SC1091
      . "$VENV/bin/activate"
      export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
      colcon --log-base log build --base-paths "${interfaces[@]}" \
        --build-base build/ros2-src --event-handlers console_cohesion- summary+ \
        --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
    ) || fail "colcon build composition_interfaces, vision_msgs (the CMake error is above and in log/latest_build)"
    echo "$want" > "$stamp"
  else
    step "colcon: composition_interfaces and vision_msgs up to date"
  fi
fi
step "done. Use it with: source scripts/env.sh"
