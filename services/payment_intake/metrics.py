"""payment_intake's own Prometheus metrics (served with the runtime's on FAPIAO_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PAYMENTS = Counter(
    "fapiao_intake_payments_total", "Payment commands by outcome (recorded, duplicate or a reason)", ["outcome"]
)
BATCH_SIZE = Histogram(
    "fapiao_intake_batch_size", "Payment commands per transaction", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500)
)
WEBHOOK_LATENCY = Histogram(
    "fapiao_intake_webhook_latency_seconds",
    "Webhook notification handling time, by HTTP status",
    ["status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
