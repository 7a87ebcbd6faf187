#!/usr/bin/env bash
# Makes the Debian bookworm base image every hexnode image builds FROM, on a host that can reach a
# Debian mirror but no image registry: debootstrap (minbase) into a scratch folder, `docker import`.
#   deploy/base-image.sh [TAG]            (default hexnode-base:bookworm; prints the tag)
# A site with a registry skips this and builds with --build-arg BASE_IMAGE=debian:bookworm-slim.
# An existing TAG is kept: re-importing would give it a new ID and throw away every cached layer
# built on it. `docker rmi TAG` first to refresh it (security updates come in through the images'
# own apt-get anyway, from bookworm-security).
# Needs root (debootstrap), debootstrap and docker. The mirror is the one apt already uses here
# (/etc/apt/sources.list.d/debian.sources or sources.list), or $DEBIAN_MIRROR / $DEBIAN_SECURITY_MIRROR.
set -euo pipefail
TAG=${1:-hexnode-base:bookworm}
DOCKER=${DOCKER:-docker}

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

apt_uris() {  # every mirror URI apt is configured with, deb822 and one-line formats
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'
}
mirror=${DEBIAN_MIRROR:-$(apt_uris | grep -E '/debian/?$' | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-$(apt_uris | grep -E '/debian-security/?$' | head -n1 || true)}
security=${security:-http://deb.debian.org/debian-security}

scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/hexnode-base.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
echo "base-image: debootstrap bookworm minbase from $mirror" >&2
debootstrap --variant=minbase bookworm "$scratch/root" "$mirror" >"$scratch/debootstrap.log" 2>&1 \
  || { tail -n 30 "$scratch/debootstrap.log" >&2; exit 1; }

root=$scratch/root
# What debian:bookworm-slim carries too: updates and security suites, no package cache kept in layers.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*

tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase bookworm $mirror" - "$TAG" >/dev/null
echo "$TAG"
