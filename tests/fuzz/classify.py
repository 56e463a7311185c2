"""How the fuzzer judges what came back: one response class per input, the failure rules, the scan of
the services' logs for tracebacks, and the table and summary of a run."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.mutate import MARKUP_MARKER

HANG_S = 10.0
# gRPC codes that always mean a defect: the server failed to say why it refused.
FAILING_GRPC = frozenset({"UNKNOWN", "INTERNAL"})
# Response classes that are failures whatever the surface.
FAILING_CLASSES = frozenset({"UNKNOWN", "INTERNAL", "HTTP_5XX", "HANG", "REFLECTED", "NO_RESPONSE", "CLIENT_ERROR"})
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "Task exception was never retrieved")
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Outcome:
    """What one input got back. `response_class` is a gRPC status name (OK, INVALID_ARGUMENT, ...), an
    HTTP class (HTTP_2XX ... HTTP_5XX), HANG (no answer within HANG_S), REFLECTED (an HTML page showing
    submitted markup unescaped), NO_RESPONSE (a well-formed HTTP request answered by a closed
    connection), CLOSED (the same for a request that was not HTTP: acceptable) or CLIENT_ERROR (the
    fuzzer could not send the input at all: a defect of the harness, counted as a failure)."""

    response_class: str
    detail: str = ""
    reason: str = ""
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.response_class in FAILING_CLASSES


def grpc_outcome(code_name: str, details: str, elapsed_s: float, reason: str = "", hang_s: float = HANG_S) -> Outcome:
    """A finished gRPC call. A deadline the client ran into at HANG_S is a hang, not an answer (unless
    the server itself answered DEADLINE_EXCEEDED with a reason, in time: it was waiting on purpose)."""
    if code_name == "DEADLINE_EXCEEDED" and elapsed_s >= hang_s - 0.05 and not reason:
        return Outcome("HANG", details, reason, elapsed_s)
    return Outcome(code_name, details, reason or (details or "").split(":", 1)[0][:60], elapsed_s)


def http_class(status: int) -> str:
    return f"HTTP_{status // 100}XX" if 100 <= status <= 599 else "HTTP_BAD_STATUS"


def http_outcome(
    status: int | None,
    content_type: str,
    body: bytes,
    elapsed_s: float,
    *,
    wellformed: bool,
    reason: str = "",
    hang_s: float = HANG_S,
) -> Outcome:
    """A finished HTTP exchange (status None: the connection closed without an answer)."""
    if status is None:
        if elapsed_s >= hang_s - 0.05:
            return Outcome("HANG", "no answer", "", elapsed_s)
        return Outcome("NO_RESPONSE" if wellformed else "CLOSED", "connection closed without an answer", "", elapsed_s)
    snippet = body[:300].decode("utf-8", "replace")
    if "html" in content_type.lower() and MARKUP_MARKER.encode() in body:
        at = body.find(MARKUP_MARKER.encode())
        return Outcome("REFLECTED", body[max(0, at - 80) : at + 80].decode("utf-8", "replace"), reason, elapsed_s)
    return Outcome(http_class(status), f"{status} {snippet}", reason, elapsed_s)


@dataclass
class Example:
    index: int
    surface: str
    target: str
    mutation: str
    response_class: str
    response: str
    request_b64: str
    request_bytes: int


@dataclass
class Tally:
    """Counts by surface and response class, by target (method or route) and class, and examples of
    every failing (surface, target, class)."""

    by_surface: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_target: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reasons: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[tuple[str, str, str], list[Example]] = field(default_factory=lambda: defaultdict(list))
    seconds: Counter[str] = field(default_factory=Counter)  # time spent answering, by target
    # What the failing inputs of each target and class were, numbers folded: which mutations fail.
    failing_kinds: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    inputs: int = 0

    def add(self, index: int, surface: str, target: str, mutation: str, request: bytes, outcome: Outcome) -> None:
        import base64

        self.inputs += 1
        self.by_surface[surface][outcome.response_class] += 1
        self.by_target[target][outcome.response_class] += 1
        self.seconds[target] += outcome.elapsed_s
        if outcome.reason:
            self.reasons[target][f"{outcome.response_class} {outcome.reason}"] += 1
        if outcome.failed:
            self.failing_kinds[f"{target} {outcome.response_class}"][
                re.sub(r"[0-9a-f]{4,}|[0-9]+", "N", mutation)[:100]
            ] += 1
            bucket = self.examples[(surface, target, outcome.response_class)]
            if len(bucket) < MAX_EXAMPLES:
                bucket.append(
                    Example(
                        index,
                        surface,
                        target,
                        mutation,
                        outcome.response_class,
                        outcome.detail[:500],
                        base64.b64encode(request[:65536]).decode(),
                        len(request),
                    )
                )

    def mean_ms(self) -> dict[str, float]:
        """Mean time to an answer by target, in milliseconds."""
        return {
            target: round(1000 * self.seconds[target] / max(1, sum(counts.values())), 1)
            for target, counts in sorted(self.by_target.items())
        }

    def without_reason(self) -> dict[str, dict[str, int]]:
        """Refusals that named no reason, by target and class, failures aside (informational: a gRPC
        status from the transport or the standard health service, an HTTP error of the framework)."""
        answers = {"OK", "HTTP_2XX", "HTTP_3XX", "CLOSED", "STREAM_OPEN"}
        found: dict[str, dict[str, int]] = {}
        for target, counts in sorted(self.by_target.items()):
            named: Counter[str] = Counter()
            for key, count in self.reasons.get(target, {}).items():
                named[key.split(" ", 1)[0]] += count
            missing = {
                c: n - named[c]
                for c, n in counts.items()
                if c not in answers and c not in FAILING_CLASSES and n > named[c]
            }
            if missing:
                found[target] = missing
        return found

    def unreached(self, targets: list[str]) -> list[str]:
        """Targets no input reached: none sent, or every one unanswered or refused by the transport
        (UNAVAILABLE: a channel that cannot connect would otherwise pass for a quiet surface)."""
        silent = {"UNAVAILABLE", "CANCELLED", "HANG", "CLIENT_ERROR", "NO_RESPONSE"}
        return [t for t in targets if not set(self.by_target.get(t, {})) - silent]

    def failures(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_surface.values():
            for name, count in counts.items():
                if name in FAILING_CLASSES:
                    total[name] += count
        return total


@dataclass
class LogFinding:
    service: str
    count: int
    samples: list[str]


def scan_log(path: Path, offset: int = 0) -> tuple[int, list[str]]:
    """Tracebacks in a service log from byte `offset` on: JSON lines with an "exc" key, raw Python
    tracebacks and asyncio's "Task exception was never retrieved". Returns (count, a few samples)."""
    if not path.exists():
        return 0, []
    count = 0
    samples: list[str] = []
    with path.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            hit = ""
            if line.startswith("{"):
                try:
                    entry: Any = json.loads(line)
                except ValueError:
                    entry = None
                if isinstance(entry, dict) and entry.get("exc"):
                    last = str(entry["exc"]).strip().splitlines()[-1:]
                    hit = f"{entry.get('msg', '')} | {last[0] if last else ''}"
            if not hit and any(marker in line for marker in TRACEBACK_MARKERS):
                hit = line
            if hit:
                count += 1
                if len(samples) < MAX_EXAMPLES:
                    samples.append(hit[:400])
    return count, samples


def table(tally: Tally) -> str:
    """Counts by surface (rows) and response class (columns), failing classes marked with '!'."""
    classes = sorted({name for counts in tally.by_surface.values() for name in counts})
    headers = ["surface", "inputs", *[f"{c}!" if c in FAILING_CLASSES else c for c in classes]]
    rows = []
    for surface in sorted(tally.by_surface):
        counts = tally.by_surface[surface]
        rows.append([surface, str(sum(counts.values())), *[str(counts.get(c, 0) or "") for c in classes]])
    total: Counter[str] = Counter()
    for counts in tally.by_surface.values():
        total.update(counts)
    rows.append(["TOTAL", str(sum(total.values())), *[str(total.get(c, 0) or "") for c in classes]])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator, *[line(row) for row in rows]])
