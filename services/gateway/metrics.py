"""Prometheus metrics of the gateway (served on GET /metrics of the gateway's own HTTP port)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class GatewayMetrics:
    """One registry per app, so several gateways in one test process never collide."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "fapiao_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fapiao_http_latency_seconds",
            "HTTP handler latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.webhook_upstream = Counter(
            "fapiao_gateway_webhook_upstream_total",
            "Webhook forwards by outcome (status code, timeout, unreachable)",
            ["outcome"],
            registry=self.registry,
        )
        self.claims = Counter(
            "fapiao_gateway_claims_total", "Claim form submissions by result", ["result"], registry=self.registry
        )
        self.verifications = Counter(
            "fapiao_gateway_verifications_total",
            "Verification verdicts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "fapiao_gateway_rate_limited_total", "Requests refused by the per-client rate limit", registry=self.registry
        )
