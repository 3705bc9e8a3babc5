"""Pure renderers for the files the control plane writes: kubeconfigs, env file, configs."""

from __future__ import annotations

import base64
import json

import yaml

CLUSTER_NAME = "gradatim"
OPERATOR_JOB, TRAINER_JOB = "gradatim-operator", "gradatim-trainer"  # the scrape jobs docs/metrics.md names


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


def render_token_kubeconfig(server: str, ca_pem: bytes, token: str, user: str) -> str:
    """A kubeconfig that authenticates with a ServiceAccount's bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
    }
    return yaml.safe_dump(config, sort_keys=False)


def render_env_file(env: dict[str, str]) -> str:
    """`KEY=VALUE` lines; values are plain (no quoting), which both shells and dotenv read."""
    return "".join(f"{key}={value}\n" for key, value in env.items())


def parse_env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def render_prometheus_config(self_address: str, sd_dir: str) -> str:
    """Scrapes itself, the operator and every running trainer, found through file_sd targets in `sd_dir`
    (`operator-*.json` written by whoever starts an operator, `pod_*.json` by the pod runner, one per trainer pod).
    `honor_labels`: a stage's series carry its own `namespace`, which must win over the target's."""

    def file_sd(job: str, pattern: str) -> dict:
        return {"job_name": job, "honor_labels": True, "file_sd_configs": [{"files": [f"{sd_dir}/{pattern}"], "refresh_interval": "1s"}]}

    config = {
        # 1s instead of the 1m default: local runs are short, and a stage that lives ten seconds should still
        # leave a curve (and two samples for rate()) behind.
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]},
            file_sd(OPERATOR_JOB, "operator-*.json"),
            file_sd(TRAINER_JOB, "pod_*.json"),
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
