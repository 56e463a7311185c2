"""Configuration read from environment variables, with defaults that match the local stack."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fapiao_runtime.workers import worker_index

LOCAL_KAFKA_BOOTSTRAP = "127.0.0.1:19092"
LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/fapiao"


def env_str(name: str, default: str) -> str:
    """Return the environment variable `name`, or `default` when unset or empty."""
    value = os.environ.get(name, "")
    return value if value else default


def env_int(name: str, default: int) -> int:
    """Return the environment variable `name` as an int; raise ValueError naming it if malformed."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"environment variable {name} must be a boolean, got {raw!r}")


def metrics_host() -> str:
    """The address /metrics listens on (FAPIAO_METRICS_HOST), as gRPC's is FAPIAO_GRPC_HOST."""
    return env_str("FAPIAO_METRICS_HOST", "127.0.0.1")


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings every service process shares.

    service_name: used in logs, the outbox producer name and default consumer groups.
    db_schema: the PostgreSQL schema owned by this service (one schema per service).
    topic_prefix: prepended to every topic name, so tests and parallel stacks never collide.
    """

    service_name: str
    kafka_bootstrap: str
    database_url: str
    db_schema: str
    grpc_host: str
    grpc_port: int
    topic_prefix: str
    log_level: str
    db_pool_max_size: int
    metrics_port: int
    # Set in the worker processes of a service run as several (fapiao_runtime.workers): its ports are
    # bound with SO_REUSEPORT, shared with the other workers.
    reuse_port: bool = False

    @classmethod
    def from_env(cls, service_name: str, default_grpc_port: int, db_schema: str | None = None) -> RuntimeConfig:
        """Build the config for `service_name`; FAPIAO_* variables override the local-stack defaults."""
        return cls(
            service_name=service_name,
            kafka_bootstrap=env_str("FAPIAO_KAFKA_BOOTSTRAP", LOCAL_KAFKA_BOOTSTRAP),
            database_url=env_str("DATABASE_URL", LOCAL_DATABASE_URL),
            db_schema=env_str("FAPIAO_DB_SCHEMA", db_schema or service_name),
            grpc_host=env_str("FAPIAO_GRPC_HOST", "127.0.0.1"),
            grpc_port=env_int("FAPIAO_GRPC_PORT", default_grpc_port),
            topic_prefix=env_str("FAPIAO_TOPIC_PREFIX", ""),
            log_level=env_str("FAPIAO_LOG_LEVEL", "INFO"),
            db_pool_max_size=env_int("FAPIAO_DB_POOL_MAX_SIZE", 20),
            metrics_port=env_int("FAPIAO_METRICS_PORT", 0),
            reuse_port=worker_index() is not None,
        )

    def topic(self, name: str) -> str:
        """Full topic name for the logical topic `name` (see fapiao_runtime.topics)."""
        return f"{self.topic_prefix}{name}"
