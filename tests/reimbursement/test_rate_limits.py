"""Unit tests of the per-organisation token bucket and of the outcome mapping."""

from __future__ import annotations

import time

import pytest
from fapiao_runtime.errors import FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from reimbursement.handlers import rejection_error
from reimbursement.rate_limits import OrganisationRateLimiter

pytestmark = pytest.mark.unit


def test_bucket_allows_a_burst_then_refuses_then_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = OrganisationRateLimiter(per_second=3)
    for _ in range(3):
        limiter.take("org-a")
    with pytest.raises(ResourceExhausted) as refused:
        limiter.take("org-a")
    assert refused.value.reason == "RATE_LIMITED"
    limiter.take("org-b")  # buckets are per organisation
    now[0] += 1 / 3
    limiter.take("org-a")
    with pytest.raises(ResourceExhausted):
        limiter.take("org-a")


@pytest.mark.parametrize(
    ("ledger_reason", "error_type", "reason"),
    [
        ("ALREADY_LOCKED", FailedPrecondition, "ALREADY_LOCKED"),
        ("ALREADY_CLOSED", FailedPrecondition, "ALREADY_REIMBURSED"),
        ("CANCELLED", FailedPrecondition, "CANCELLED"),
        ("NOT_LOCK_HOLDER", PermissionDenied, "NOT_LOCK_HOLDER"),
        ("ORGANISATION_NOT_ALLOWED", PermissionDenied, "NOT_INVOICE_BUYER"),
        ("UNKNOWN_INVOICE", NotFound, "INVOICE_NOT_FOUND"),
        ("SOMETHING_NEW", FailedPrecondition, "LEDGER_REJECTED"),
    ],
)
def test_ledger_rejections_map_to_statuses(ledger_reason: str, error_type: type, reason: str) -> None:
    error = rejection_error(ledger_reason, "26441000000000000001")
    assert isinstance(error, error_type) and error.reason == reason
    assert "26441000000000000001" in error.message or reason == "LEDGER_REJECTED"
