"""Health probes for each component, plain HTTP(S) with the standard library."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from gradatim.cluster.pki import Pki


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def admin_tls_context(pki: Pki) -> ssl.SSLContext:
    """Verifies the API server against our CA and authenticates as the admin user."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    return context


def self_signed_context() -> ssl.SSLContext:
    """kube-controller-manager serves /healthz with a self-signed cert of its own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def etcd_healthy(client_url: str) -> bool:
    return http_ok(f"{client_url}/health")


def api_server_ready(server: str, pki: Pki) -> bool:
    return http_ok(f"{server}/readyz", admin_tls_context(pki))


def controller_manager_healthy(port: int) -> bool:
    return http_ok(f"https://127.0.0.1:{port}/healthz", self_signed_context())


def controller_ready(port: int) -> bool:
    """A controller-runtime manager's readyz: true once its webhook server serves with its certificates."""
    return http_ok(f"http://127.0.0.1:{port}/readyz")


def prometheus_ready(url: str) -> bool:
    return http_ok(f"{url}/-/ready")


def s3_answering(endpoint: str, access_key: str, secret_key: str, region: str) -> bool:
    """True once an authenticated ListBuckets succeeds (the gateway is up and has loaded our identities)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        client.list_buckets()
        return True
    except Exception:  # connection refused, 5xx while the filer starts, auth not loaded yet
        return False
