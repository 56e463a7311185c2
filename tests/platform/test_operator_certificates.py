"""Operator certificates: only they name an operator, and they never pass for an organisation or a service."""

from __future__ import annotations

from pathlib import Path

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


def test_the_local_stack_issues_the_operator_and_the_intake_admin_certificates(tmp_path: Path) -> None:
    from cryptography import x509
    from fapiao_stack.config import process_environment
    from fapiao_stack.services import INTAKE_ADMIN_PORT, local_services

    intake = next(spec for spec in local_services() if spec.module == "payment_intake")
    env = process_environment(intake, tmp_path, {}, "10.0.0.5")
    assert env["FAPIAO_INTAKE_ADMIN_PORT"] == str(INTAKE_ADMIN_PORT)
    assert INTAKE_ADMIN_PORT in intake.ports()  # `fapiao up` waits for it to be free like the others
    server = x509.load_pem_x509_certificate(Path(env["FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE"]).read_bytes())
    ips = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in ips.get_values_for_type(x509.IPAddress)} == {"10.0.0.5", "127.0.0.1"}
    assert Path(env["FAPIAO_INTAKE_ADMIN_TLS_KEY_FILE"]).stat().st_mode & 0o077 == 0
    operator = tmp_path / "pki" / "operator-local"
    assert operator_name(operator.with_suffix(".crt").read_bytes()) == "local"
    assert operator.with_suffix(".key").stat().st_mode & 0o077 == 0
    assert Path(env["FAPIAO_INTAKE_ADMIN_TLS_CLIENT_CA_FILE"]) == tmp_path / "pki" / "ca.crt"
