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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
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


# The webhook servers of the Kubeflow controllers, reached by the API server at https://127.0.0.1:<port>. The DNS
# names are those of the Services a cluster install uses: training-operator's cert rotator checks its Secret's
# certificate against its Service name (and its CA against `training-operator-ca`) and replaces it if they differ.
WEBHOOK_DNS_NAMES = (
    "localhost",
    "training-operator.kubeflow.svc",
    "kubeflow-trainer-controller-manager.kubeflow-system.svc",
    "jobset-webhook-service.jobset-system.svc",
)
WEBHOOK_CA_DNS_NAMES = ("training-operator-ca",)


@dataclass(frozen=True)
class WebhookPki:
    ca: CertPair
    serving: CertPair


def ensure_webhook_pki(pki_dir: Path) -> WebhookPki:
    """A CA of its own for the webhooks (its key goes into a Secret the training-operator reads, so it must not be
    the cluster CA) and one serving certificate for all of them. RSA keys in PKCS#1, the only kind the
    training-operator's cert rotator parses."""
    pki = WebhookPki(CertPair(pki_dir / "webhook-ca.crt", pki_dir / "webhook-ca.key"),
                     CertPair(pki_dir / "webhook.crt", pki_dir / "webhook.key"))
    if not (pki.ca.cert.exists() and pki.ca.key.exists()):
        write_ca(pki.ca, common_name="gradatim-webhook-ca", dns_names=WEBHOOK_CA_DNS_NAMES, rsa_keys=True)
        pki.serving.cert.unlink(missing_ok=True)
    if not pki.serving.cert.exists():
        ca_cert, ca_key = load_pair(pki.ca)
        write_signed(pki.serving, ca_cert, ca_key, common_name="gradatim-webhooks", server=True,
                     dns_names=WEBHOOK_DNS_NAMES, ips=("127.0.0.1",), rsa_keys=True)
    return pki


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


def new_key(rsa_keys: bool = False):
    return rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_keys else ec.generate_private_key(ec.SECP256R1())


def write_ca(pair: CertPair, common_name: str = "gradatim-ca", dns_names: tuple[str, ...] = (), rsa_keys: bool = False) -> None:
    key = new_key(rsa_keys)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = certificate_builder(name, name, key.public_key())
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
    cert = (
        builder
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
    dns_names: tuple[str, ...] = API_SERVER_DNS_NAMES,
    ips: tuple[str, ...] = API_SERVER_IPS,
    rsa_keys: bool = False,
) -> None:
    key = new_key(rsa_keys)
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
        names = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
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


def write_private_key(path: Path, key) -> None:
    # RSA keys as PKCS#1 ("RSA PRIVATE KEY"), which Go's x509.ParsePKCS1PrivateKey wants.
    form = serialization.PrivateFormat.TraditionalOpenSSL if isinstance(key, rsa.RSAPrivateKey) else serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
