"""A local certificate authority for Fapiao's TLS and mutual TLS (ECDSA P-256 keys, X.509 v3).

Organisation client certificates carry the organisation's unified social credit code (18 characters)
in the subject's serialNumber attribute (OID 2.5.4.5), the organisation name in O, and the fixed
OU "fapiao-organisation" so a service certificate can never pass as an organisation. Servers take the
tax id from the peer certificate the TLS handshake verified (see `organisation_tax_id`). Operator
certificates (the people who run the network: they call the admin services) carry the operator's name
in CN under the OU "fapiao-operator" (see `operator_name`); no other kind of certificate passes for one.

Private keys are written with mode 0600 and are never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.tax_id import validate_uscc

ORGANISATION_UNIT = "fapiao-organisation"
SERVICE_UNIT = "fapiao-service"
OPERATOR_UNIT = "fapiao-operator"
# An operator's name: a login-like word, so it can name a file (operator-NAME.crt) and a log field.
OPERATOR_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Unified social credit code: 18 characters of digits and upper-case letters (I, O, S, V, Z excluded).
TAX_ID_PATTERN = re.compile(r"[0-9A-HJ-NPQRTUWXY]{18}")
DEFAULT_VALIDITY_DAYS = 365
CA_VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "Fapiao Local CA", validity_days: int = CA_VALIDITY_DAYS) -> IssuedCertificate:
    """A self-signed CA certificate (path length 0: it signs leaf certificates only)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _load_ca(ca: IssuedCertificate) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("CA key must be an EC private key")
    return cert, key


def _leaf(
    ca: IssuedCertificate,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    validity_days: int,
) -> IssuedCertificate:
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_certificate(
    ca: IssuedCertificate,
    common_name: str,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> IssuedCertificate:
    """A TLS server certificate for `common_name` with the given DNS and IP subject alternative names."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans, validity_days)


def issue_organisation_certificate(
    ca: IssuedCertificate, tax_id: str, name: str, validity_days: int = DEFAULT_VALIDITY_DAYS
) -> IssuedCertificate:
    """A TLS client certificate for the organisation with unified social credit code `tax_id`.

    Raises ValueError for a tax id that is not a valid GB 32100-2015 code, or an empty name.
    """
    try:
        tax_id = validate_uscc(tax_id)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    if not name.strip():
        raise ValueError("organisation name must not be empty")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, tax_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, tax_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name.strip()[:64]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ORGANISATION_UNIT),
        ]
    )
    return _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity_days)


def issue_service_certificate(
    ca: IssuedCertificate, service_name: str, validity_days: int = DEFAULT_VALIDITY_DAYS
) -> IssuedCertificate:
    """A TLS client certificate for a Fapiao service calling another one over mutual TLS.

    It names the service (CN) under its own unit and carries no tax id, so it never passes for an
    organisation. Issue service certificates from a CA of their own (FAPIAO_GRPC_TLS_CLIENT_CA_FILE)
    when organisations hold certificates too, so that theirs do not open the internal services.
    """
    if not service_name.strip():
        raise ValueError("service name must not be empty")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, service_name.strip()[:64]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SERVICE_UNIT),
        ]
    )
    return _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity_days)


def issue_operator_certificate(
    ca: IssuedCertificate, operator: str, validity_days: int = DEFAULT_VALIDITY_DAYS
) -> IssuedCertificate:
    """A TLS client certificate for an operator calling the admin services over mutual TLS.

    Raises ValueError for a name that is not 1-64 of [A-Za-z0-9._-] starting with a letter or digit.
    """
    if not OPERATOR_NAME_PATTERN.fullmatch(operator):
        raise ValueError("operator name must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, operator),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_UNIT),
        ]
    )
    return _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity_days)


def operator_name(cert_pem: bytes) -> str | None:
    """The operator an operator certificate names (its CN), or None for any other certificate.

    Like `organisation_tax_id`, only for a certificate the TLS handshake already verified.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(units) != 1 or units[0].value != OPERATOR_UNIT:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    name = value if isinstance(value, str) else value.decode()
    return name if OPERATOR_NAME_PATTERN.fullmatch(name) else None


def service_name(cert_pem: bytes) -> str | None:
    """The service a service certificate names (its CN), or None for any other certificate.

    Like `organisation_tax_id`, only for a certificate the TLS handshake already verified.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not any(u.value == SERVICE_UNIT for u in units):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def organisation_tax_id(cert_pem: bytes) -> str | None:
    """The unified social credit code carried by an organisation certificate, or None if it has none.

    Only call this on a certificate the TLS handshake already verified against the CA: this function
    reads the subject, it does not check the chain.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not any(u.value == ORGANISATION_UNIT for u in units):
        return None
    serials = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1:
        return None
    value = serials[0].value
    tax_id = value if isinstance(value, str) else value.decode()
    return tax_id if TAX_ID_PATTERN.fullmatch(tax_id) else None


def write_pem_pair(issued: IssuedCertificate, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write <stem>.crt (0644) and <stem>.key (0600, created with that mode) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(issued.cert_pem)
    cert_path.chmod(0o644)
    # Create the key file with 0600 from the start so it is never readable by others, even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(issued.key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


def read_pem_pair(directory: Path, stem: str) -> IssuedCertificate:
    """Read <stem>.crt and <stem>.key written by `write_pem_pair`."""
    return IssuedCertificate((directory / f"{stem}.crt").read_bytes(), (directory / f"{stem}.key").read_bytes())
