"""The fuzzer's own machinery: mutations are reproducible and well-formed where they should be, every
answer gets the right class, and a deliberate defect (a method that raises, a page that reflects
markup, a handler that never answers, a traceback in a log) is caught."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from fapiao.ledger.v1 import ledger_service_pb2 as ledger_api
from fapiao.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as intake_api
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.logs import JsonFormatter

from tests.fuzz import mutate
from tests.fuzz.classify import Outcome, Tally, grpc_outcome, http_outcome, scan_log, table
from tests.fuzz.fuzzer import Fuzzer, parse_args
from tests.fuzz.http_requests import HttpRequest, exchange, parse_response
from tests.fuzz.targets import GrpcTarget, HttpTarget

pytestmark = pytest.mark.unit


def _payment() -> intake_api.RecordPaymentRequest:
    request = intake_api.RecordPaymentRequest(
        merchant_id="1900000001", transaction_id="4200000001", out_trade_no="o-1", amount_fen=100, currency="CNY"
    )
    request.success_time.seconds = 1_700_000_000
    request.items.add(name="餐饮服务", quantity=1)
    return request


# --- mutations --------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_inputs() -> None:
    first = [mutate.mutate_message(random.Random(f"5:{i}"), _payment()) for i in range(300)]
    again = [mutate.mutate_message(random.Random(f"5:{i}"), _payment()) for i in range(300)]
    other = [mutate.mutate_message(random.Random(f"6:{i}"), _payment()) for i in range(300)]
    assert first == again
    assert first != other


def test_varints_and_fields_are_encoded_as_protobuf_does() -> None:
    for value in (1, 127, 128, 300, 2**31 - 1, 2**63 - 1):
        message = intake_api.RecordPaymentRequest(amount_fen=value)
        assert mutate.field_bytes(4, mutate.VARINT, value) == message.SerializeToString()
    negative = intake_api.RecordPaymentRequest(amount_fen=-5).SerializeToString()
    assert mutate.field_bytes(4, mutate.VARINT, -5) == negative


def test_an_appended_nested_field_overrides_only_that_field() -> None:
    request = _payment()
    raw = request.SerializeToString() + mutate.nest([7], mutate.field_bytes(2, mutate.VARINT, 10**9))
    parsed = intake_api.RecordPaymentRequest.FromString(raw)
    assert parsed.success_time.seconds == 1_700_000_000 and parsed.success_time.nanos == 10**9
    assert parsed.merchant_id == "1900000001" and parsed.amount_fen == 100


def test_field_mutations_reach_every_field_kind() -> None:
    seen = set()
    for i in range(2000):
        _, what = mutate.mutate_field(random.Random(i), _payment())
        seen.add(what.split(":", 1)[0])
    for name in ("merchant_id", "amount_fen", "success_time", "items", "items.name", "items.quantity", "currency"):
        assert f"RecordPaymentRequest.{name}" in seen, name


def test_invalid_utf8_and_lone_surrogates_are_produced() -> None:
    raws = [mutate.invalid_utf8(random.Random(i), "abc")[0] for i in range(50)]
    assert any(b"\xed\xa0\x80" in raw for raw in raws)
    for raw in raws:
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    texts = [mutate.mutate_json(random.Random(i), {"a": "x", "b": {"c": "y"}})[0] for i in range(400)]
    decoded = [json.loads(t) for t in texts if "\\ud8" in t or "\\udf" in t or "\\udc" in t]
    assert decoded, "some documents carry a lone surrogate escape"


def test_form_and_path_mutations_render_to_bytes() -> None:
    from tests.fuzz.http_requests import encode_form, mutate_form, mutate_http, mutate_path_segment

    for i in range(500):
        rng = random.Random(i)
        fields, _ = mutate_form(rng, [("number", "1" * 20), ("date", "20260215")])
        segment, _ = mutate_path_segment(rng, "token-abcdefgh")
        request = HttpRequest("POST", f"/claim/{segment}")
        encode_form(rng, request, fields)
        mutate_http(rng, request)
        rendered = request.render()
        assert rendered.startswith(request.method.encode() + b" /claim/") and rendered.endswith(request.body)


def test_responses_are_parsed_through_interim_and_chunked_answers() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    status, _, body = parse_response(answer)
    assert (status, body) == (200, b"abc")
    assert parse_response(b"") == (None, {}, b"")


# --- classes ----------------------------------------------------------------------------------


def test_grpc_classes() -> None:
    assert grpc_outcome("INVALID_ARGUMENT", "BAD_FIELD: no", 0.1).reason == "BAD_FIELD"
    assert not grpc_outcome("INVALID_ARGUMENT", "BAD_FIELD: no", 0.1).failed
    assert grpc_outcome("UNKNOWN", "Unexpected <class 'DecodeError'>", 0.1).failed
    assert grpc_outcome("INTERNAL", "INTERNAL: internal error", 0.1).failed
    assert grpc_outcome("DEADLINE_EXCEEDED", "Deadline Exceeded", 10.0).response_class == "HANG"
    waited = grpc_outcome("DEADLINE_EXCEEDED", "OUTCOME_PENDING: not yet", 10.0, reason="OUTCOME_PENDING")
    assert waited.response_class == "DEADLINE_EXCEEDED" and not waited.failed
    assert not grpc_outcome("DEADLINE_EXCEEDED", "x", 1.0).failed


def test_http_classes() -> None:
    assert http_outcome(500, "text/html", b"oops", 0.1, wellformed=True).response_class == "HTTP_5XX"
    assert http_outcome(503, "application/json", b"{}", 0.1, wellformed=True).failed
    assert not http_outcome(404, "text/html", b"nope", 0.1, wellformed=True).failed
    assert http_outcome(None, "", b"", 0.1, wellformed=True).response_class == "NO_RESPONSE"
    assert not http_outcome(None, "", b"", 0.1, wellformed=False).failed
    assert http_outcome(None, "", b"", 10.0, wellformed=False).response_class == "HANG"
    page = b'<input value="&lt;fuzz-xss-00abcd&gt;"><b><fuzz-xss-00abcd></b>'
    assert http_outcome(400, "text/html; charset=utf-8", page, 0.1, wellformed=True).response_class == "REFLECTED"
    escaped = b'<input value="&lt;fuzz-xss-00abcd&gt;">'
    assert http_outcome(400, "text/html", escaped, 0.1, wellformed=True).response_class == "HTTP_4XX"
    assert http_outcome(400, "application/json", b'{"v": "<fuzz-xss-1>"}', 0.1, wellformed=True).response_class == (
        "HTTP_4XX"
    )


def test_tally_counts_by_surface_and_keeps_examples_of_failures() -> None:
    tally = Tally()
    tally.add(1, "grpc x", "x.M", "valid", b"\x01", Outcome("OK"))
    tally.add(2, "grpc x", "x.M", "NUL", b"\x02", Outcome("INTERNAL", "INTERNAL: internal error"))
    tally.add(3, "http y", "GET /", "junk", b"GET /", Outcome("HTTP_5XX", "500"))
    assert tally.failures() == {"INTERNAL": 1, "HTTP_5XX": 1}
    assert tally.inputs == 3
    assert [e.index for e in tally.examples[("grpc x", "x.M", "INTERNAL")]] == [2]
    tally.add(4, "grpc x", "x.M", "junk", b"\x04", Outcome("INVALID_ARGUMENT", "", "MALFORMED_REQUEST"))
    tally.add(5, "grpc x", "x.M", "junk", b"\x05", Outcome("NOT_FOUND", "unknown service"))
    assert tally.without_reason() == {"x.M": {"NOT_FOUND": 1}}
    tally.add(6, "grpc z", "z.M", "valid", b"", Outcome("UNAVAILABLE", "failed to connect"))
    assert tally.unreached(["x.M", "z.M", "never.sent"]) == ["z.M", "never.sent"]
    text = table(tally)
    assert "grpc x" in text and "http y" in text and "INTERNAL!" in text and "TOTAL" in text


def test_log_scan_finds_json_exceptions_raw_tracebacks_and_lost_task_exceptions(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    handler = logging.FileHandler(log)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fuzz-harness-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.info("request refused", extra={"reason": "INVALID_ARGUMENT"})
    offset = log.stat().st_size
    try:
        raise RuntimeError("deliberate")
    except RuntimeError:
        logger.exception("unhandled error")
    handler.close()
    with log.open("a") as out:
        out.write("Task exception was never retrieved\nfuture: <Task finished>\n")
        out.write('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: x\n')
    count, samples = scan_log(log, offset)
    assert count == 3
    assert "unhandled error | RuntimeError: deliberate" in samples[0]
    assert scan_log(log, log.stat().st_size) == (0, [])
    assert scan_log(tmp_path / "missing.log") == (0, [])


# --- deliberate defects on real servers -------------------------------------------------------


class _BrokenLedger(ledger_grpc.LedgerServiceServicer):
    async def GetBlock(self, request: ledger_api.GetBlockRequest, context: object) -> ledger_api.GetBlockResponse:
        raise RuntimeError("a deliberate defect")

    async def GetInvoiceState(self, request: object, context: object) -> ledger_api.GetInvoiceStateResponse:
        raise InvalidArgument("BAD_LOOKUP", "refused on purpose")

    async def AuditChain(self, request: object, context: object) -> ledger_api.AuditChainResponse:
        await asyncio.sleep(5)
        return ledger_api.AuditChainResponse()


async def test_a_method_that_raises_is_internal_and_a_refusal_is_not() -> None:
    server = GrpcServer(["fapiao.ledger.v1.LedgerService"])
    server.add_servicer(ledger_grpc.add_LedgerServiceServicer_to_server, _BrokenLedger())
    port = await server.start("127.0.0.1", 0)
    fuzzer = Fuzzer(parse_args(["--seed", "3", "--replay", "0"]))
    fuzzer.hang_s = 1.0
    fuzzer.channels["ledger-1"] = [grpc.aio.insecure_channel(f"127.0.0.1:{port}")]
    service = "/fapiao.ledger.v1.LedgerService/"
    try:
        for method, expected in (
            ("GetBlock", "INTERNAL"),
            ("GetInvoiceState", "INVALID_ARGUMENT"),
            ("AuditChain", "HANG"),
        ):
            target = GrpcTarget("grpc ledger", "ledger-1", service + method, "unary", lambda r: [])
            outcome = await fuzzer.call_grpc(random.Random(0), target, b"")
            assert outcome.response_class == expected, (method, outcome)
        target = GrpcTarget(
            "grpc ledger", "ledger-1", service + "GetBlock", "unary", lambda r: [ledger_api.GetBlockRequest()]
        )
        await fuzzer.one(0, [target], [1.0], {})
        assert fuzzer.tally.failures() == {"INTERNAL": 1}
    finally:
        await fuzzer.channels["ledger-1"][0].close()
        await server.stop(0)


async def test_an_http_defect_is_caught_in_every_form() -> None:
    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("a deliberate defect")

    async def reflect(request: web.Request) -> web.Response:
        return web.Response(text=f"<p>{request.query.get('q', '')}</p>", content_type="text/html")

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/crash", crash)
    app.router.add_get("/reflect", reflect)
    app.router.add_get("/stall", stall)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fuzzer = Fuzzer(parse_args(["--seed", "3", "--replay", "0"]))
    fuzzer.hang_s = 1.0
    try:
        cases = {
            "/crash": "HTTP_5XX",
            "/reflect?q=%3Cfuzz-xss-00beef%3E": "REFLECTED",
            "/reflect?q=plain": "HTTP_2XX",
            "/stall": "HANG",
            "/missing": "HTTP_4XX",
        }
        for path, expected in cases.items():
            target = HttpTarget("http test", "test", path, lambda r, path=path: (HttpRequest("GET", path), "as is"))
            before = dict(fuzzer.tally.by_target.get(path, {}))
            await fuzzer.one(0, [target], [1.0], {"test": port})
            after = fuzzer.tally.by_target[path]
            assert after[expected] == before.get(expected, 0) + 1, (path, dict(after))
        answer = await exchange(
            "127.0.0.1", port, HttpRequest("", "", raw=b"\x16\x03\x01junk\r\n\r\n", wellformed=False), 2
        )
        assert answer.status == 400 or answer.status is None
    finally:
        await runner.cleanup()
