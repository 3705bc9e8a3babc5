"""Prometheus alert rules for Gradatim, as data: rendered to a plain rules file and to a PrometheusRule.

The series and labels are the contract in docs/metrics.md; each alert's runbook is a section of docs/alerts.md.
`make monitoring` writes `manifests/monitoring/`; tests/test_alerts.py fails when those files are stale and
runs the promtool unit tests in tests/promtool/.

Expressions select the `gradatim_` series by name only (the prefix is unique), so a ServiceMonitor or
PodMonitor that names its job differently does not silence them; only `up` needs the job name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

RUNBOOK_BASE = "https://github.com/gradatim/gradatim/blob/main/docs/alerts.md"
OPERATOR_JOB = "gradatim-operator"
RULES_FILE = Path("manifests/monitoring/gradatim-alerts.rules.yaml")
PROMETHEUS_RULE_FILE = Path("manifests/monitoring/prometheus-rule.yaml")

# kube-prometheus-stack's Prometheus selects PrometheusRules whose `release` label equals its Helm release name
# (`ruleSelector`, from `ruleSelectorNilUsesHelmValues: true`). Change this when your release has another name,
# then run `make monitoring`; or patch the label with kustomize; or install the chart with
# `prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false` so that it selects every PrometheusRule.
PROMETHEUS_RULE_LABELS = {"app.kubernetes.io/name": "gradatim", "app.kubernetes.io/component": "alerts", "release": "kube-prometheus-stack"}

Severity = Literal["critical", "warning"]
STAGE = "{{ $labels.namespace }}/{{ $labels.stage }}"  # how descriptions name a stage


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    name: str
    group: str
    expr: str
    """PromQL; written over several lines here, rendered as one (whitespace collapsed)."""
    for_: str
    """How long the expression must hold before the alert fires."""
    severity: Severity
    """critical: a stage or the operator is stopped and needs a person; warning: degraded, look soon."""
    summary: str
    description: str

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.name.lower()}"

    def render(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": " ".join(self.expr.split()),
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description, "runbook_url": self.runbook_url},
        }


ALERTS: list[Alert] = [
    Alert(
        name="GradatimStageFailed",
        group="gradatim-stages",
        expr='gradatim_stage_phase{phase="Failed"} == 1',
        # Failed is terminal (retries exhausted, gate failed, or a permanent error); one more minute only
        # guards against a phase read in the middle of an update.
        for_="1m",
        severity="critical",
        summary="Gradatim stage {{ $labels.namespace }}/{{ $labels.stage }} failed",
        description=(
            "Stage " + STAGE + " ({{ $labels.type }}) of pipeline {{ $labels.pipeline }} is in phase Failed; "
            "the stages after it will not start until it is fixed."
        ),
    ),
    Alert(
        name="GradatimStageStalled",
        group="gradatim-stages",
        # The value is the step the stage is stuck at. `changes()` over a series younger than the window sees
        # no change, so the step series itself must be 15m old (a stage that just started, or an operator pod
        # that just restarted and exports fresh series, cannot fire), and the stage must have been Running for
        # the whole window (one that just came back from Retrying cannot fire either).
        expr="""
            gradatim_stage_step
              and (gradatim_stage_step offset 15m)
              and changes(gradatim_stage_step[15m]) == 0
              and ignoring (phase) min_over_time(gradatim_stage_phase{phase="Running"}[15m]) == 1
        """,
        # 15m without a step is already far beyond one step or one logging interval of any stage type;
        # 5m more rides out a slow checkpoint upload or a long generate batch at the edge of the window.
        for_="5m",
        severity="warning",
        summary="Gradatim stage {{ $labels.namespace }}/{{ $labels.stage }} makes no progress",
        description=(
            "Stage " + STAGE + " ({{ $labels.type }}) of pipeline {{ $labels.pipeline }} is Running but has been at "
            "step {{ $value }} for more than 15 minutes."
        ),
    ),
    Alert(
        name="GradatimStageRetriesExhausted",
        group="gradatim-stages",
        # Both gauges come from the same operator target with the same stage labels, so default one-to-one
        # matching pairs them per stage (and per operator pod, should two overlap during a rollout).
        expr="gradatim_stage_failed_attempts > gradatim_stage_retry_limit",
        for_="1m",
        severity="critical",
        summary="Gradatim stage {{ $labels.namespace }}/{{ $labels.stage }} ran out of retries",
        description=(
            "Stage " + STAGE + " ({{ $labels.type }}) of pipeline {{ $labels.pipeline }} has failed {{ $value }} "
            "attempts, more than its spec.retryLimit; the operator will not start another."
        ),
    ),
    Alert(
        name="GradatimTrainerThroughputDropped",
        group="gradatim-trainer",
        # Relative to the attempt's own median over the last hour (a 1m-step subquery), so it needs no per-model
        # threshold. It waits for 30 minutes of history (30 subquery points) so that the median means something,
        # and a new attempt (a new `attempt` label, a new series) starts over. A new series that started at 0
        # would otherwise have a median of 0 and never fire; stages that count no tokens (rate 0) never fire.
        expr="""
            rate(gradatim_trainer_tokens_total[5m])
              < 0.5 * quantile_over_time(0.5, rate(gradatim_trainer_tokens_total[5m])[1h:1m])
              and count_over_time(rate(gradatim_trainer_tokens_total[5m])[1h:1m]) >= 30
        """,
        # Half the median is far outside step-to-step noise; a checkpoint save or an in-training eval pauses
        # tokens for a few minutes, and `for: 10m` lets pauses of up to about ten minutes pass.
        for_="10m",
        severity="warning",
        summary="Gradatim trainer {{ $labels.namespace }}/{{ $labels.stage }} slowed down",
        description=(
            "Attempt {{ $labels.attempt }} of stage " + STAGE + " ({{ $labels.type }}) processes {{ $value | humanize }} "
            "tokens/s, less than half of its median over the last hour."
        ),
    ),
    Alert(
        name="GradatimTrainingLossNaN",
        group="gradatim-trainer",
        expr="gradatim_trainer_loss != gradatim_trainer_loss",  # only NaN differs from itself
        # NaN weights do not recover; alert after one more scrape and stop the GPUs burning.
        for_="1m",
        severity="critical",
        summary="Gradatim trainer {{ $labels.namespace }}/{{ $labels.stage }} loss is NaN",
        description=(
            "Attempt {{ $labels.attempt }} of stage " + STAGE + " ({{ $labels.type }}) of pipeline {{ $labels.pipeline }} "
            "reports a training loss of {{ $value }}: the run has diverged."
        ),
    ),
    Alert(
        name="GradatimTrainingLossDiverging",
        group="gradatim-trainer",
        # Twice the lowest loss of the last 30 minutes is far above the noise of a logged (averaged) loss.
        # The minimum must be above 0 for a ratio to mean anything; GRPO is left out because its loss is a
        # policy-gradient surrogate near zero of either sign (watch its reward instead).
        expr="""
            gradatim_trainer_loss{type!="grpo"}
              > 2 * min_over_time(gradatim_trainer_loss{type!="grpo"}[30m])
              and min_over_time(gradatim_trainer_loss{type!="grpo"}[30m]) > 0
        """,
        # 10m: a single bad batch spikes one logged loss; a divergence stays up.
        for_="10m",
        severity="warning",
        summary="Gradatim trainer {{ $labels.namespace }}/{{ $labels.stage }} loss is diverging",
        description=(
            "Attempt {{ $labels.attempt }} of stage " + STAGE + " ({{ $labels.type }}) has a training loss of {{ $value }}, "
            "more than twice its minimum over the last 30 minutes, for 10 minutes."
        ),
    ),
    Alert(
        name="GradatimOperatorDown",
        group="gradatim-operator",
        # `absent` covers the operator missing from service discovery altogether (no pod, wrong monitor).
        expr=f'up{{job="{OPERATOR_JOB}"}} == 0 or absent(up{{job="{OPERATOR_JOB}"}})',
        # 5m: longer than a pod restart or a rollout of the single replica.
        for_="5m",
        severity="critical",
        summary="The Gradatim operator is down",
        description=(
            "Prometheus has not scraped the Gradatim operator (job {{ $labels.job }}) for 5 minutes, or has no target "
            "for it at all: no stage is being reconciled, started or retried."
        ),
    ),
    Alert(
        name="GradatimOperatorErrors",
        group="gradatim-operator",
        expr="""
            sum by (kind) (rate(gradatim_reconcile_errors_total[5m]))
              / sum by (kind) (rate(gradatim_reconcile_total[5m]))
              > 0.1
        """,
        # Transient API conflicts retry and stay well under 10%; above that for 10 minutes the operator is
        # failing most work of a kind, not hitting the odd conflict.
        for_="10m",
        severity="warning",
        summary="The Gradatim operator fails to reconcile {{ $labels.kind }}s",
        description="{{ $value | humanizePercentage }} of {{ $labels.kind }} reconciles failed over the last 5 minutes.",
    ),
    Alert(
        name="GradatimS3Errors",
        group="gradatim-operator",
        expr="sum by (namespace, pipeline, operation) (increase(gradatim_s3_errors_total[10m])) > 0",
        # A lone error is retried on the next reconcile and keeps the 10m increase above 0 for at most 10m;
        # `for: 15m` fires only when errors keep coming for a quarter of an hour.
        for_="15m",
        severity="warning",
        summary="The Gradatim operator gets S3 errors for {{ $labels.namespace }}/{{ $labels.pipeline }}",
        description=(
            "S3 {{ $labels.operation }} requests of pipeline {{ $labels.namespace }}/{{ $labels.pipeline }} failed "
            "about {{ $value | humanize }} times in the last 10 minutes; stage progress and results are not being read."
        ),
    ),
]


def render_rules(alerts: list[Alert] = ALERTS) -> dict[str, Any]:
    """A Prometheus rules file: one group per concern, in the order the alerts are declared."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        groups.setdefault(alert.group, []).append(alert.render())
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]}


