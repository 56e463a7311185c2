#!/usr/bin/env bash
# The compose stack's init step: keys, certificates and env files under FAPIAO_COMPOSE_DIR (default
# build/compose), generated inside the service image by deploy/containers/compose_init.py (no Python
# needed on the host). Keeps what exists. FAPIAO_PORT_OFFSET shifts every port, as for `make up`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../containers/env.sh"
out="${FAPIAO_COMPOSE_DIR:-$FAPIAO_REPO_ROOT/build/compose}"
mkdir -p "$out"
podman run --rm --network none --health-cmd none --user 0 --entrypoint python --env "FAPIAO_PORT_OFFSET=${FAPIAO_PORT_OFFSET:-0}" \
	--volume "$(cd "$out" && pwd):/out" "$FAPIAO_IMAGE" /app/deploy/containers/compose_init.py /out --owner 10001
