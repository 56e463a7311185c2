"""What the CLI knows about the local stack: its environment, endpoints and the payment platform's keys.

Commands that act on the local stack load the same environment the stack gives its processes
(database URL, ledger keys, secrets) so the services' own operator modules work unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fapiao_stack.config import service_address
from fapiao_stack.paths import RUN_DIR, STATE_FILE
from fapiao_stack.services import INTAKE_WEBHOOK_PORT, REIMBURSEMENT_TLS_PORT, local_services

PLATFORM_DIR = RUN_DIR / "platform"
PKI_DIR = RUN_DIR / "pki"


def load_stack_environment() -> dict[str, str]:
    """Put the running stack's variables into os.environ (explicit variables win); return them.

    Raises ConnectionError when `fapiao up` has not run.
    """
    if not STATE_FILE.exists():
        raise ConnectionError("the local stack is not running: start it with `fapiao up`")
    from fapiao_stack.config import stack_environment

    state = json.loads(STATE_FILE.read_text())
    env = stack_environment(RUN_DIR, state["kafka_bootstrap"], state["database_url"], host_addresses())
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return env


def host_addresses() -> dict[str, str]:
    """Host name -> address when the running stack is the multi-host cluster (`fapiao up --hosts`: the
    commands then run on its ops host, `ip netns exec fapiao-ops fapiao ...`); empty for loopback."""
    if not STATE_FILE.exists():
        return {}
    state = json.loads(STATE_FILE.read_text())
    if state.get("mode") != "hosts":
        return {}
    return {host: entry["address"] for host, entry in state["hosts"].items()}


def merchant_admin_address() -> str | None:
    """Where the running stack serves MerchantAdminService (its stack.json's `merchant_admin`), or None
    for a stack that records none."""
    if not STATE_FILE.exists():
        return None
    address = json.loads(STATE_FILE.read_text()).get("merchant_admin")
    return str(address) if address else None


def grpc_address(service: str) -> str:
    for spec in local_services():
        if spec.name == service:
            return f"{service_address(spec.name, host_addresses())}:{spec.port}"
    raise KeyError(service)


def ledger_addresses() -> list[str]:
    addresses = host_addresses()
    return [f"{service_address(s.name, addresses)}:{s.port}" for s in local_services() if s.module == "ledger"]


def gateway_url() -> str:
    return f"http://{grpc_address('gateway')}"


def intake_webhook_url() -> str:
    return f"http://{service_address('payment_intake', host_addresses())}:{INTAKE_WEBHOOK_PORT}"


def reimbursement_address() -> str:
    return f"{service_address('reimbursement', host_addresses())}:{REIMBURSEMENT_TLS_PORT}"


@dataclass(frozen=True)
class MerchantCredentials:
    """What the payment platform holds for a merchant: the APIv3 key and its own signing key."""

    merchant_id: str
    apiv3_key: str
    platform_serial: str
    platform_key_file: Path


def _credentials_file(merchant_id: str) -> Path:
    return PLATFORM_DIR / f"merchant-{merchant_id}.json"


def save_merchant_credentials(credentials: MerchantCredentials) -> None:
    """Store with mode 0600 under .run/platform (never in the repository, never printed by `pay`)."""
    PLATFORM_DIR.mkdir(parents=True, exist_ok=True)
    PLATFORM_DIR.chmod(0o700)
    path = _credentials_file(credentials.merchant_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {
                "merchant_id": credentials.merchant_id,
                "apiv3_key": credentials.apiv3_key,
                "platform_serial": credentials.platform_serial,
                "platform_key_file": str(credentials.platform_key_file),
            },
            handle,
        )


def load_merchant_credentials(merchant_id: str) -> MerchantCredentials:
    path = _credentials_file(merchant_id)
    if not path.exists():
        raise LookupError(
            f"unknown merchant {merchant_id}: this machine holds no platform keys for it; register it first with"
            " `fapiao merchant add`"
        )
    data = json.loads(path.read_text())
    return MerchantCredentials(
        data["merchant_id"], data["apiv3_key"], data["platform_serial"], Path(data["platform_key_file"])
    )
