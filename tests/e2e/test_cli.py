"""Every `fapiao` command, run as a process against a private local stack (real Kafka, PostgreSQL, services)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fapiao_cli.main import build_parser
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.procs import pid_alive

from tests.e2e.conftest import FapiaoCommand

pytestmark = pytest.mark.e2e


def _tax_id(body17: str) -> str:
    return body17 + uscc_check_char(body17)


def test_every_command_has_help() -> None:
    parser = build_parser()
    # Each command is listed in `fapiao --help` with its summary, and answers its own --help.
    commands = set(re.findall(r"^ {4}([a-z][a-z-]*) ", parser.format_help(), re.MULTILINE))
    expected = {"up", "down", "restart", "status", "demo", "merchant", "org", "ca", "pay", "claim", "verify", "audit",
                "bench"}  # fmt: skip
    assert expected <= commands
    for name in expected:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_cli_drives_the_whole_stack(fapiao: FapiaoCommand, tmp_path: Path) -> None:
    up = fapiao("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("SERVING") == 8

    status = fapiao("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert {entry["health"] for entry in report.values()} == {"SERVING"}

    merchant_tax = _tax_id("91440300MA5C00001")
    bad = fapiao("merchant", "add", "--merchant-id", "1900000001", "--legal-name", "X", "--tax-id",
                 "91440300MA5C000010", "--region-code", "44")  # fmt: skip
    assert bad.returncode == 2 and "INVALID_TAX_ID" in bad.stderr, bad.stdout + bad.stderr
    added = fapiao("merchant", "add", "--merchant-id", "1900000001", "--legal-name", "深圳测试餐饮有限公司",
                   "--tax-id", merchant_tax, "--region-code", "44")  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["notify_path"] == "/v1/notify/wechatpay/1900000001"
    assert fapiao("merchant", "show", "--merchant-id", "1900000001").returncode == 0
    rerun = fapiao("merchant", "add", "--merchant-id", "1900000001", "--legal-name", "深圳测试餐饮有限公司",
                   "--tax-id", merchant_tax, "--region-code", "44")  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # A re-run keeps the APIv3 key: the payments below are encrypted with the one printed first.
    assert "apiv3_key" not in json.loads(rerun.stdout) and json.loads(rerun.stdout)["created"] is False

    company = _tax_id("91440300MA5D00001")
    assert fapiao("org", "add", "--tax-id", company, "--name", "深圳测试科技有限公司").returncode == 0
    listing = fapiao("org", "list")
    assert company in listing.stdout and "active" in listing.stdout
    issued = fapiao("ca", "issue", "--org-tax-id", company, "--name", "深圳测试科技有限公司")
    assert issued.returncode == 0, issued.stdout + issued.stderr
    assert (fapiao.run_dir / "pki" / f"org-{company}.key").stat().st_mode & 0o077 == 0
    service = fapiao("ca", "issue", "--service", "gateway")
    assert service.returncode == 0, service.stdout + service.stderr
    assert (fapiao.run_dir / "pki" / "service-gateway.key").stat().st_mode & 0o077 == 0
    operator = fapiao("ca", "issue", "--operator", "alice")
    assert operator.returncode == 0, operator.stdout + operator.stderr
    assert (fapiao.run_dir / "pki" / "operator-alice.key").stat().st_mode & 0o077 == 0
    assert (fapiao.run_dir / "pki" / "operator-local.key").stat().st_mode & 0o077 == 0  # `fapiao up` issued it
    assert fapiao("ca", "init").returncode != 0, "an existing CA is not replaced without --force"

    paid = fapiao("pay", "--merchant-id", "1900000001", "--amount-fen", "12345")
    assert paid.returncode == 0, paid.stdout + paid.stderr
    claim_url = re.search(r"claim page: (\S+)", paid.stdout).group(1)  # type: ignore[union-attr]
    transaction_id = re.search(r"transaction (\S+):", paid.stdout).group(1)  # type: ignore[union-attr]
    order = re.search(r"\(order (\S+)\)", paid.stdout).group(1)  # type: ignore[union-attr]

    claimed = fapiao("claim", claim_url, "--buyer-name", "深圳测试科技有限公司", "--buyer-tax-id", company)
    assert claimed.returncode == 0, claimed.stdout + claimed.stderr
    assert "INVOICE_STATUS_ISSUED" in claimed.stdout
    number = re.search(r'"invoiceNumber": "(\d{20})"', claimed.stdout).group(1)  # type: ignore[union-attr]
    again = fapiao("claim", claim_url, "--buyer-name", "someone else", "--person")
    assert again.returncode == 1 and again.stderr.count("ALREADY_CLAIMED") == 1, again.stdout + again.stderr

    receipt_file = tmp_path / "receipt.json"
    verified = fapiao("verify", "--invoice-number", number, "--save", str(receipt_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["status"] == "INVOICE_LEDGER_STATUS_ISSUED"
    assert fapiao("verify", str(receipt_file)).returncode == 0
    receipt = json.loads(receipt_file.read_text())
    receipt["index"] = receipt.get("index", 0) + 1
    receipt_file.write_text(json.dumps(receipt))
    assert fapiao("verify", str(receipt_file)).returncode == 1, "a changed receipt does not verify"

    audit = fapiao("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "FINDINGS" not in audit.stdout

    refund = fapiao("pay", "--merchant-id", "1900000001", "refund", "--transaction-id", transaction_id,
                    "--out-trade-no", order, "--refund-fen", "345", "--total-fen", "12345")  # fmt: skip
    assert refund.returncode == 0, refund.stdout + refund.stderr
    load = fapiao("pay", "--merchant-id", "1900000001", "--amount-fen", "100", "--count", "20", "--rate", "50")
    assert load.returncode == 0 and "20 accepted" in load.stdout, load.stdout + load.stderr

    assert fapiao("org", "revoke", "--tax-id", company).returncode == 0
    assert f"{company}\trevoked" in fapiao("org", "list").stdout
    # A platform certificate rotation, through the admin API: the new serial is trusted beside the old
    # one, a retired serial is removed, and the merchant's last serial stays.
    successor = tmp_path / "successor.pem"
    successor.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    trusted = json.loads(fapiao("merchant", "show", "--merchant-id", "1900000001").stdout)["trusted_platform_serials"]
    added = fapiao("merchant", "add-platform-key", "--merchant-id", "1900000001", "--serial", "SUCCESSOR1",
                   "--public-key", str(successor))  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["trusted_platform_serials"] == [*trusted, "SUCCESSOR1"]
    retired = fapiao("merchant", "remove-platform-key", "--merchant-id", "1900000001", "--serial", "SUCCESSOR1")
    assert retired.returncode == 0 and json.loads(retired.stdout)["trusted_platform_serials"] == trusted
    last = fapiao("merchant", "remove-platform-key", "--merchant-id", "1900000001", "--serial", trusted[0])
    assert last.returncode == 1 and "LAST_PLATFORM_KEY" in last.stderr
    # Merchants too are listed and revoked through the admin API, as the local operator.
    assert "1900000001\tactive" in fapiao("merchant", "list").stdout
    assert fapiao("merchant", "revoke", "--merchant-id", "1900000001").returncode == 0
    assert "1900000001\trevoked" in fapiao("merchant", "list").stdout
    unknown = fapiao("merchant", "revoke", "--merchant-id", "1900000099")
    assert unknown.returncode == 1 and "UNKNOWN_MERCHANT" in unknown.stderr

    pids = [int(p.read_text()) for p in (fapiao.run_dir / "pids").glob("*.pid")]
    assert len(pids) == 9
    down = fapiao("down")
    assert down.returncode == 0 and "postgres" in down.stdout
    assert not any(pid_alive(pid) for pid in pids), "no process is left behind"
    assert fapiao("status").returncode == 1


def test_bench_command_writes_the_baselines(fapiao: FapiaoCommand, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    bench = fapiao("bench", "--only", "baselines", "--out", str(out))
    assert bench.returncode == 0, bench.stdout + bench.stderr
    figures = json.loads(out.read_text())
    assert figures["kafka_roundtrip_msgs_per_s"] > 0 and figures["ed25519_verify_per_s"] > 0


def test_make_demo_tells_the_story_and_exits_zero(fapiao: FapiaoCommand) -> None:
    import subprocess

    demo = subprocess.run(
        [sys.executable, "-m", "fapiao_cli.demo"], env=fapiao.env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    promises = (
        "a second claim of the same QR code is refused",
        "every validator serves a quorum receipt: ISSUED",
        "a receipt with one byte changed fails verification",
        "refused: PERMISSION_DENIED",
        "a second close is refused",
        "a second lock is refused",
        "a red-letter invoice reverses it",
    )
    for promise in promises:
        assert promise in demo.stdout
    assert "BROKEN" not in demo.stdout
    assert "stopped:" in demo.stdout
