#!/usr/bin/env bash
# CI: prove that each ROS 2 distro's robot requirements resolve, wheels only, for that distro's Python, glibc
# and apt numpy (pinned in the file), on x86_64 and aarch64: `pip download --only-binary=:all:` into a
# temporary folder, removed afterwards. aarch64 is checked without torch: on a Jetson torch is NVIDIA's wheel for
# its JetPack, installed first (the files say so), and PyPI's aarch64 torch is a 2.5 GB CUDA build no robot uses.
# pip is run by that distro's Python version (found on PATH or under pyenv): pip evaluates environment markers
# (e.g. opencv's `numpy>=1.23.5; python_version>="3.11"`) for the interpreter that runs it, whatever
# --python-version says, so a 3.11 pip judges a 3.10 requirement set wrongly.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# file  python  newest glibc of the distro's Ubuntu (22.04: 2.35, 24.04: 2.39)
CHECKS=("requirements-humble.txt 3.10 35" "requirements-jazzy.txt 3.12 39")
ARCHES=(x86_64 aarch64)

say() { printf '\033[1m[robot-requirements] %s\033[0m\n' "$*"; }
fail() { printf '\033[31m[robot-requirements] FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

find_python() {  # an interpreter of version $1 that runs, or nothing
  local v=$1 p
  for p in "$(command -v "python$v" 2>/dev/null)" "$(pyenv root 2>/dev/null)"/versions/"$v".*/bin/python \
           "$HOME"/.pyenv/versions/"$v".*/bin/python; do
    if [ -n "$p" ] && [ -x "$p" ] && "$p" -c "import sys, pip; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

platforms() {  # every manylinux tag a distro with glibc 2.$1 on $2 accepts
  local m
  for m in $(seq 17 "$1"); do printf -- '--platform manylinux_2_%s_%s ' "$m" "$2"; done
  printf -- '--platform manylinux2014_%s' "$2"
}

start=$SECONDS
for check in "${CHECKS[@]}"; do
  read -r file version glibc <<<"$check"
  py=$(find_python "$version")
  [ -n "$py" ] || fail "no Python $version with pip here (needed to resolve $file; pyenv install $version)"
  for arch in "${ARCHES[@]}"; do
    t0=$SECONDS
    dest=$(mktemp -d)
    reqs="$dest/requirements.txt"
    if [ "$arch" = aarch64 ]; then grep -v '^torch==' "$file" > "$reqs"; else cp "$file" "$reqs"; fi
    # shellcheck disable=SC2046
    if ! out=$("$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$version" \
        $(platforms "$glibc" "$arch") -d "$dest/wheels" -r "$reqs" 2>&1); then
      rm -rf "$dest"
      printf '%s\n' "$out" | grep -v "^WARNING: Location" >&2
      fail "$file does not resolve for Python $version on $arch (pip's reason above)"
    fi
    wheels=$(find "$dest/wheels" -name '*.whl' | wc -l)
    mb=$(du -sm "$dest/wheels" | cut -f1)
    np=$(find "$dest/wheels" -name 'numpy-*.whl' -printf '%f\n' | cut -d- -f2)
    rm -rf "$dest"
    say "$file: resolves for Python $version, glibc <= 2.$glibc, $arch$([ "$arch" = aarch64 ] && echo " (without torch)"): $wheels wheels, ${mb} MB, numpy $np ($((SECONDS - t0)) s)"
  done
done
say "all robot requirements resolve ($((SECONDS - start)) s)"
