"""Prometheus file-based service discovery: the embedded Prometheus scrapes whatever target files lie in its
sd dir (`operator-*.json` for the operator job, `pod_*.json` for trainer pods; see render.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_targets(path: Path, groups: list[dict[str, Any]]) -> Path:
    """Writes file_sd target groups atomically: Prometheus must never read half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)
    return path


def operator_targets(sd_dir: Path, name: str, port: int, host: str = "127.0.0.1") -> Path:
    """The target file for an operator serving metrics on `port`; delete it when the operator stops."""
    return write_targets(Path(sd_dir) / f"operator-{name}.json", [{"targets": [f"{host}:{port}"], "labels": {"instance_name": name}}])
