"""`fapiao up --hosts`: the whole stack across network namespaces, one payment from the webhook to the
validators' ledger, and `fapiao down --hosts` leaving nothing behind.

Starts 6 Kafka nodes, 5 PostgreSQL servers and 8 services, which takes minutes on a small machine: it
runs with FAPIAO_TEST_CLUSTER=1 (`make test-cluster`), as root.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.cluster import partition_leaders
from fapiao_stack.hosts import Network, netns_available
from fapiao_stack.paths import KAFKA_LIBS
from fapiao_stack.procs import pid_alive

pytestmark = pytest.mark.e2e

_AVAILABLE, _WHY_NOT = netns_available()


def _why_skipped() -> str | None:
    if os.environ.get("FAPIAO_TEST_CLUSTER") != "1":
        return "the whole multi-host cluster takes minutes: run with FAPIAO_TEST_CLUSTER=1 (make test-cluster)"
    if not _AVAILABLE:
        return f"multi-host tests need network namespaces: {_WHY_NOT}"
    return None


@pytest.mark.skipif(_why_skipped() is not None, reason=_why_skipped() or "")
@pytest.mark.timeout(1800)
def test_the_stack_serves_across_hosts_and_a_payment_goes_end_to_end(tmp_path: Path) -> None:
    prefix = f"fapiao-s{os.getpid() % 100000}-"
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "FAPIAO_PORT_OFFSET")}
    env.update({"FAPIAO_RUN_DIR": str(tmp_path / "run"), "FAPIAO_CLUSTER_PREFIX": prefix, "PYTHONUNBUFFERED": "1"})

    def fapiao(*args: str, on_ops: bool = False, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        launcher = ["ip", "netns", "exec", f"{prefix}ops"] if on_ops else []
        command = [*launcher, sys.executable, "-m", "fapiao_cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)

    pids: list[int] = []
    try:
        up = fapiao("up", "--hosts", timeout_s=1200)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert up.stdout.count("SERVING") == 8
        pids = [int(p.read_text()) for p in (tmp_path / "run" / "pids").glob("*.pid")]

        state = json.loads((tmp_path / "run" / "stack.json").read_text())
        assert [b["name"] for b in state["brokers"]] == ["kafka-1", "kafka-2", "kafka-3"]
        assert len(state["postgres"]) == 5 and len({p["address"] for p in state["postgres"]}) == 5
        assert len(set(state["services"].values())) == 8

        # The ledger's topic: three replicas, two of them in sync for a write to be acknowledged.
        described = subprocess.run(
            ["ip", "netns", "exec", f"{prefix}ops", "java", "-cp", f"{KAFKA_LIBS}/*",
             "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", state["kafka_bootstrap"],
             "--describe", "--topic", "ledger.tx.v1"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert described.returncode == 0, described.stdout + described.stderr
        assert "ReplicationFactor: 3" in described.stdout and "min.insync.replicas=2" in described.stdout

        network = Network(prefix=prefix)
        leaders = partition_leaders(network, state["kafka_bootstrap"], "ledger.tx.v1")
        assert leaders and set(leaders.values()) <= {"kafka-1", "kafka-2", "kafka-3"}

        status = fapiao("status", "--hosts", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert {entry["health"] for entry in report.values()} == {"SERVING"}
        kinds = [entry["kind"] for entry in report.values()]
        assert (kinds.count("controller"), kinds.count("broker"), kinds.count("postgres")) == (3, 3, 5)

        seller = "91440300MA5C00001" + uscc_check_char("91440300MA5C00001")
        buyer = "91440300MA5D00001" + uscc_check_char("91440300MA5D00001")
        added = fapiao("merchant", "add", "--merchant-id", "1900000001", "--legal-name", "深圳测试餐饮有限公司",
                       "--tax-id", seller, "--region-code", "44", on_ops=True)  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        org = fapiao("org", "add", "--tax-id", buyer, "--name", "深圳测试科技有限公司", on_ops=True)
        assert org.returncode == 0, org.stdout + org.stderr
        paid = fapiao("pay", "--merchant-id", "1900000001", "--amount-fen", "12345", on_ops=True)
        assert paid.returncode == 0, paid.stdout + paid.stderr
        claim_url = re.search(r"claim page: (\S+)", paid.stdout).group(1)  # type: ignore[union-attr]
        assert claim_url.startswith(state["gateway_url"])
        claimed = fapiao(
            "claim", claim_url, "--buyer-name", "深圳测试科技有限公司", "--buyer-tax-id", buyer, on_ops=True
        )
        assert claimed.returncode == 0 and "INVOICE_STATUS_ISSUED" in claimed.stdout, claimed.stdout + claimed.stderr
        number = re.search(r'"invoiceNumber": "(\d{20})"', claimed.stdout).group(1)  # type: ignore[union-attr]
        verified = fapiao("verify", "--invoice-number", number, on_ops=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["status"] == "INVOICE_LEDGER_STATUS_ISSUED"
        audit = fapiao("audit", on_ops=True)
        assert audit.returncode == 0 and "FINDINGS" not in audit.stdout, audit.stdout + audit.stderr

        # A broker and a validator killed with -9 come back with `restart --hosts`; the broker's log
        # shows both of its starts.
        for name in ("kafka-2", "ledger-3"):
            pid = int((tmp_path / "run" / "pids" / f"{name}.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            restarted = fapiao("restart", "--hosts", name, timeout_s=600)
            assert restarted.returncode == 0 and "SERVING" in restarted.stdout, restarted.stdout + restarted.stderr
            pids.append(int((tmp_path / "run" / "pids" / f"{name}.pid").read_text()))
        broker_log = (tmp_path / "run" / "logs" / "kafka-2.log").read_text()
        assert broker_log.count("Kafka Server started") == 2
        again = fapiao("status", "--hosts", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        paid_again = fapiao("pay", "--merchant-id", "1900000001", "--amount-fen", "500", on_ops=True)
        assert paid_again.returncode == 0, paid_again.stdout + paid_again.stderr
    finally:
        down = fapiao("down", "--hosts", timeout_s=600)
    assert down.returncode == 0, down.stdout + down.stderr
    assert Network(prefix=prefix).namespaces() == []
    assert not any(pid_alive(pid) for pid in pids), "no process is left behind"
