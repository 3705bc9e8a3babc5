"""Pure renderers for the files the control plane writes: kubeconfigs, env file, configs."""

from __future__ import annotations

import base64
import json

import yaml

CLUSTER_NAME = "gradatim"


def render_kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> str:
    """A self-contained kubeconfig (certs embedded), so it can be copied anywhere."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def render_env_file(env: dict[str, str]) -> str:
    """`KEY=VALUE` lines; values are plain (no quoting), which both shells and dotenv read."""
    return "".join(f"{key}={value}\n" for key, value in env.items())


def parse_env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def render_prometheus_config(self_address: str, sd_dir: str) -> str:
    config = {
        # 5s instead of the 1m default: runs are short and tests wait for the first scrape.
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]},
            {
                "job_name": "gradatim",
                "file_sd_configs": [{"files": [f"{sd_dir}/*.json"], "refresh_interval": "5s"}],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def render_s3_identities(access_key: str, secret_key: str) -> str:
    """SeaweedFS S3 identity config: one admin identity for all Gradatim clients."""
    identity = {
        "name": "gradatim",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return json.dumps({"identities": [identity]}, indent=2)
