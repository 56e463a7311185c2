"""The mutation fuzzer: drives every gRPC method and HTTP route of a running local stack with mutated
valid requests and random bytes, classifies every answer, then checks that every process is alive and
SERVING and that no service logged a traceback.

    python -m tests.fuzz --inputs 100000            # start a private stack, fuzz it, stop it
    python -m tests.fuzz --stack running            # fuzz the stack `make up` started
    python -m tests.fuzz --seed 7 --replay 1234     # send input 1234 of seed 7 again, show everything

Exit status 0 only when no input got UNKNOWN, INTERNAL, an HTTP 5xx, no answer within 10 s, an
unescaped reflection of submitted markup or a closed connection for a well-formed HTTP request, every
process is alive and SERVING, no service logged a traceback and every method the servers expose was
sent inputs. docs/fuzzing.md describes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.fuzz.classify import HANG_S, Outcome, Tally, grpc_outcome, http_outcome, scan_log, table

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "build" / "fuzz" / "summary.json"
# A private stack relaxes the verification page's per-client rate limits, which would otherwise
# answer 429 to all but the first few dozen checks from the fuzzer's one address and keep the
# inputs away from the parsers behind them.
RELAXED_LIMITS = {
    "FAPIAO_VERIFY_BURST": "1000000",
    "FAPIAO_VERIFY_PER_MINUTE": "1000000",
    "FAPIAO_VERIFY_INVOICE_FAILURE_BURST": "1000000",
    "FAPIAO_VERIFY_INVOICE_FAILURES_PER_DAY": "1000000",
}
STREAM_FIRST_MESSAGE_S = 3.0
CHANNELS_PER_ENDPOINT = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="how many inputs to send (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight at once (default 32)")
    parser.add_argument(
        "--stack",
        choices=("start", "running"),
        default="start",
        help="start a private stack (free port offset, own run dir) and stop it after, or fuzz the running "
        "one named by FAPIAO_RUN_DIR / FAPIAO_PORT_OFFSET (default: start)",
    )
    parser.add_argument("--run-dir", type=Path, help="run directory of a private stack (default build/fuzz/run)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the private stack running after the run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="summary file (default build/fuzz/summary.json)")
    parser.add_argument(
        "--replay", type=int, action="append", default=[], metavar="INDEX", help="send only input INDEX (repeatable)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    private = args.stack == "start"
    if private:
        from tests.support.ports import free_port_offset

        run_dir = (args.run_dir or REPO_ROOT / "build" / "fuzz" / "run").resolve()
        os.environ["FAPIAO_RUN_DIR"] = str(run_dir)
        os.environ["FAPIAO_PORT_OFFSET"] = str(free_port_offset())
        os.environ.pop("DATABASE_URL", None)
        os.environ.update(RELAXED_LIMITS)
        os.environ["PYTHONUNBUFFERED"] = "1"
    # fapiao_stack reads FAPIAO_RUN_DIR and FAPIAO_PORT_OFFSET when first imported: only now.
    from fapiao_stack import stack

    started = time.monotonic()
    if private:
        if (run_dir / "pids").exists():
            stack.down()
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"starting a private stack in {run_dir} (port offset {os.environ['FAPIAO_PORT_OFFSET']}) ...", flush=True)
    try:
        if private:
            stack.up(timeout_s=240)
        startup_s = time.monotonic() - started
        summary = asyncio.run(Fuzzer(args).run())
        summary["stack_startup_s"] = round(startup_s, 1)
    finally:
        if private and not args.keep_stack:
            print("stopped: " + ", ".join(stack.down()), flush=True)
    if not args.replay:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        print(f"summary: {args.out}")
    return 0 if summary["passed"] else 1


class Fuzzer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.channels: dict[str, list[Any]] = {}
        self.callables: dict[tuple[str, str, str, int], Any] = {}
        self.hang_s = HANG_S

    # --- set-up ---------------------------------------------------------------------------------

    def _open_channels(self, seeds: Any) -> None:
        """CHANNELS_PER_ENDPOINT connections to every gRPC port (a service run as several worker
        processes shares its port: each connection lands on one of them)."""
        import grpc
        from fapiao_stack.services import INTAKE_ADMIN_PORT, REIMBURSEMENT_TLS_PORT, local_services

        from tests.fuzz.seeds import pki_dir

        options = [
            ("grpc.max_send_message_length", 16 << 20),
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        for spec in local_services():
            if spec.health == "grpc":
                self.channels[spec.name] = [
                    grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}", options=options)
                    for _ in range(CHANNELS_PER_ENDPOINT)
                ]
        pki = pki_dir()
        for name, tax_id in (
            ("reimbursement-tls", seeds.org_tax_id),
            ("reimbursement-stranger", seeds.stranger_tax_id),
        ):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(pki / "ca.crt").read_bytes(),
                private_key=(pki / f"org-{tax_id}.key").read_bytes(),
                certificate_chain=(pki / f"org-{tax_id}.crt").read_bytes(),
            )
            self.channels[name] = [
                grpc.aio.secure_channel(f"127.0.0.1:{REIMBURSEMENT_TLS_PORT}", credentials, options)
                for _ in range(CHANNELS_PER_ENDPOINT)
            ]
        # The admin services, as the local operator: organisations on reimbursement's mutual-TLS port,
        # merchants on payment_intake's admin port.
        operator = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / "operator-local.key").read_bytes(),
            certificate_chain=(pki / "operator-local.crt").read_bytes(),
        )
        for name, port in (("reimbursement-operator", REIMBURSEMENT_TLS_PORT), ("intake-admin", INTAKE_ADMIN_PORT)):
            self.channels[name] = [
                grpc.aio.secure_channel(f"127.0.0.1:{port}", operator, options) for _ in range(CHANNELS_PER_ENDPOINT)
            ]

    def _notifier(self, seeds: Any) -> Any:
        from fapiao_cli.local import load_merchant_credentials
        from payment_intake.wechatpay import load_private_key

        from tests.fuzz.targets import Notifier

        credentials = load_merchant_credentials(seeds.merchant_id)
        signer = load_private_key(credentials.platform_key_file.read_bytes(), credentials.platform_serial)
        return Notifier(seeds.merchant_id, credentials.apiv3_key.encode(), signer, seeds)

    async def _uncovered(self, targets: list[Any]) -> list[str]:
        """Methods a server lists through reflection that no target sends inputs to."""
        from google.protobuf import descriptor_pool
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        covered = {(t.endpoint, t.method) for t in targets}
        missing = []
        endpoints = (
            "payment_intake",
            "invoice_minting",
            "ledger-1",
            "reimbursement",
            "reimbursement-tls",
            "intake-admin",
        )
        for endpoint in endpoints:
            stub = reflection_pb2_grpc.ServerReflectionStub(self.channels[endpoint][0])
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="*")]), timeout=10
            )
            async for reply in call:
                for service in reply.list_services_response.service:
                    descriptor = descriptor_pool.Default().FindServiceByName(service.name)
                    for method in descriptor.methods:
                        path = f"/{service.name}/{method.name}"
                        if (endpoint, path) not in covered:
                            missing.append(f"{endpoint} {path}: no inputs")
                break
        return missing

    # --- one input ------------------------------------------------------------------------------

    def _callable(self, endpoint: str, method: str, kind: str, connection: int) -> Any:
        channels = self.channels[endpoint]
        key = (endpoint, method, kind, connection % len(channels))
        found = self.callables.get(key)
        if found is None:
            channel = channels[connection % len(channels)]
            factory = {
                "unary": channel.unary_unary,
                "server_stream": channel.unary_stream,
                "bidi": channel.stream_stream,
            }
            found = self.callables[key] = factory[kind](method)
        return found

    async def call_grpc(self, rng: random.Random, target: Any, payload: bytes) -> Outcome:
        import grpc

        started = time.perf_counter()
        multicallable = self._callable(
            target.endpoint, target.method, target.kind, rng.randrange(CHANNELS_PER_ENDPOINT)
        )
        hang_s = self.hang_s + target.asked_wait_s
        call = None
        try:
            if target.kind == "unary":
                await multicallable(payload, timeout=hang_s)
                return grpc_outcome("OK", "", time.perf_counter() - started, hang_s=hang_s)
            if target.kind == "server_stream":
                call = multicallable(payload, timeout=hang_s)
                wanted = rng.choice((0, 1, 1, 3))
                if wanted == 0:  # a client that goes away at once
                    await asyncio.sleep(rng.random() * 0.05)
                    call.cancel()
                    return grpc_outcome("OK", "cancelled by the client", time.perf_counter() - started)
                for _ in range(wanted):
                    try:
                        message = await asyncio.wait_for(call.read(), STREAM_FIRST_MESSAGE_S)
                    except TimeoutError:
                        call.cancel()
                        return Outcome("STREAM_OPEN", "no message yet; cancelled", "", time.perf_counter() - started)
                    if message is grpc.aio.EOF:
                        code = await call.code()
                        return grpc_outcome(code.name, await call.details() or "", time.perf_counter() - started)
                call.cancel()
                return grpc_outcome("OK", f"{wanted} messages, then cancelled", time.perf_counter() - started)
            call = multicallable(timeout=hang_s)
            await call.write(payload)
            await call.done_writing()
            async for _ in call:
                pass
            return grpc_outcome("OK", "", time.perf_counter() - started, hang_s=hang_s)
        except grpc.aio.AioRpcError as error:
            reason = dict(error.trailing_metadata() or ()).get("fapiao-reason", "")
            elapsed = time.perf_counter() - started
            return grpc_outcome(error.code().name, error.details() or "", elapsed, str(reason), hang_s)

    async def one(self, index: int, targets: list[Any], weights: list[float], ports: dict[str, int]) -> None:
        from tests.fuzz.http_requests import exchange
        from tests.fuzz.targets import GrpcTarget, grpc_input

        rng = random.Random(f"{self.args.seed}:{index}")
        target = rng.choices(targets, weights)[0]
        request_bytes = b""
        mutation = ""
        try:
            if isinstance(target, GrpcTarget):
                request_bytes, mutation = grpc_input(rng, target)
                outcome = await self.call_grpc(rng, target, request_bytes)
            else:
                request, mutation = target.build(rng)
                request_bytes = request.render()
                answer = await exchange("127.0.0.1", ports[target.port], request, self.hang_s)
                outcome = http_outcome(
                    answer.status,
                    answer.content_type,
                    answer.body,
                    answer.elapsed_s,
                    wellformed=request.wellformed,
                    reason=_reason_of(answer.body, answer.content_type),
                    hang_s=self.hang_s,
                )
        except Exception as error:  # a harness failure is counted, never hidden
            outcome = Outcome("CLIENT_ERROR", repr(error)[:300])
        self.tally.add(index, target.surface, target.name, mutation, request_bytes, outcome)
        if self.args.replay:
            print(f"\n#{index} {target.surface} / {target.name}\n  mutation: {mutation}")
            print(f"  request ({len(request_bytes)} bytes): {request_bytes[:2000]!r}")
            print(f"  answer: {outcome.response_class} {outcome.reason} {outcome.detail[:1000]!r}")

    # --- the run --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        from fapiao_stack.services import GATEWAY_PORT, INTAKE_WEBHOOK_PORT, local_services
        from fapiao_stack.stack import LOG_DIR

        from tests.fuzz import seeds as seed_data
        from tests.fuzz.targets import grpc_targets, http_targets

        logs = {spec.name: LOG_DIR / f"{spec.name}.log" for spec in local_services()}
        offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in logs.items()}
        began = time.monotonic()
        seeds = await seed_data.create(self.args.seed, GATEWAY_PORT)
        seeding_s = time.monotonic() - began
        print(f"seed data ready in {seeding_s:.1f} s: merchant {seeds.merchant_id}, invoices "
              f"{', '.join(i.number for i in seeds.invoices)}", flush=True)  # fmt: skip
        self._open_channels(seeds)
        targets: list[Any] = [*grpc_targets(seeds), *http_targets(seeds, self._notifier(seeds))]
        weights = [t.weight for t in targets]
        uncovered = await self._uncovered([t for t in targets if hasattr(t, "endpoint")])
        ports = {"gateway": GATEWAY_PORT, "webhook": INTAKE_WEBHOOK_PORT}

        indices = list(self.args.replay) or list(range(self.args.inputs))
        queue = iter(indices)
        fuzz_began = time.monotonic()
        done = asyncio.Event()

        async def worker() -> None:
            for index in queue:
                await self.one(index, targets, weights, ports)

        async def progress() -> None:
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), 10)
                except TimeoutError:
                    elapsed = time.monotonic() - fuzz_began
                    failures = sum(self.tally.failures().values())
                    print(f"  {self.tally.inputs:>7} inputs, {self.tally.inputs / elapsed:6.0f}/s, "
                          f"{failures} failing", flush=True)  # fmt: skip

        reporter = asyncio.ensure_future(progress())
        await asyncio.gather(*[worker() for _ in range(max(1, self.args.concurrency))])
        done.set()
        await reporter
        fuzz_s = time.monotonic() - fuzz_began
        for channels in self.channels.values():
            for channel in channels:
                await channel.close()

        await asyncio.sleep(1.0)  # let the services finish writing what the last inputs made them log
        processes = await _processes()
        tracebacks = {}
        for name, path in logs.items():
            count, samples = scan_log(path, offsets[name])
            if count:
                tracebacks[name] = {"count": count, "samples": samples}
        if not self.args.replay:
            uncovered += [f"{name}: no answer" for name in self.tally.unreached([t.name for t in targets])]
        return self._summary(seeds, fuzz_s, seeding_s, processes, tracebacks, uncovered)

    def _summary(
        self,
        seeds: Any,
        fuzz_s: float,
        seeding_s: float,
        processes: dict[str, dict[str, Any]],
        tracebacks: dict[str, dict[str, Any]],
        uncovered: list[str],
    ) -> dict[str, Any]:
        failures = self.tally.failures()
        dead = sorted(name for name, p in processes.items() if not (p["alive"] and p["health"] == "SERVING"))
        traceback_count = sum(t["count"] for t in tracebacks.values())
        passed = not failures and not dead and not traceback_count and not uncovered
        rate = self.tally.inputs / fuzz_s if fuzz_s else 0.0
        print()
        print(table(self.tally))
        print()
        print(f"{self.tally.inputs} inputs in {fuzz_s:.1f} s ({rate:.0f} inputs/s, concurrency "
              f"{self.args.concurrency}, seed {self.args.seed}); seed data {seeding_s:.1f} s")  # fmt: skip
        for _key, examples in sorted(self.tally.examples.items()):
            first = examples[0]
            count = self.tally.by_target[first.target][first.response_class]
            print(f"FAIL {first.response_class:<11} {first.target} ({count}x), e.g. input #{first.index}: "
                  f"{first.mutation[:100]} -> {first.response[:160]!r}")  # fmt: skip
        for name in dead:
            print(f"FAIL process {name}: {processes[name]}")
        for name, found in tracebacks.items():
            print(f"FAIL {found['count']} traceback(s) in the log of {name}, e.g. {found['samples'][0][:200]}")
        for method in uncovered:
            print(f"FAIL not covered: {method}")
        print("PASSED" if passed else "FAILED")
        return {
            "passed": passed,
            "seed": self.args.seed,
            "inputs": self.tally.inputs,
            "concurrency": self.args.concurrency,
            "fuzz_s": round(fuzz_s, 1),
            "seed_data_s": round(seeding_s, 1),
            "inputs_per_s": round(rate, 1),
            "failures": dict(failures),
            "by_surface": {s: dict(c) for s, c in sorted(self.tally.by_surface.items())},
            "by_target": {t: dict(c) for t, c in sorted(self.tally.by_target.items())},
            "reasons": {t: dict(c.most_common(15)) for t, c in sorted(self.tally.reasons.items())},
            "mean_ms": self.tally.mean_ms(),
            "without_reason": self.tally.without_reason(),
            "failing_mutations": {k: dict(c.most_common(12)) for k, c in sorted(self.tally.failing_kinds.items())},
            "examples": [asdict(e) for examples in self.tally.examples.values() for e in examples],
            "processes": processes,
            "tracebacks": tracebacks,
            "uncovered_methods": uncovered,
            "seed_data": seeds.to_json(),
        }


def _reason_of(body: bytes, content_type: str) -> str:
    """The reason an HTTP answer names: the JSON "reason" (the API) or "code" (the webhook), or the page's
    data-reason attribute."""
    if "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        return str(data.get("reason") or data.get("code", ""))[:60] if isinstance(data, dict) else ""
    found = re.search(rb'data-reason="([^"]+)"', body)
    return found[1].decode("utf-8", "replace")[:60] if found else ""


async def _processes() -> dict[str, dict[str, Any]]:
    """Every process of the stack: its pid alive, and its health (SERVING, NOT_SERVING, DOWN)."""
    from fapiao_stack.procs import pid_alive
    from fapiao_stack.services import health_of, local_services
    from fapiao_stack.stack import PID_DIR

    report: dict[str, dict[str, Any]] = {}
    for spec in local_services():
        pid_file = PID_DIR / f"{spec.name}.pid"
        alive = pid_file.exists() and pid_alive(int(pid_file.read_text()))
        report[spec.name] = {"alive": alive, "health": await health_of(spec)}
    kafka = PID_DIR / "kafka.pid"
    if kafka.exists():
        alive = pid_alive(int(kafka.read_text()))
        report["kafka"] = {"alive": alive, "health": "SERVING" if alive else "DOWN"}
    return report


if __name__ == "__main__":
    sys.exit(main())
