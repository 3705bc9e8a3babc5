"""The alert rules: generated files are fresh, promtool accepts them, and every alert is unit-tested both ways."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gradatim.monitoring.alerts import ALERTS, RULES_FILE, generated_files, render_prometheus_rule, render_rules

REPO = Path(__file__).resolve().parents[1]
PROMTOOL_TESTS = Path("tests/promtool/gradatim-alerts.test.yaml")


def _promtool() -> str:
    path = shutil.which("promtool")
    # Never skip: an alert rule nobody evaluated is an alert that may never fire.
    assert path, "promtool is not on PATH; install Debian's `prometheus` package (apt-get install prometheus)"
    return path


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_generated_alert_files_are_fresh():
    """manifests/monitoring/ alert files are generated from gradatim/monitoring/alerts.py; edit that, never the YAML."""
    for relative, text in generated_files().items():
        path = REPO / relative
        assert path.exists(), f"{relative} is missing; run `make monitoring`"
        assert path.read_text() == text, f"{relative} is stale; run `make monitoring`"


def test_prometheus_rule_carries_the_same_groups():
    rule = render_prometheus_rule()
    assert rule["spec"] == render_rules()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_promtool_checks_the_rules_file():
    result = _run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = _run_promtool("test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> how many firing and how many quiet (`exp_alerts: []`) checks the promtool tests hold."""
    cases: dict[str, dict[str, int]] = {}
    for group in yaml.safe_load((REPO / PROMTOOL_TESTS).read_text())["tests"]:
        for check in group.get("alert_rule_test", []):
            counts = cases.setdefault(check["alertname"], {"firing": 0, "quiet": 0})
            counts["firing" if check.get("exp_alerts") else "quiet"] += 1
    return cases


def _rendered_alerts() -> list[dict]:
    return [rule for group in render_rules()["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("alert", [a.name for a in ALERTS])
def test_every_alert_fires_and_stays_quiet_in_a_promtool_test(alert):
    counts = _alert_cases().get(alert, {"firing": 0, "quiet": 0})
    assert counts["firing"] >= 1, f"{alert} has no promtool case where it fires"
    assert counts["quiet"] >= 1, f"{alert} has no promtool case where it must not fire (exp_alerts: [])"


def test_every_alert_is_complete():
    for rule in _rendered_alerts():
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert "{{ $labels." in rule["annotations"]["description"], rule["alert"]


def test_every_runbook_anchor_is_a_section_of_docs_alerts():
    headings = {line[3:].strip().lower() for line in (REPO / "docs/alerts.md").read_text().splitlines() if line.startswith("## ")}
    for rule in _rendered_alerts():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in headings, f"docs/alerts.md has no `## {rule['alert']}` section for {rule['annotations']['runbook_url']}"


def test_alerts_use_only_documented_metrics():
    """docs/metrics.md is the contract; digits are allowed for `gradatim_s3_errors_total`."""
    documented = set(re.findall(r"`(gradatim_[a-z0-9_]+)`", (REPO / "docs/metrics.md").read_text()))
    for rule in _rendered_alerts():
        for name in re.findall(r"gradatim_[a-z0-9_]+", rule["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in documented, f"{rule['alert']} uses {name}, which docs/metrics.md does not document"
