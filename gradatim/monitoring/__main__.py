"""`python -m gradatim.monitoring [ROOT]` (`make monitoring`): writes manifests/monitoring/ from the code here."""

from __future__ import annotations

import sys
from pathlib import Path

from gradatim.monitoring import alerts, monitors


def generated_files() -> dict[Path, str]:
    """Every generated file under manifests/monitoring/, by path relative to the repo root."""
    return {Path(relative): text for module in (alerts, monitors) for relative, text in module.generated_files().items()}


def write_generated_files(root: Path) -> list[Path]:
    written = []
    for relative, text in generated_files().items():
        path = Path(root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_generated_files(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(f"Wrote {p}")
