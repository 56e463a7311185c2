"""The nemesis's schedule: reproducible from its seed, every kind at least once, no two faults at once."""

from __future__ import annotations

import itertools

import pytest
from fapiao_faults.nemesis import ALL_KINDS, KILL_POSTGRES, NETWORK_KINDS, PROCESS_KINDS, plan
from fapiao_faults.system import BROKER, POSTGRES, SERVICE, VALIDATOR

pytestmark = pytest.mark.unit

PROCESSES = {
    "payment_intake": SERVICE, "invoice_minting": SERVICE, "reimbursement": SERVICE, "gateway": SERVICE,
    "ledger-1": VALIDATOR, "ledger-2": VALIDATOR, "ledger-3": VALIDATOR, "ledger-4": VALIDATOR,
    "kafka": BROKER, "postgres": POSTGRES,
}  # fmt: skip


def test_the_seed_reproduces_the_schedule() -> None:
    first = plan(42, 600, 24, PROCESSES, network=False)
    assert first == plan(42, 600, 24, PROCESSES, network=False)
    assert first != plan(43, 600, 24, PROCESSES, network=False)


@pytest.mark.parametrize("network", [False, True])
def test_every_kind_appears_and_faults_never_overlap(network: bool) -> None:
    for seed in range(20):
        faults = plan(seed, 600, 24, PROCESSES, network=network, hosts=["host-a", "host-b"])
        assert len(faults) == 24
        kinds = {f.kind for f in faults}
        assert kinds == set(ALL_KINDS if network else PROCESS_KINDS)
        for earlier, later in itertools.pairwise(faults):
            assert earlier.at_s + earlier.duration_s < later.at_s
        assert faults[0].at_s >= 15 and faults[-1].at_s + faults[-1].duration_s <= 600 - 30
        for fault in faults:
            assert fault.duration_s > 0
            if fault.kind == KILL_POSTGRES:
                assert PROCESSES[fault.target] == POSTGRES


def test_a_short_run_still_holds_every_process_kind() -> None:
    faults = plan(1, 80, 6, PROCESSES, network=False)
    assert {f.kind for f in faults} == set(PROCESS_KINDS)
    assert all(8 <= f.at_s and f.at_s + f.duration_s <= 80 - 16 for f in faults)
    assert not {f.kind for f in faults} & set(NETWORK_KINDS)


def test_without_an_embedded_database_there_is_no_database_crash() -> None:
    processes = {name: kind for name, kind in PROCESSES.items() if kind != POSTGRES}
    faults = plan(3, 300, 10, processes, network=False)
    assert KILL_POSTGRES not in {f.kind for f in faults}
