"""The control plane's certificates and keys, made with `cryptography`.

ECDSA P-256 everywhere: fast to generate and accepted by the API server for
serving, client auth and ServiceAccount token signing (ES256).
Files are created once and reused by later `up`s, so kubeconfigs stay valid.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)  # a local dev cluster should never expire under you
API_SERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVER_IPS = ("127.0.0.1", "10.0.0.1")  # loopback and the first service IP of 10.0.0.0/24


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    api_server: CertPair
    admin: CertPair
    controller_manager: CertPair
    service_account_key: Path
    service_account_public_key: Path


def ensure_pki(pki_dir: Path) -> Pki:
    """Creates whatever files are missing under `pki_dir` and returns their paths."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca=CertPair(pki_dir / "ca.crt", pki_dir / "ca.key"),
        api_server=CertPair(pki_dir / "apiserver.crt", pki_dir / "apiserver.key"),
        admin=CertPair(pki_dir / "admin.crt", pki_dir / "admin.key"),
        controller_manager=CertPair(pki_dir / "kube-controller-manager.crt", pki_dir / "kube-controller-manager.key"),
        service_account_key=pki_dir / "sa.key",
        service_account_public_key=pki_dir / "sa.pub",
    )
    if not (pki.ca.cert.exists() and pki.ca.key.exists()):
        write_ca(pki.ca)
        for stale in (pki.api_server, pki.admin, pki.controller_manager):  # signed by a CA that is gone
            stale.cert.unlink(missing_ok=True)
    ca_cert, ca_key = load_pair(pki.ca)
    if not pki.api_server.cert.exists():
        write_signed(pki.api_server, ca_cert, ca_key, common_name="kube-apiserver", server=True)
    if not pki.admin.cert.exists():
        write_signed(pki.admin, ca_cert, ca_key, common_name="gradatim-admin", organization="system:masters")
    if not pki.controller_manager.cert.exists():
        write_signed(pki.controller_manager, ca_cert, ca_key, common_name="system:kube-controller-manager")
    if not pki.service_account_key.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pki.service_account_public_key.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        write_private_key(pki.service_account_key, key)
    return pki


def write_ca(pair: CertPair) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gradatim-ca")])
    cert = (
        certificate_builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_signed(
    pair: CertPair,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    organization: str | None = None,
    server: bool = False,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        certificate_builder(x509.Name(attributes), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if server:
        names = [x509.DNSName(n) for n in API_SERVER_DNS_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in API_SERVER_IPS]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
    )


def load_pair(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    return cert, key


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
