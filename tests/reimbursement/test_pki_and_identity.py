"""Unit tests of the local CA: certificates carry the organisation's tax id; keys are private files."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from fapiao_runtime.pki import (
    create_ca,
    issue_organisation_certificate,
    issue_server_certificate,
    organisation_tax_id,
    read_pem_pair,
    write_pem_pair,
)

from tests.reimbursement.support import new_tax_id

pytestmark = pytest.mark.unit


def test_organisation_certificate_carries_tax_id_and_chains_to_ca() -> None:
    ca = create_ca()
    tax_id = new_tax_id()
    issued = issue_organisation_certificate(ca, tax_id, "Acme Finance")
    assert organisation_tax_id(issued.cert_pem) == tax_id
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(create_ca("Other").cert_pem))


def test_server_certificate_is_not_an_organisation_and_has_local_sans() -> None:
    ca = create_ca()
    server = issue_server_certificate(ca, "reimbursement")
    assert organisation_tax_id(server.cert_pem) is None
    san = x509.load_pem_x509_certificate(server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize("bad", ["", "123", "91440300000000001X", "91440300MA5D00001I"])
def test_invalid_tax_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        issue_organisation_certificate(create_ca(), bad, "Acme")


def test_pem_files_keys_are_0600(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = create_ca()
    cert_path, key_path = write_pem_pair(ca, tmp_path / "pki", "ca")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert read_pem_pair(tmp_path / "pki", "ca") == ca


def test_cli_creates_ca_server_and_organisation_certificates(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from reimbursement.cli import main

    directory = str(tmp_path / "pki")
    tax_id = new_tax_id()
    assert main(["ca", "init", "--dir", directory]) == 0
    assert main(["ca", "init", "--dir", directory]) == 1, "an existing CA is never replaced silently"
    assert main(["ca", "issue-server", "--dir", directory]) == 0
    assert main(["ca", "issue-org", "--dir", directory, "--tax-id", tax_id, "--name", "Acme"]) == 0
    assert main(["ca", "issue-org", "--dir", directory, "--tax-id", "not-a-code", "--name", "Acme"]) == 2
    assert main(["ca", "issue-service", "--dir", directory, "--name", "gateway"]) == 0
    service = read_pem_pair(tmp_path / "pki", "service-gateway")
    assert organisation_tax_id(service.cert_pem) is None, "a service certificate never passes for an organisation"
    org = read_pem_pair(tmp_path / "pki", f"org-{tax_id}")
    assert organisation_tax_id(org.cert_pem) == tax_id
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate(org.cert_pem).verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate(service.cert_pem).verify_directly_issued_by(ca)
    assert stat.S_IMODE((tmp_path / "pki" / f"org-{tax_id}.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in capsys.readouterr().out