def render_prometheus_rule(alerts: list[Alert] = ALERTS) -> dict[str, Any]:
    """The same groups as a prometheus-operator PrometheusRule, labelled for kube-prometheus-stack."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "gradatim-alerts", "namespace": "gradatim-system", "labels": dict(PROMETHEUS_RULE_LABELS)},
        "spec": render_rules(alerts),
    }


HEADER = "# Generated from gradatim/monitoring/alerts.py by `make monitoring`; do not edit by hand.\n"
RELEASE_NOTE = (
    "# kube-prometheus-stack loads PrometheusRules whose `release` label is its Helm release name. If yours is not\n"
    "# `kube-prometheus-stack`, change PROMETHEUS_RULE_LABELS in alerts.py and run `make monitoring`, patch the\n"
    "# label with kustomize, or set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false.\n"
)


def _dump(obj: dict[str, Any]) -> str:
    # Wide enough that no expression or annotation is folded: each stays on one greppable line.
    return yaml.safe_dump(obj, sort_keys=False, width=1000, allow_unicode=True)


def generated_files() -> dict[Path, str]:
    """Repo-relative path -> text of every file `make monitoring` writes for the alerts."""
    return {
        RULES_FILE: HEADER + _dump(render_rules()),
        PROMETHEUS_RULE_FILE: HEADER + RELEASE_NOTE + _dump(render_prometheus_rule()),
    }
