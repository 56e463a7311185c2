"""The house's dependency rule (docs/architecture.md, "Code map"), read from the import statements:
a service imports the runtime and the generated protos, never another service, a harness or a test;
the runtime imports no service; the local stack does not import the demo that drives it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
SERVICES = ("payment_intake", "invoice_minting", "ledger", "reimbursement", "gateway")
HARNESSES = ("fapiao_stack", "fapiao_bench", "fapiao_faults", "fapiao_cli", "tests")


def _imported_packages(package_dir: Path) -> dict[str, set[str]]:
    """Top-level package of every import (lazy ones inside functions included), by module path."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_no_harness_and_no_test(service: str) -> None:
    forbidden = (set(SERVICES) - {service}) | set(HARNESSES)
    offending = {
        module: sorted(names & forbidden)
        for module, names in _imported_packages(ROOT / "services" / service).items()
        if names & forbidden
    }
    assert not offending, offending


def test_the_runtime_imports_no_service_and_no_harness() -> None:
    forbidden = set(SERVICES) | set(HARNESSES)
    imports = _imported_packages(ROOT / "services" / "fapiao_runtime")
    offending = {module: sorted(names & forbidden) for module, names in imports.items() if names & forbidden}
    assert not offending, offending


def test_the_local_stack_does_not_import_the_cli_or_its_demo() -> None:
    imports = _imported_packages(ROOT / "deploy" / "local" / "fapiao_stack")
    offending = [module for module, names in imports.items() if "fapiao_cli" in names]
    assert not offending, offending


def test_the_demo_drives_the_stack() -> None:
    assert "fapiao_stack" in _imported_packages(ROOT / "services" / "fapiao_cli")["services/fapiao_cli/demo.py"]
