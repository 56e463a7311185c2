"""Prometheus metrics shared by every service, served on FAPIAO_METRICS_HOST:FAPIAO_METRICS_PORT when
the port is set (the host defaults to 127.0.0.1; set it to the pod's or host's address, or 0.0.0.0, for a
Prometheus elsewhere to scrape). docs/observability.md lists every metric."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from fapiao_runtime.config import metrics_host

# gRPC server metrics under the names of go-grpc-prometheus / py-grpc-prometheus, which ready-made gRPC
# dashboards query. grpc_type: unary, client_stream, server_stream or bidi_stream; grpc_code: the status
# as Go's codes spell it (OK, InvalidArgument, Unavailable, ...).
_GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server", _GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code", [*_GRPC_LABELS, "grpc_code"]
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (a stream: its whole life)",
    _GRPC_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GRPC_MSG_RECEIVED = Counter("grpc_server_msg_received_total", "Request messages received", _GRPC_LABELS)
GRPC_MSG_SENT = Counter("grpc_server_msg_sent_total", "Response messages sent", _GRPC_LABELS)
REJECTIONS = Counter("fapiao_rejections_total", "Requests rejected with a domain reason", ["method", "reason"])
# Every worker of a service (fapiao_runtime.workers) reads the same backlog and lag: their maximum,
# not their sum, when the workers' metrics are served together.
OUTBOX_BACKLOG = Gauge("fapiao_outbox_backlog", "Outbox rows not yet published", multiprocess_mode="livemax")
OUTBOX_PUBLISHED = Counter("fapiao_outbox_published_total", "Outbox rows published to Kafka")
CONSUMER_LAG = Gauge(
    "fapiao_consumer_lag",
    "Records of a partition not yet consumed: its end offset minus the consumer's position",
    ["topic", "partition", "group"],
    multiprocess_mode="livemax",
)
EVENTS_APPLIED = Counter("fapiao_events_applied_total", "Events applied by idempotent consumers", ["consumer"])
EVENTS_DEAD_LETTERED = Counter("fapiao_events_dead_lettered_total", "Events moved to dead_letters", ["consumer"])


def serve_metrics(port: int, host: str | None = None) -> Any:
    """Expose /metrics on `host` (default: metrics_host(), FAPIAO_METRICS_HOST) and `port` (0 disables);
    returns the HTTP server (None when disabled)."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host or metrics_host())
    return server
