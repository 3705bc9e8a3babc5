"""The Grafana dashboard and the scrape monitors: fresh on disk, on the metrics contract, and valid PromQL.

No cluster: the queries are parsed by promtool (Debian's prometheus package), the rest is plain data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gradatim.monitoring.dashboard import CONFIGMAP_KEY, build_dashboard, panel_queries, render_dashboard_configmap
from gradatim.monitoring.__main__ import generated_files, write_generated_files
from gradatim.monitoring.monitors import render_pod_monitor, render_service_monitor

ROOT = Path(__file__).resolve().parents[1]
METRICS_DOC = ROOT / "docs" / "metrics.md"
SCOPE_MATCHERS = ('namespace=~"$namespace"', 'pipeline=~"$pipeline"')
SELECTOR = re.compile(r"\b(gradatim_[a-z0-9_]+)(\{[^}]*\})?")


@pytest.fixture(scope="module")
def model() -> dict:
    return build_dashboard()


@pytest.fixture(scope="module")
def queries(model: dict) -> list[tuple[str, str]]:
    return panel_queries(model)


def _panels(model: dict) -> list[dict]:
    """Every non-row panel, including those nested in collapsed rows."""
    found = []
    for panel in model["panels"]:
        found.extend([panel] if panel["type"] != "row" else [])
        found.extend(panel.get("panels", []))
    return found


def _documented_series() -> dict[str, bool]:
    """Series name -> whether it carries `namespace` and `pipeline`, read from the tables in docs/metrics.md."""
    operator_part, trainer_part = METRICS_DOC.read_text().split("## Trainer", 1)
    series = {}
    for line in operator_part.splitlines():
        if match := re.match(r"\| `(gradatim_[a-z0-9_]+)` \|[^|]*\|[^|]*\|([^|]*)\|", line):
            series[match[1]] = "namespace" in match[2] and "pipeline" in match[2]
    for line in trainer_part.splitlines():
        if match := re.match(r"\| `(gradatim_[a-z0-9_]+)` \|", line):
            series[match[1]] = True  # "Every trainer series carries namespace, pipeline, stage, type and attempt"
    return series


def _base_name(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


# --- (a) generated files ----------------------------------------------------------------------------------------------

def test_generated_files_are_fresh():
    """manifests/monitoring/ is generated from gradatim/monitoring; edit the code and run `make monitoring`."""
    for relative, text in generated_files().items():
        path = ROOT / relative
        assert path.exists(), f"{relative} is missing; run `make monitoring`"
        assert path.read_text() == text, f"{relative} is stale; run `make monitoring`"


def test_write_generated_files_writes_what_the_renderers_produce(tmp_path: Path):
    written = write_generated_files(tmp_path)
    expected = generated_files()
    assert sorted(written) == sorted(tmp_path / relative for relative in expected)
    assert all((tmp_path / relative).read_text() == text for relative, text in expected.items())
    assert not (tmp_path / "manifests/monitoring/kustomization.yaml").exists(), "the kustomization is not ours to write"
    for relative, text in expected.items():
        if relative.suffix == ".yaml":
            assert text.startswith("# Generated from gradatim/monitoring/") and "`make monitoring`" in text.splitlines()[0]


# --- the dashboard's shape ------------------------------------------------------------------------------------------

def test_dashboard_settings(model: dict):
    assert (model["uid"], model["title"], model["refresh"]) == ("gradatim-overview", "Gradatim", "30s")
    assert model["time"] == {"from": "now-6h", "to": "now"}
    assert "gradatim" in model["tags"]
    rows = [panel["title"] for panel in model["panels"] if panel["type"] == "row"]
    assert rows == ["Pipeline overview", "Training", "RL (GRPO) and DPO", "Eval", "Operator health"]
    ids = [panel["id"] for panel in model["panels"]] + [p["id"] for panel in model["panels"] for p in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_variables(model: dict):
    variables = {variable["name"]: variable for variable in model["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("namespace", "pipeline"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["multi"] and variable["includeAll"]
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["query"].startswith("label_values(gradatim_stage_phase") and variable["query"].endswith(f", {name})")


def test_every_panel_has_a_description_and_a_unit(model: dict):
    for panel in _panels(model):
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {panel['title']!r} has no unit"


def test_units(model: dict):
    units = {panel["title"]: panel["fieldConfig"]["defaults"]["unit"] for panel in _panels(model)}
    assert units["ETA"] == "s" and units["Reconcile latency"] == "s" and units["Dependency to job latency"] == "s"
    assert units["Device memory"] == "bytes"
    assert units["MFU"] == units["Progress per stage"] == units["DPO reward accuracy"] == "percentunit"
    assert units["pass@1 per stage and eval set"] == "percentunit"
    assert units["Throughput"] == units["Loss"] == "short"


# --- (b) datasource -------------------------------------------------------------------------------------------------

def test_every_panel_and_query_uses_the_datasource_variable(model: dict):
    for panel in _panels(model):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (panel["title"], target["expr"])


# --- (c) the metrics contract ---------------------------------------------------------------------------------------

def test_every_metric_is_documented(queries: list[tuple[str, str]]):
    documented = _documented_series()
    assert len(documented) > 30, "could not read the series tables in docs/metrics.md"
    used = {_base_name(name) for _, expr in queries for name in re.findall(r"gradatim_[a-z0-9_]+", expr)}
    undocumented = sorted(used - set(documented))
    assert not undocumented, f"series not in docs/metrics.md: {undocumented}"


def test_scoped_series_are_filtered_on_namespace_and_pipeline(queries: list[tuple[str, str]]):
    """Every selector of a series that carries namespace and pipeline honours the $namespace and $pipeline variables."""
    documented = _documented_series()
    for title, expr in queries:
        for name, matchers in SELECTOR.findall(expr):
            if documented.get(_base_name(name)):
                assert all(m in matchers for m in SCOPE_MATCHERS), f"{title!r}: {name} is not filtered on the variables: {expr}"


def test_the_panels_the_brief_names(queries: list[tuple[str, str]]):
    exprs = {expr for _, expr in queries}
    assert 'histogram_quantile(0.99, sum by (le, kind) (rate(gradatim_reconcile_duration_seconds_bucket[$__rate_interval])))' in exprs
    assert 'up{job="gradatim-operator"}' in exprs
    assert any(e.startswith("sum by (pipeline, stage) (rate(gradatim_trainer_tokens_total{") for e in exprs)
    assert any(e.startswith("sum by (phase) (gradatim_stage_phase{") for e in exprs)
    assert any('phase="Running"} == 1' in e for e in exprs)
    assert any('type="eval", metric=~"pass@1/.*"' in e for e in exprs)
    for series in ("gradatim_stage_eta_seconds", "gradatim_trainer_mfu_ratio", "gradatim_trainer_device_memory_peak_bytes",
                   "gradatim_trainer_reward_part_mean", "gradatim_trainer_completion_tokens_mean", "gradatim_trainer_eval_pass_at_1",
                   "gradatim_trainer_dpo_reward_margin", "gradatim_trainer_dpo_reward_accuracy", "gradatim_workqueue_depth",
                   "gradatim_s3_errors_total", "gradatim_dependency_to_job_seconds_bucket", "gradatim_cache_hits_total"):
        assert any(series in e for e in exprs), f"no panel shows {series}"


# --- (d) every query parses -------------------------------------------------------------------------------------------

def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; install Debian's prometheus package (`make system-deps`)")
    return promtool


def _check_rules(promtool: str, path: Path, exprs: list[str]) -> subprocess.CompletedProcess:
    rules = [{"record": f"gradatim_dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "gradatim-dashboard", "rules": rules}]}, sort_keys=False, width=1000))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def _concrete(expr: str) -> str:
    """What Grafana would send: interval macros become a duration, the variables a match-all regex."""
    expr = re.sub(r"\$__(rate_interval|range|interval)\b", "1m", expr)
    expr = re.sub(r"\$\{?(namespace|pipeline)\}?", ".*", expr)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr


def test_every_query_parses(queries: list[tuple[str, str]], tmp_path: Path):
    promtool = _promtool()
    broken = _check_rules(promtool, tmp_path / "broken.rules.yaml", ["sum by (phase) (gradatim_stage_phase{phase=}"])
    assert broken.returncode != 0, "promtool accepted a broken expression; the check below proves nothing"
    result = _check_rules(promtool, tmp_path / "dashboard.rules.yaml", [_concrete(expr) for _, expr in queries])
    titles = "\n".join(f"  query_{i}: {title}: {expr}" for i, (title, expr) in enumerate(queries))
    assert result.returncode == 0, f"promtool rejected a dashboard query:\n{result.stdout}{result.stderr}\n{titles}"
    assert f"{len(queries)} rules found" in result.stdout


# --- (e) the ConfigMap ------------------------------------------------------------------------------------------------

def test_configmap_carries_the_sidecar_label_and_the_dashboard(model: dict):
    configmap = render_dashboard_configmap()
    assert configmap["metadata"]["name"] == "gradatim-dashboard" and configmap["metadata"]["namespace"] == "gradatim-system"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"][CONFIGMAP_KEY]) == model
    on_disk = yaml.safe_load((ROOT / "manifests/monitoring/grafana-dashboard-configmap.yaml").read_text())
    assert on_disk == configmap
    assert json.loads((ROOT / "manifests/monitoring/grafana-dashboard.json").read_text()) == model


# --- the monitors ---------------------------------------------------------------------------------------------------

def test_service_monitor_selects_the_operator_service():
    service = yaml.safe_load((ROOT / "manifests/operator/base/service.yaml").read_text())
    monitor = render_service_monitor()
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert "metrics" in [port["name"] for port in service["spec"]["ports"]]
    assert spec["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    # The job label is the value of the Service's jobLabel label: the job docs/metrics.md names.
    assert service["metadata"]["labels"][spec["jobLabel"]] == "gradatim-operator"


def test_pod_monitor_selects_the_trainers_in_every_namespace():
    monitor = render_pod_monitor()
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == "gradatim-trainer"
    assert spec["jobLabel"] == "app.kubernetes.io/name"
    assert spec["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}]
