"""`python -m gradatim.monitoring [ROOT]` (`make monitoring`): writes manifests/monitoring/ from the code here."""

from __future__ import annotations

import sys
from pathlib import Path

from gradatim.generated import write_files

from gradatim.monitoring import alerts, monitors


# The Helm chart reads its copies of the monitoring objects (a chart cannot reach files outside its directory).
CHART_FILES = Path("charts/gradatim/files/monitoring")
CHART_COPIES = ("servicemonitor.yaml", "podmonitor.yaml", "prometheus-rule.yaml", "grafana-dashboard-configmap.yaml")


def generated_files() -> dict[Path, str]:
    """Every generated file under manifests/monitoring/ and the chart's copies, by path relative to the repo root."""
    files = {Path(relative): text for module in (alerts, monitors) for relative, text in module.generated_files().items()}
    files.update({CHART_FILES / name: files[monitors.MONITORING_DIR / name] for name in CHART_COPIES})
    return files


def write_generated_files(root: Path) -> list[Path]:
    return write_files(root, generated_files())


if __name__ == "__main__":
    for p in write_generated_files(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(f"Wrote {p}")
