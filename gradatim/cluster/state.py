"""The control plane's persisted state and what clients need to use it."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gradatim.cluster.layout import StateLayout

S3_BUCKET = "gradatim"
S3_REGION = "us-east-1"  # SeaweedFS ignores regions; boto3 needs one


@dataclass
class ProcessRecord:
    pid: int
    command: list[str]

    @property
    def executable(self) -> str:
        return self.command[0]


@dataclass
class ClusterState:
    """Kept in `state.json`. Ports and credentials survive `down`, so a later `up`
    reuses them; `processes` is empty while the control plane is stopped."""

    ports: dict[str, int] = field(default_factory=dict)
    s3_access_key: str = ""
    s3_secret_key: str = ""
    kubectl: str = ""
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: StateLayout) -> ClusterState:
        if not layout.state_file.exists():
            return cls()
        raw = json.loads(layout.state_file.read_text())
        raw["processes"] = {name: ProcessRecord(**p) for name, p in raw.get("processes", {}).items()}
        return cls(**raw)

    def save(self, layout: StateLayout) -> None:
        """Written to a temp file and renamed, so readers never see half a file."""
        layout.root.mkdir(parents=True, exist_ok=True)
        temporary = layout.state_file.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        os.replace(temporary, layout.state_file)

    def ensure_s3_credentials(self) -> None:
        if not self.s3_access_key:
            self.s3_access_key = "GRADATIM" + secrets.token_hex(6).upper()
            self.s3_secret_key = secrets.token_urlsafe(30)


@dataclass(frozen=True)
class ClusterInfo:
    """Everything a client needs to talk to a running control plane."""

    state_dir: Path
    kubeconfig: Path
    env_file: Path
    api_server: str
    kubectl: Path
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    s3_bucket: str
    prometheus_url: str
    prometheus_sd_dir: Path

    @classmethod
    def from_state(cls, layout: StateLayout, state: ClusterState) -> ClusterInfo:
        return cls(
            state_dir=layout.root,
            kubeconfig=layout.kubeconfig,
            env_file=layout.env_file,
            api_server=f"https://127.0.0.1:{state.ports['api_server']}",
            kubectl=Path(state.kubectl),
            s3_endpoint=f"http://127.0.0.1:{state.ports['s3']}",
            s3_access_key=state.s3_access_key,
            s3_secret_key=state.s3_secret_key,
            s3_region=S3_REGION,
            s3_bucket=S3_BUCKET,
            prometheus_url=f"http://127.0.0.1:{state.ports['prometheus']}",
            prometheus_sd_dir=layout.prometheus_sd_dir,
        )

    @property
    def env(self) -> dict[str, str]:
        """The variables written to `cluster.env`."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECTL": str(self.kubectl),
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "GRADATIM_S3_ENDPOINT": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": self.s3_region,
            "GRADATIM_S3_BUCKET": self.s3_bucket,
            "PROMETHEUS_URL": self.prometheus_url,
            "GRADATIM_PROMETHEUS_SD_DIR": str(self.prometheus_sd_dir),
        }

    def s3_client(self):
        """A boto3 S3 client for the cluster's SeaweedFS."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.s3_access_key,
            aws_secret_access_key=self.s3_secret_key,
            region_name=self.s3_region,
        )


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    ports: dict[str, int]
    running: bool
    healthy: bool
