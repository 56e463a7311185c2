#!/usr/bin/env bash
# The base image, made without a container registry: `debootstrap --variant=minbase bookworm` from
# Debian's archive, imported with `podman import` as $FAPIAO_BASE_IMAGE (localhost/fapiao-base:bookworm).
# Idempotent: does nothing when the image exists (FORCE=1 rebuilds it). Root (debootstrap needs it).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
"$here/runtime.sh" >/dev/null

if [ -z "${FORCE:-}" ] && podman image exists "$FAPIAO_BASE_IMAGE"; then
	echo "$FAPIAO_BASE_IMAGE exists"
	exit 0
fi
# The archive this machine's apt uses (deb822 or one-line sources), else Debian's own.
mirror="${FAPIAO_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null |
	sed -n 's/^URIs: *//p;s/^deb \(\[[^]]*\] \)\?\(http[^ ]*\) bookworm .*/\2/p' | head -1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$FAPIAO_CONTAINERS_DIR/rootfs-bookworm"
rm -rf "$root"
trap 'rm -rf "$root"' EXIT
echo "debootstrap --variant=minbase bookworm from $mirror (a few minutes) ..."
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$FAPIAO_CONTAINERS_DIR/debootstrap.log" 2>&1 || {
	tail -20 "$FAPIAO_CONTAINERS_DIR/debootstrap.log" >&2
	exit 1
}
# Security updates too, as a registry's debian:bookworm has them; no apt caches in the image.
cat >"$root/etc/apt/sources.list" <<LIST
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
LIST
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" --numeric-owner -c . |
	podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$FAPIAO_BASE_IMAGE" >/dev/null
echo "$FAPIAO_BASE_IMAGE imported"
