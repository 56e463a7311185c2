"""Operator certificates: only they name an operator, and they never pass for an organisation or a service."""

from __future__ import annotations

import pytest
from fapiao_runtime.pki import (
    create_ca,
    issue_operator_certificate,
    issue_organisation_certificate,
    issue_service_certificate,
    operator_name,
    organisation_tax_id,
    service_name,
)

pytestmark = pytest.mark.unit

TAX_ID = "91440300MA5G4LPE1D"


def test_each_kind_of_certificate_names_only_its_own_kind() -> None:
    ca = create_ca()
    operator = issue_operator_certificate(ca, "ops.alice-1").cert_pem
    organisation = issue_organisation_certificate(ca, TAX_ID, "深圳测试科技有限公司").cert_pem
    service = issue_service_certificate(ca, "gateway").cert_pem
    assert operator_name(operator) == "ops.alice-1"
    assert organisation_tax_id(operator) is None and service_name(operator) is None
    assert operator_name(organisation) is None
    assert operator_name(service) is None


@pytest.mark.parametrize("name", ["", "-alice", "a" * 65, "alice bob", "alice/../x", "alice\n", "张三"])
def test_an_operator_name_must_be_a_plain_word(name: str) -> None:
    with pytest.raises(ValueError, match="operator name"):
        issue_operator_certificate(create_ca(), name)
