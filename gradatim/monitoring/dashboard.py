"""The Gradatim Grafana dashboard, as code (grafana-foundation-sdk), and the ConfigMap that ships it.

Every query reads the series in docs/metrics.md through the `${datasource}` variable. Series that carry
`namespace` and `pipeline` (every stage and trainer series) are filtered on the `$namespace` and `$pipeline`
variables; the operator's own series (reconciles, work queue, latency histograms) carry neither and are shown
whole. `tests/test_dashboard.py` holds the dashboard to both rules and parses every query with promtool.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

# The classic dashboard model warns that v2 exists; v2 is Grafana 12's resource format, while the
# kube-prometheus-stack sidecar and "Import dashboard" both load the classic JSON we build here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import bargauge, common as common_builders, dashboard, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.models import common, units
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataTransformerConfig,
        DynamicConfigValue,
        Threshold,
        ThresholdsMode,
        VariableRefresh,
        VariableSort,
    )
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "gradatim-overview"
CONFIGMAP_NAME = "gradatim-dashboard"
CONFIGMAP_NAMESPACE = "gradatim-system"
CONFIGMAP_KEY = "gradatim.json"

DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Matchers for every series that carries namespace and pipeline labels.
SCOPE = 'namespace=~"$namespace", pipeline=~"$pipeline"'
STAGE_LEGEND = "{{pipeline}}/{{stage}}"
ATTEMPT_LEGEND = "{{pipeline}}/{{stage}} #{{attempt}}"

PHASE_COLOURS = {"Running": "blue", "Succeeded": "green", "Cached": "dark-green", "Failed": "red", "Invalid": "dark-red",
                 "Blocked": "orange", "Retrying": "yellow", "Pending": "text", "Suspended": "purple"}


# --- small builders ---------------------------------------------------------------------------------------------

def _query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, as_table: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE).legend_format(legend or "__auto")
    if instant:
        query = query.instant()
    if as_table:
        query = query.format(PromQueryFormat.TABLE)
    return query


def _targets(queries: list[tuple[str, str]], **kwargs: Any) -> list[prometheus.Dataquery]:
    return [_query(expr, legend, chr(ord("A") + i), **kwargs) for i, (expr, legend) in enumerate(queries)]


def _base(panel: Any, title: str, description: str, unit: str, width: int, height: int) -> Any:
    return panel.title(title).description(description).datasource(DATASOURCE).unit(unit).span(width).height(height)


def _timeseries(title: str, description: str, unit: str, queries: list[tuple[str, str]], *, width: int = 8,
                height: int = 8, axis_label: str = "", min_value: float | None = None, max_value: float | None = None) -> timeseries.Panel:
    legend = common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM).show_legend(True)
    panel = _base(timeseries.Panel(), title, description, unit, width, height).targets(_targets(queries)).legend(legend)
    panel = panel.line_width(1).fill_opacity(10).span_nulls(False)
    if axis_label:
        panel = panel.axis_label(axis_label)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _bargauge(title: str, description: str, unit: str, queries: list[tuple[str, str]], *, width: int = 8, height: int = 8,
              min_value: float | None = None, max_value: float | None = None) -> bargauge.Panel:
    panel = _base(bargauge.Panel(), title, description, unit, width, height).targets(_targets(queries, instant=True))
    panel = panel.orientation(common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.GRADIENT)
    panel = panel.reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _table(title: str, description: str, unit: str, queries: list[tuple[str, str]], *, columns: dict[str, str],
           hidden: list[str], width: int = 8, height: int = 8) -> table.Panel:
    """An instant-query table: queries merged on their labels, `columns` renames, `hidden` drops fields."""
    panel = _base(table.Panel(), title, description, unit, width, height).targets(_targets(queries, instant=True, as_table=True))
    if len(queries) > 1:
        panel = panel.with_transformation(DataTransformerConfig(id_val="merge", options={}))
    organize = {"excludeByName": {name: True for name in hidden}, "renameByName": columns, "indexByName": {}}
    return panel.with_transformation(DataTransformerConfig(id_val="organize", options=organize))


def _rate(metric: str, by: str, scope: bool = True) -> str:
    selector = f"{metric}{{{SCOPE}}}" if scope else metric
    return f"sum by ({by}) (rate({selector}[$__rate_interval]))"


def _quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket[$__rate_interval])))"


def _fixed_colour(colour: str) -> DynamicConfigValue:
    return DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


# --- rows ---------------------------------------------------------------------------------------------------------

def _overview_panels() -> list[Any]:
    phases = (_base(stat.Panel(), "Stages by phase", "Number of stages in each phase right now (gradatim_stage_phase is 1 for "
                    "the current phase).", units.Short, 8, 6)
              .targets(_targets([(f"sum by (phase) (gradatim_stage_phase{{{SCOPE}}})", "{{phase}}")], instant=True))
              .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE)
              .text_mode(common.BigValueTextMode.VALUE_AND_NAME).orientation(common.VizOrientation.HORIZONTAL)
              .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
              .thresholds(_thresholds((None, "text"))))
    for phase, colour in PHASE_COLOURS.items():
        phases = phases.override_by_name(phase, [_fixed_colour(colour)])
    stage_labels = "namespace, pipeline, stage, type"
    return [
        phases,
        _table("Running stages", "Stages whose phase is Running.", units.Short,
               [(f'max by ({stage_labels}) (gradatim_stage_phase{{{SCOPE}, phase="Running"}} == 1)', "")],
               columns={"namespace": "Namespace", "pipeline": "Pipeline", "stage": "Stage", "type": "Type"},
               hidden=["Time", "Value"], width=16, height=6),
        _bargauge("Progress per stage", "Steps done by each stage's current attempt over the steps it plans "
                  "(from the trainer's progress.json).", units.PercentUnit,
                  [(f"gradatim_stage_step{{{SCOPE}}} / (gradatim_stage_total_steps{{{SCOPE}}} > 0)", STAGE_LEGEND)],
                  min_value=0, max_value=1),
        _bargauge("ETA", "Estimated time until each running stage finishes.", units.Seconds,
                  [(f"gradatim_stage_eta_seconds{{{SCOPE}}}", STAGE_LEGEND)], min_value=0),
        _table("Attempts and retries", "Each stage's current attempt, its failed attempts in the current run, and "
               "spec.retryLimit: retries are exhausted when Retries > Retry limit.", units.Short,
               [(f"max by ({stage_labels}) (gradatim_stage_attempt{{{SCOPE}}})", ""),
                (f"max by ({stage_labels}) (gradatim_stage_failed_attempts{{{SCOPE}}})", ""),
                (f"max by ({stage_labels}) (gradatim_stage_retry_limit{{{SCOPE}}})", "")],
               columns={"pipeline": "Pipeline", "stage": "Stage", "type": "Type",
                        "Value #A": "Attempt", "Value #B": "Retries", "Value #C": "Retry limit"},
               hidden=["Time", "namespace"]),
        _timeseries("Phase transitions", "Rate at which stages enter each phase.", units.Short,
                    [(_rate("gradatim_stage_transitions_total", "phase"), "{{phase}}")], axis_label="per second"),
        _bargauge("Quality gates", "Quality gates that passed or failed over the dashboard's time range.", units.Short,
                  [(f"sum by (result) (increase(gradatim_gate_results_total{{{SCOPE}}}[$__range]))", "{{result}}")], min_value=0)
        .override_by_name("passed", [_fixed_colour("green")]).override_by_name("failed", [_fixed_colour("red")]),
        _bargauge("Finished stage duration", "p50 and p90 wall time of stages that finished in the time range, first "
                  "attempt to completion, by stage type (operator-wide: the series has no namespace or pipeline).", units.Seconds,
                  [("histogram_quantile(0.5, sum by (le, type) (increase(gradatim_stage_duration_seconds_bucket[$__range])))", "{{type}} p50"),
                   ("histogram_quantile(0.9, sum by (le, type) (increase(gradatim_stage_duration_seconds_bucket[$__range])))", "{{type}} p90")],
                  min_value=0),
    ]


def _training_panels() -> list[Any]:
    return [
        _timeseries("Loss", "Training loss of the last logged step, per attempt (NaN if it diverged).", units.Short,
                    [(f"gradatim_trainer_loss{{{SCOPE}}}", ATTEMPT_LEGEND)]),
        _timeseries("Learning rate", "Learning rate of the last logged step.", units.ScientificNotation,
                    [(f"gradatim_trainer_learning_rate{{{SCOPE}}}", ATTEMPT_LEGEND)]),
        _timeseries("Gradient norm", "Gradient norm before clipping.", units.Short,
                    [(f"gradatim_trainer_grad_norm{{{SCOPE}}}", ATTEMPT_LEGEND)]),
        _timeseries("Throughput", "Training tokens per second, all processes of the stage.", units.Short,
                    [(_rate("gradatim_trainer_tokens_total", "pipeline, stage"), STAGE_LEGEND)], axis_label="tokens/s"),
        _timeseries("Steps per second", "Optimiser steps per second (prompts for generate and eval stages).", units.Short,
                    [(_rate("gradatim_trainer_steps_total", "pipeline, stage"), STAGE_LEGEND)], axis_label="steps/s"),
        _timeseries("MFU", "Model FLOPs utilisation against the detected device's peak dense bf16 FLOP/s "
                    "(empty on CPU, where the peak is unknown).", units.PercentUnit,
                    [(f"gradatim_trainer_mfu_ratio{{{SCOPE}}}", ATTEMPT_LEGEND)], min_value=0),
        _timeseries("Model FLOP/s", "Achieved model FLOP/s, all processes (6·N·tokens/s plus attention).", units.FlopsPerSecond,
                    [(f"gradatim_trainer_model_flops_per_second{{{SCOPE}}}", ATTEMPT_LEGEND)], min_value=0),
        _timeseries("Device memory", "Memory in use on the training device (GPU: allocated by torch; CPU: RSS) and its "
                    "peak over the attempt.", units.BytesIEC,
                    [(f"gradatim_trainer_device_memory_bytes{{{SCOPE}}}", f"{ATTEMPT_LEGEND} in use"),
                     (f"gradatim_trainer_device_memory_peak_bytes{{{SCOPE}}}", f"{ATTEMPT_LEGEND} peak")],
                    width=16, min_value=0),
    ]


def _rl_panels() -> list[Any]:
    return [
        _timeseries("GRPO reward", "Mean total reward of the last GRPO step and its standard deviation.", units.Short,
                    [(f"gradatim_trainer_reward_mean{{{SCOPE}}}", f"{ATTEMPT_LEGEND} mean"),
                     (f"gradatim_trainer_reward_std{{{SCOPE}}}", f"{ATTEMPT_LEGEND} std")]),
        _timeseries("GRPO reward parts", "Each reward function's mean before weighting.", units.Short,
                    [(f"gradatim_trainer_reward_part_mean{{{SCOPE}}}", f"{ATTEMPT_LEGEND} {{{{reward}}}}")]),
        _timeseries("GRPO completion length", "Mean completion length of the last GRPO step.", units.Short,
                    [(f"gradatim_trainer_completion_tokens_mean{{{SCOPE}}}", ATTEMPT_LEGEND)], axis_label="tokens"),
        _timeseries("DPO reward margin", "Mean chosen minus rejected implicit reward.", units.Short,
                    [(f"gradatim_trainer_dpo_reward_margin{{{SCOPE}}}", ATTEMPT_LEGEND)], width=12),
        _timeseries("DPO reward accuracy", "Fraction of pairs whose chosen reward beats the rejected one.", units.PercentUnit,
                    [(f"gradatim_trainer_dpo_reward_accuracy{{{SCOPE}}}", ATTEMPT_LEGEND)], width=12, min_value=0, max_value=1),
    ]


def _eval_panels() -> list[Any]:
    return [
        _bargauge("pass@1 per stage and eval set", "pass@1 of each finished eval stage on each eval set (its results.json).",
                  units.PercentUnit,
                  [(f'max by (pipeline, stage, metric) (gradatim_stage_result{{{SCOPE}, type="eval", metric=~"pass@1/.*"}})',
                    "{{pipeline}}/{{stage}} {{metric}}")], width=12, min_value=0, max_value=1),
        _timeseries("pass@1 while scoring", "pass@1 of each eval set as the running eval stage scores it.", units.PercentUnit,
                    [(f"gradatim_trainer_eval_pass_at_1{{{SCOPE}}}", f"{ATTEMPT_LEGEND} {{{{eval_set}}}}")],
                    width=12, min_value=0, max_value=1),
        _table("Stage results", "The headline metrics of every finished stage (its results.json).", units.Short,
               [(f"max by (pipeline, stage, type, metric) (gradatim_stage_result{{{SCOPE}}})", "")],
               columns={"pipeline": "Pipeline", "stage": "Stage", "type": "Type", "metric": "Metric", "Value": "Value"},
               hidden=["Time"], width=24),
    ]


def _operator_panels() -> list[Any]:
    up = (_base(stat.Panel(), "Operator up", "Whether Prometheus can scrape the operator (job gradatim-operator).", units.Short, 4, 8)
          .targets(_targets([('up{job="gradatim-operator"}', "{{instance}}")], instant=True))
          .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.BACKGROUND)
          .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
          .thresholds(_thresholds((None, "red"), (1, "green"))))
    return [
        up,
        _table("Operator version", "The running operator's version (gradatim_build_info).", units.Short,
               [('max by (version) (gradatim_build_info{job="gradatim-operator"})', "")],
               columns={"version": "Version"}, hidden=["Time", "Value"], width=4),
        _timeseries("Reconcile rate", "Reconciles per second, by kind and result.", units.Short,
                    [(_rate("gradatim_reconcile_total", "kind, result", scope=False), "{{kind}} {{result}}")], axis_label="per second"),
        _timeseries("Reconcile latency", "p99 and p50 time to reconcile one object, by kind.", units.Seconds,
                    [(_quantile(0.99, "gradatim_reconcile_duration_seconds", "le, kind"), "{{kind}} p99"),
                     (_quantile(0.5, "gradatim_reconcile_duration_seconds", "le, kind"), "{{kind}} p50")], min_value=0),
        _timeseries("Reconcile errors", "Reconciles that raised, per second, by kind.", units.Short,
                    [(_rate("gradatim_reconcile_errors_total", "kind", scope=False), "{{kind}}")], axis_label="per second", min_value=0),
        _timeseries("Work-queue depth", "Objects waiting to be reconciled.", units.Short,
                    [("sum(gradatim_workqueue_depth)", "depth")], min_value=0),
        _timeseries("Jobs, retries and cache hits", "PyTorchJobs created, attempts started after a failure, and stages "
                    "satisfied from the cache, per second.", units.Short,
                    [(_rate("gradatim_job_creations_total", "pipeline"), "{{pipeline}} jobs"),
                     (_rate("gradatim_stage_retries_total", "pipeline"), "{{pipeline}} retries"),
                     (_rate("gradatim_cache_hits_total", "pipeline"), "{{pipeline}} cache hits")], axis_label="per second", min_value=0),
        _timeseries("Dependency to job latency", "p50 and p99 time from a stage's last dependency succeeding to its "
                    "PyTorchJob being created.", units.Seconds,
                    [(_quantile(0.5, "gradatim_dependency_to_job_seconds"), "p50"),
                     (_quantile(0.99, "gradatim_dependency_to_job_seconds"), "p99")], width=12, min_value=0),
        _timeseries("S3 errors", "Failed S3 requests by the operator (reading results and progress), per second.", units.Short,
                    [(_rate("gradatim_s3_errors_total", "pipeline, operation"), "{{pipeline}} {{operation}}")],
                    width=12, axis_label="per second", min_value=0),
    ]


# --- the dashboard ---------------------------------------------------------------------------------------------------

def _variables() -> list[Any]:
    datasource = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    namespace = (dashboard.QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
                 .query("label_values(gradatim_stage_phase, namespace)"))
    pipeline = (dashboard.QueryVariable("pipeline").label("Pipeline").datasource(DATASOURCE)
                .query('label_values(gradatim_stage_phase{namespace=~"$namespace"}, pipeline)'))
    # `.*` rather than the list of values, so "All" also matches series that appeared after the page loaded.
    scoped = [v.multi(True).include_all(True).all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
              .sort(VariableSort.ALPHABETICAL_ASC) for v in (namespace, pipeline)]
    return [datasource, *scoped]


ROWS = [("Pipeline overview", _overview_panels), ("Training", _training_panels), ("RL (GRPO) and DPO", _rl_panels),
        ("Eval", _eval_panels), ("Operator health", _operator_panels)]


def build_dashboard() -> dict[str, Any]:
    """The dashboard's JSON model as a plain dict (what Grafana's "Import dashboard" and the sidecar load)."""
    builder = (dashboard.Dashboard("Gradatim").uid(UID)
               .description("Gradatim pipelines, stages, trainers and the operator (docs/metrics.md).")
               .tags(["gradatim", "training", "kubernetes"]).refresh("30s").time("now-6h", "now")
               .timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR).editable().variables(_variables()))
    for title, panels in ROWS:
        builder = builder.with_row(dashboard.Row(title))
        for panel in panels():
            builder = builder.with_panel(panel)
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(_all_panels(model), start=1):
        panel["id"] = number  # stable ids, so links to a panel (viewPanel=N) survive regeneration
    return model


def _all_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels nested in collapsed rows included, in order."""
    found = []
    for panel in model.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel."""
    return [(panel.get("title", ""), target["expr"]) for panel in _all_panels(model)
            for target in panel.get("targets", []) if "expr" in target]


def render_dashboard_json() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def render_dashboard_configmap() -> dict[str, Any]:
    """The dashboard as a ConfigMap that kube-prometheus-stack's Grafana sidecar picks up by its label."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "namespace": CONFIGMAP_NAMESPACE,
            # The grafana chart's defaults: sidecar.dashboards.label `grafana_dashboard`, labelValue "1".
            "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "gradatim", "app.kubernetes.io/component": "monitoring"},
        },
        "data": {CONFIGMAP_KEY: json.dumps(build_dashboard(), indent=2, sort_keys=True)},
    }
