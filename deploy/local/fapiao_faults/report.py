"""What a run leaves behind: build/faults/summary.json, a summary table, build/faults/timeline.png."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from fapiao_faults.checker import FIGURES, Verdict
from fapiao_faults.history import FAIL, OK, OP_KINDS, UNKNOWN, Op
from fapiao_faults.nemesis import Fault

DETAILS_KEPT = 50


def summary(
    *,
    seed: int,
    system: str,
    system_note: str,
    settings: dict[str, Any],
    started: float,
    ended: float,
    faults: list[Fault],
    history: list[Op],
    verdict: Verdict,
) -> dict[str, Any]:
    injected = Counter(f.kind for f in faults if f.injected)
    outcomes = Counter(op.outcome for op in history)
    pairs = Counter((op.kind, op.outcome) for op in history)
    by_kind = {kind: {outcome: pairs.get((kind, outcome), 0) for outcome in (OK, FAIL, UNKNOWN)} for kind in OP_KINDS}
    return {
        "seed": seed,
        "system": system,
        "system_note": system_note,
        "workload": settings,
        "duration_s": round(ended - started, 1),
        "faults_injected": sum(injected.values()),
        "faults_by_kind": dict(sorted(injected.items())),
        "faults_skipped": [{"kind": f.kind, "target": f.target, "why": f.note} for f in faults if not f.injected],
        "operations": len(history),
        "operations_by_outcome": {outcome: outcomes.get(outcome, 0) for outcome in (OK, FAIL, UNKNOWN)},
        "operations_by_kind": by_kind,
        "codes_during_faults": codes_during_faults(faults, history),
        "checks": {name: verdict.counts[name] for name in FIGURES},
        "passed": verdict.passed,
        "details": {name: items[:DETAILS_KEPT] for name, items in verdict.details.items() if items},
        "schedule": [f.to_dict() for f in faults],
    }


def codes_during_faults(faults: list[Fault], history: list[Op]) -> dict[str, dict[str, int]]:
    """For each kind of fault, what the clients' calls that overlapped its windows got: the gRPC code or
    HTTP status ("OK" for an acknowledgement), so a run shows how each fault looked to a client."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for fault in faults:
        if fault.injected:
            windows.setdefault(fault.kind, []).append((fault.start, fault.end))
    codes: dict[str, Counter[str]] = {kind: Counter() for kind in sorted(windows)}
    for op in history:
        for kind, spans in windows.items():
            if any(op.start <= end and op.end >= start for start, end in spans):
                codes[kind][op.code or op.outcome.upper()] += 1
    return {kind: dict(counter.most_common()) for kind, counter in codes.items()}


def write_summary(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def table(data: dict[str, Any]) -> str:
    lines = [
        f"seed {data['seed']} on the {data['system']} stack ({data['duration_s']} s)"
        + (f": {data['system_note']}" if data["system_note"] else ""),
        "",
        f"{'faults injected':<28}{data['faults_injected']:>8}",
    ]
    for kind, count in data["faults_by_kind"].items():
        lines.append(f"  {kind:<26}{count:>8}")
    if data["faults_skipped"]:
        lines.append(f"  {'skipped':<26}{len(data['faults_skipped']):>8}")
    lines.append(f"{'operations':<28}{data['operations']:>8}")
    lines.append(f"  {'':<18}{'ok':>8}{'fail':>8}{'unknown':>8}")
    for kind, counts in data["operations_by_kind"].items():
        lines.append(f"  {kind:<18}{counts[OK]:>8}{counts[FAIL]:>8}{counts[UNKNOWN]:>8}")
    if data.get("codes_during_faults"):
        lines.append("what clients got during each kind of fault")
        for kind, codes in data["codes_during_faults"].items():
            lines.append(f"  {kind:<26}" + ", ".join(f"{code} {count}" for code, count in codes.items()))
    lines.append("")
    for name, count in data["checks"].items():
        lines.append(f"{name:<28}{count:>8}{'' if count == 0 else '   <-- FAILED'}")
    for name, items in data["details"].items():
        for item in items[:5]:
            lines.append(f"  {name}: {item}")
    lines.append("")
    lines.append("PASSED: nothing acknowledged was lost" if data["passed"] else "FAILED: the checker found problems")
    return "\n".join(lines)


def timeline(path: Path, history: list[Op], faults: list[Fault], started: float, bin_s: float = 5.0) -> None:
    """Throughput (operations completed per second, by outcome) and latency over time, fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 8), sharex=True)
    end = max([op.end for op in history] + [f.end for f in faults] + [started + bin_s]) - started
    bins = max(1, int(end // bin_s) + 1)
    colours = {OK: "tab:green", FAIL: "tab:orange", UNKNOWN: "tab:red"}
    xs = [i * bin_s for i in range(bins)]
    bottom_stack = [0.0] * bins
    for outcome in (OK, FAIL, UNKNOWN):
        counts = [0.0] * bins
        for op in history:
            if op.outcome == outcome:
                counts[min(bins - 1, int((op.end - started) // bin_s))] += 1 / bin_s
        top.bar(xs, counts, width=bin_s, bottom=bottom_stack, align="edge", color=colours[outcome], label=outcome)
        bottom_stack = [a + b for a, b in zip(bottom_stack, counts, strict=True)]
    top.set_ylabel("operations / s")
    top.legend(loc="upper right")
    for outcome in (OK, FAIL, UNKNOWN):
        points = [(op.start - started, max(op.latency_s, 1e-3)) for op in history if op.outcome == outcome]
        if points:
            bottom.scatter(*zip(*points, strict=True), s=4, color=colours[outcome], label=outcome, alpha=0.6)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (s)")
    bottom.set_xlabel("seconds since start")
    for fault in faults:
        if not fault.injected:
            continue
        for axis in (top, bottom):
            axis.axvspan(fault.start - started, fault.end - started, color="tab:grey", alpha=0.2)
        top.annotate(
            f"{fault.kind}\n{fault.target}",
            xy=(fault.start - started, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            va="top",
        )
    top.set_title("Fapiao under faults: throughput and latency (shaded: fault windows)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
