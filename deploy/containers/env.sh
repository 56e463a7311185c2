# Sourced by the other scripts: the project's own podman configuration and storage, under build/containers,
# so nothing global is changed. `source deploy/containers/env.sh` gives a shell the same podman.
FAPIAO_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FAPIAO_CONTAINERS_DIR="${FAPIAO_CONTAINERS_DIR:-$FAPIAO_REPO_ROOT/build/containers}"
export CONTAINERS_CONF="$FAPIAO_CONTAINERS_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$FAPIAO_CONTAINERS_DIR/storage.conf"
# The image every service runs, the broker's and the database's, and the base they are built on.
FAPIAO_BASE_IMAGE="${FAPIAO_BASE_IMAGE:-localhost/fapiao-base:bookworm}"
FAPIAO_IMAGE="${FAPIAO_IMAGE:-localhost/fapiao:latest}"
FAPIAO_KAFKA_IMAGE="${FAPIAO_KAFKA_IMAGE:-localhost/fapiao-kafka:latest}"
FAPIAO_POSTGRES_IMAGE="${FAPIAO_POSTGRES_IMAGE:-localhost/fapiao-postgres:latest}"
export FAPIAO_REPO_ROOT FAPIAO_CONTAINERS_DIR FAPIAO_BASE_IMAGE FAPIAO_IMAGE FAPIAO_KAFKA_IMAGE FAPIAO_POSTGRES_IMAGE
