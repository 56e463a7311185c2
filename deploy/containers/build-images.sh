#!/usr/bin/env bash
# Build the images from deploy/containers/Containerfile with podman: $FAPIAO_IMAGE (every service),
# $FAPIAO_KAFKA_IMAGE and $FAPIAO_POSTGRES_IMAGE. BASE=python:3.11-slim builds from a registry's image
# instead of the local debootstrap one (made first when missing). The Kafka jars come from Maven
# Central through `make kafka-jars` (.cache/kafka/libs); pip is given this machine's CA bundle.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
"$here/runtime.sh" >/dev/null
base="${BASE:-$FAPIAO_BASE_IMAGE}"
if [ "$base" = "$FAPIAO_BASE_IMAGE" ]; then "$here/base-image.sh"; fi
if [ ! -e "$FAPIAO_REPO_ROOT/.cache/kafka/libs/.stamp" ]; then
	echo ".cache/kafka/libs is missing: run 'make kafka-jars' first" >&2
	exit 1
fi
ca=/etc/ssl/certs/ca-certificates.crt
volumes=()
if [ -f "$ca" ]; then volumes+=(--volume "$ca:/run/host-ca.crt:ro"); fi
build() { # target image
	local started=$SECONDS
	podman build --quiet --format docker --network host --layers --build-arg "BASE=$base" "${volumes[@]}" \
		--file "$here/Containerfile" --ignorefile "$here/containerignore" --target "$1" --tag "$2" \
		"$FAPIAO_REPO_ROOT" >/dev/null
	echo "$2 ($1) built in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$2" |
		awk '{printf "%d MB", $1 / 1e6}')"
}
build app "$FAPIAO_IMAGE"
build kafka "$FAPIAO_KAFKA_IMAGE"
build postgres "$FAPIAO_POSTGRES_IMAGE"
