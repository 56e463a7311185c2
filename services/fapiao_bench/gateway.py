"""Gateway benchmark (webhook forwarding): see gateway.bench."""

from gateway.bench import run

__all__ = ["run"]
