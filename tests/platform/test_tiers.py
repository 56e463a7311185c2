"""The suite refuses a test module with no tier marker, or with two, so no tier selection skips it."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import pytest

from tests.conftest import pytest_collection_modifyitems

pytestmark = pytest.mark.unit


def _item(name: str, marks: object, own: list[pytest.MarkDecorator] | None = None) -> SimpleNamespace:
    """A collected test of module `name` (whose pytestmark is `marks`), with marks of its own `own`."""
    module = ModuleType(name)
    if marks is not None:
        module.pytestmark = marks  # type: ignore[attr-defined]
    listed = marks if isinstance(marks, list) else [] if marks is None else [marks]
    every = [m.mark for m in [*listed, *(own or [])]]
    return SimpleNamespace(module=module, name="test_x", iter_markers=lambda: iter(every))


@pytest.mark.parametrize(
    "marks",
    [None, [], pytest.mark.timeout(5), [pytest.mark.browser, pytest.mark.e2e]],
    ids=["absent", "empty", "other", "two"],
)
def test_a_module_without_exactly_one_tier_is_refused(marks: object) -> None:
    with pytest.raises(pytest.UsageError, match=r"tests\.bad"):
        pytest_collection_modifyitems(None, [_item("tests.good", pytest.mark.unit), _item("tests.bad", marks)])  # type: ignore[arg-type]


def test_one_tier_alone_or_beside_other_marks_is_accepted() -> None:
    items = [_item("tests.a", pytest.mark.integration), _item("tests.b", [pytest.mark.e2e, pytest.mark.timeout(60)])]
    pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]


def test_a_test_with_a_second_tier_of_its_own_is_refused() -> None:
    with pytest.raises(pytest.UsageError, match=r"tests\.mixed::test_x"):
        pytest_collection_modifyitems(None, [_item("tests.mixed", pytest.mark.e2e, own=[pytest.mark.unit])])  # type: ignore[arg-type]
