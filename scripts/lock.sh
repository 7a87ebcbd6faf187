#!/usr/bin/env bash
# Writes the hashed lock files in requirements/ (uv pip compile --generate-hashes; Python 3.11 on
# linux x86_64, manylinux_2_28 — Debian bookworm's python3 and the image's):
#   dev.lock           runtime + train + test extras + build.in: `make install` / `make test` / CI
#   build.lock         build.in only: installed first, so the builds without isolation find them
#   pyradiomics.lock   pyradiomics alone (an sdist built without isolation): the image's build stage
#   runtime.lock       runtime + build.in: deploy/Dockerfile
#   runtime-cuda.lock  runtime + onnxruntime-gpu[cuda,cudnn]: deploy/Dockerfile's GPU variant
# dev.lock is resolved first and the others are constrained to its pins, so the image runs the
# versions the tests ran. A pin already in a lock is kept; `scripts/lock.sh --upgrade` (or
# `--upgrade-package NAME`) moves to the newest releases the ranges in pyproject.toml allow.
# Run it when pyproject.toml's dependencies change, and with --upgrade for security fixes; then
# `make test` and commit requirements/ with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}

# torch==2.13.0 in the train extra is the CPU build, a wheel on this kind of machine's disk that
# pip finds through its find-links; the lock pins that file's hash. uv reads no pip config: point
# it at the folder (PyPI's torch of the same version is the CUDA build, several GB more).
if ! compgen -G "$TORCH_WHEELS/torch-2.13.0+cpu-cp311-*.whl" >/dev/null; then
  echo "lock: no torch-2.13.0+cpu wheel for Python 3.11 in $TORCH_WHEELS (set TORCH_WHEELS)" >&2
  exit 1
fi
uv=${UV:+$(realpath "$UV")}
if [ -z "$uv" ]; then
  tool=var/lock-tool  # ignored, like all of var/
  if ! "$tool/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION "; then
    python3 -m venv "$tool"
    "$tool/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  uv=$PWD/$tool/bin/uv
fi
compile=("$uv" pip compile --quiet --generate-hashes --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --find-links "$TORCH_WHEELS"
         --custom-compile-command "scripts/lock.sh" "$@")
cd requirements
"${compile[@]}" ../pyproject.toml build.in --extra train --extra test -o dev.lock
"${compile[@]}" build.in -c dev.lock -o build.lock
echo pyradiomics | "${compile[@]}" - --no-deps -c dev.lock -o pyradiomics.lock
"${compile[@]}" ../pyproject.toml build.in -c dev.lock -o runtime.lock
"${compile[@]}" ../pyproject.toml build.in cuda.in -c dev.lock -o runtime-cuda.lock
