#!/usr/bin/env bash
# Installs what `make demo` and `make test` need, once: Debian packages (as root), a venv in .venv,
# the Python packages from the hashed locks in requirements/. Re-running is cheap: a stamp keyed on
# pyproject.toml, the locks and this script skips the pip work.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}

# docker.io + debootstrap: tests/deploy/test_compose.py builds the images on a local Debian base and runs the stack.
# chromium: the browser tests (OHIF, the status page).
debs=(orthanc orthanc-python orthanc-dicomweb dcmtk dicom3tools docker-compose docker.io debootstrap pixelmed-apps chromium)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A policy-rc.d for the length of this install keeps the packaged Orthanc service from starting
    # (hexnode starts its own on loopback); one the machine already had is left alone.
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
      own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" python3-venv >/dev/null || rc=$?
    [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ "${rc:-0}" = 0 ] || exit "$rc"
  else
    echo "bootstrap: missing Debian packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.bootstrap-stamp"
want=$(cat pyproject.toml requirements/*.lock scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The locks (requirements/, written by scripts/lock.sh) pin every package and the sha256 of its
  # files; --require-hashes makes pip refuse anything else, so nothing floats to whatever is current.
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  # 1. pip, setuptools, wheel, numpy, versioneer: what the builds below import from the venv
  "${pip[@]}" --require-hashes -r requirements/build.lock
  # 2. everything else. pyradiomics is an sdist whose setup.py imports numpy: it is built without
  #    build isolation against step 1 (an isolated build would fetch unpinned build deps anyway).
  #    torch==2.13.0+cpu is the CPU wheel pip finds through its find-links on this kind of machine.
  if ! "${pip[@]}" --require-hashes --no-build-isolation -r requirements/dev.lock; then
    echo "bootstrap: pip could not install requirements/dev.lock (its error is above). torch 2.13.0+cpu" \
         "comes from pip's find-links (PIP_FIND_LINKS=<folder with torch-2.13.0+cpu-cp311-*.whl>); a hash" \
         "mismatch means the file served is not the locked one (docs/operations.md, Dependencies)" >&2
    exit 1
  fi
  # 3. hexnode itself, editable: a folder has no hash, and its dependencies are all in already
  "${pip[@]}" --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# OHIF (the demo's web viewer, hexnode/viewer.py): the prebuilt @ohif/app from the npm registry,
# pinned, once, into the ignored var/ohif/ (no build step; ~200 MB unpacked).
OHIF_VERSION=3.13.2
ohif_dir="var/ohif/app-$OHIF_VERSION"
if [ ! -f "$ohif_dir/dist/index.html" ]; then
  if ! command -v npm >/dev/null; then
    # a fresh Debian machine has no Node.js: Debian's npm brings it (a machine with its own
    # Node.js, e.g. from nodesource, already has npm and is left alone)
    if [ "$(id -u)" = 0 ]; then
      echo "bootstrap: installing Debian package npm (to fetch OHIF)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
      echo "bootstrap: npm (Node.js) is needed to fetch OHIF; run as root or: sudo apt-get install npm" >&2
      exit 1
    fi
  fi
  echo "bootstrap: fetching @ohif/app@$OHIF_VERSION from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  rm -rf "$ohif_dir.partial" && mkdir -p "$ohif_dir.partial"
  tar -xzf "$tmp"/ohif-app-"$OHIF_VERSION".tgz -C "$ohif_dir.partial" --strip-components=1
  rm -rf "$ohif_dir" "$tmp" && mv "$ohif_dir.partial" "$ohif_dir"
fi
