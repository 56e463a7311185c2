#!/usr/bin/env bash
# A container runtime on this machine: Debian's podman with the runc runtime (and catatonit for pods), configured for the project
# under build/containers (containers.conf, storage.conf, image storage). Idempotent; installs podman,
# runc and debootstrap with apt-get when they are missing (root).
#
# runc, not crun: crun's setrlimit is refused in some sandboxes; default_ulimits = [] for the same reason.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

missing=()
# catatonit: the init of the pods' infra container (podman builds its pause image from it).
for tool in podman:podman runc:runc debootstrap:debootstrap catatonit:catatonit; do
	command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "missing: ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}'" >&2
		exit 1
	fi
	echo "installing ${missing[*]} (apt-get) ..."
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" uidmap slirp4netns fuse-overlayfs \
		netavark aardvark-dns iptables containernetworking-plugins >/dev/null
fi

mkdir -p "$FAPIAO_CONTAINERS_DIR/storage" "$FAPIAO_CONTAINERS_DIR/run" "$FAPIAO_CONTAINERS_DIR/tmp"
# overlay when the kernel offers it (much smaller and faster than vfs), vfs otherwise.
driver=vfs
if grep -qw overlay /proc/filesystems; then driver=overlay; fi
driver="${FAPIAO_STORAGE_DRIVER:-$driver}"
cat >"$CONTAINERS_STORAGE_CONF.tmp" <<CONF
# Written by deploy/containers/runtime.sh: the project's image and container storage.
[storage]
driver = "$driver"
graphroot = "$FAPIAO_CONTAINERS_DIR/storage"
runroot = "$FAPIAO_CONTAINERS_DIR/run"
CONF
mv "$CONTAINERS_STORAGE_CONF.tmp" "$CONTAINERS_STORAGE_CONF"
cat >"$CONTAINERS_CONF.tmp" <<CONF
# Written by deploy/containers/runtime.sh: the project's podman settings (CONTAINERS_CONF).
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "$FAPIAO_CONTAINERS_DIR/tmp"
CONF
mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' >/dev/null
echo "podman $(podman version --format '{{.Client.Version}}') with $(podman info --format '{{.Host.OCIRuntime.Name}}'), storage $(podman info --format '{{.Store.GraphDriverName}}') in $FAPIAO_CONTAINERS_DIR"
