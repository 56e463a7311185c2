"""The `fapiao` command's errors: on stderr, once, with the documented exit code, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from fapiao_cli.clients import describe_refusal
from fapiao_cli.main import EXIT_CODES, EXIT_FAILED, EXIT_USAGE, build_parser
from fapiao_cli.platform import NotificationOutcome

from tests.e2e.conftest import FapiaoCommand

pytestmark = pytest.mark.e2e


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_pay_for_an_unknown_merchant_is_a_usage_error_naming_the_fix(fapiao: FapiaoCommand) -> None:
    fapiao.run_dir.mkdir(parents=True)
    (fapiao.run_dir / "stack.json").write_text(
        json.dumps({"kafka_bootstrap": "127.0.0.1:1", "database_url": "postgresql://nobody@127.0.0.1:1/x"})
    )
    done = fapiao("pay", "--merchant-id", "1900009999", "--amount-fen", "100")
    _no_traceback(done)
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert "unknown merchant 1900009999" in done.stderr and "fapiao merchant add" in done.stderr


@pytest.mark.parametrize("command", ["up", "down"])
def test_the_single_host_commands_leave_a_running_cluster_alone(fapiao: FapiaoCommand, command: str) -> None:
    fapiao.run_dir.mkdir(parents=True)
    record = json.dumps({"mode": "hosts", "network": {"prefix": "fapiao-x-", "subnet": "10.231.0.0/24"}})
    (fapiao.run_dir / "stack.json").write_text(record)
    done = fapiao(command)
    _no_traceback(done)
    assert done.returncode == EXIT_FAILED and done.stdout == ""
    assert "multi-host cluster runs here" in done.stderr and "--hosts" in done.stderr
    assert (fapiao.run_dir / "stack.json").read_text() == record
    assert not (fapiao.run_dir / "pids").exists() or not list((fapiao.run_dir / "pids").iterdir())


def test_verify_a_malformed_invoice_number_is_a_usage_error(fapiao: FapiaoCommand) -> None:
    done = fapiao("verify", "--invoice-number", "abc")
    _no_traceback(done)
    assert done.returncode == EXIT_USAGE
    assert "NOT_ON_LEDGER" not in done.stdout + done.stderr
    assert "20 digits" in done.stderr


def test_a_reader_that_goes_away_early_leaves_no_error(fapiao: FapiaoCommand) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fapiao_cli", "status", "--json"],
        env=fapiao.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read enough, before anything was written
    errors = proc.stderr.read()
    proc.wait(timeout=60)
    _no_traceback(subprocess.CompletedProcess(proc.args, proc.returncode, "", errors))
    assert errors == ""


def test_a_refusal_names_its_reason_once() -> None:
    refusal = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("fapiao-reason", "UNKNOWN_TOKEN")),
        details="UNKNOWN_TOKEN: no claim offer for this token",
    )
    assert describe_refusal(refusal) == "NOT_FOUND UNKNOWN_TOKEN: no claim offer for this token"


def test_the_webhook_answer_is_shown_as_json() -> None:
    from fapiao_cli.commands.pay import _answer

    outcome = NotificationOutcome(200, {"code": "SUCCESS", "message": "成功"}, "4200", "order-1")
    assert json.loads(_answer(outcome)) == {"code": "SUCCESS", "message": "成功"}


@pytest.mark.parametrize("command", ["pay", "claim", "verify", "merchant add", "org", "audit"])
def test_subcommand_help_shows_examples_and_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    shown = capsys.readouterr().out
    assert "examples:" in shown and f"fapiao {command}" in shown.split("examples:", 1)[1]
    assert EXIT_CODES in shown
