"""The report of a pipeline run as plain data: the ablation table (each eval stage's pass@1 per eval set, with
the tokens and wall time behind the model it scored), a row per stage, and the curves the plots draw.

Pure: results come in through `read_results`, so nothing here reads S3 or the API server. A stage without
results (not finished, failed, never started) becomes a pending row, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gradatim.api.common import TRAINING_TYPES
from gradatim.api.stage import GATE_METRICS, TrainingStage
from gradatim.planner.graph import stages_by_name, topological_order

TOKENS_MEANS = (
    "Tokens trained: the tokens metric of each training stage (non-padding input tokens the Trainer saw, all "
    "processes) summed over the stages the model descends from, following inputs.model.fromStage back to the base model."
)
WALL_TIME_MEANS = (
    "Wall time: the trainer's durationSeconds summed over the same stages, i.e. loading, training and uploading in the "
    "attempt that finished (a Cached stage counts the run that produced its output). Not included: the eval itself, "
    "data stages (generate, decontaminate), waiting for dependencies or nodes, and earlier failed attempts."
)
REWARD_PART = re.compile(r"^rewards/(.+)/mean$")  # TRL logs one per reward function, before weighting
COMPLETION_LENGTH = {"completions/mean_length": "mean", "completions/min_length": "min", "completions/max_length": "max"}


@dataclass(frozen=True)
class StageRecord:
    """One stage as the report sees it: its place in the pipeline, where its model comes from, its results."""

    name: str
    type: str
    phase: str
    depends_on: tuple[str, ...]
    model_stage: str | None
    """inputs.model.fromStage: the stage whose model this one starts from (trains, samples or scores)."""
    base_model: str | None
    """The model's hf id, uri or builtin name, when it comes from no stage."""
    results: Mapping[str, Any] | None
    """The parsed results.json; None until the stage has finished."""

    @property
    def evaluated(self) -> str | None:
        """For an eval stage: the stage whose model it scores, or the base model's name."""
        return (self.model_stage or self.base_model) if self.type == "eval" else None

    @property
    def metrics(self) -> Mapping[str, Any]:
        return (self.results or {}).get("metrics") or {}


@dataclass(frozen=True)
class Score:
    pass_at_1: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Total:
    """A sum over a model's lineage, and the stages it could not count, each with why."""

    value: float
    uncounted: tuple[str, ...] = ()


@dataclass(frozen=True)
class AblationRow:
    """One eval stage: the model it scored, its pass@1 per eval set, and what it took to train that model."""

    stage: str
    model: str
    lineage: tuple[str, ...]
    """The base model, then the stages that trained it, oldest first."""
    phase: str
    finished: bool
    scores: Mapping[str, Score]
    tokens: Total
    wall_seconds: Total


@dataclass(frozen=True)
class StageRow:
    name: str
    type: str
    phase: str
    finished: bool
    wall_seconds: float | None
    metrics: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Series:
    label: str
    steps: tuple[float, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Panel:
    """One subplot: a stage's curves over its steps."""

    title: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class BeforeAfter:
    """A GRPO stage's model against the model it started from, on one eval set both were scored on (its own
    training prompts, when an eval stage scores them, as well as the held-out sets)."""

    stage: str
    eval_set: str
    before_stage: str
    """The eval stage that scored the GRPO stage's input model."""
    after_stage: str
    before: Score
    after: Score


@dataclass(frozen=True)
class Report:
    namespace: str
    pipeline: str
    eval_sets: tuple[str, ...]
    ablation: tuple[AblationRow, ...]
    stages: tuple[StageRow, ...]
    loss: tuple[Panel, ...]
    rewards: tuple[Panel, ...]
    completion_length: tuple[Panel, ...]
    before_after: tuple[BeforeAfter, ...] = ()
    notes: str = ""
    """Free text from whoever runs the pipeline, e.g. what this miniature is and isn't."""
    generated_at: datetime | None = None


def records_from(stages: Sequence[TrainingStage], read_results: Callable[[TrainingStage], Mapping[str, Any] | None]) -> list[StageRecord]:
    """The stages in pipeline order (dependencies first), each with its results as `read_results` finds them."""
    by_name = stages_by_name(stages)
    records = []
    for name in topological_order(by_name):
        stage = by_name[name]
        model = stage.spec.inputs.model
        records.append(StageRecord(
            name=name,
            type=stage.spec.type,
            phase=(stage.status.phase if stage.status else None) or "Pending",
            depends_on=tuple(stage.spec.depends_on),
            model_stage=model.from_stage if model else None,
            base_model=(model.hf or model.uri or model.builtin) if model and not model.from_stage else None,
            results=read_results(stage),
        ))
    return records


def build_report(namespace: str, pipeline: str, records: Sequence[StageRecord], *, notes: str = "",
                 generated_at: datetime | None = None) -> Report:
    """The report of `records`, which are in pipeline order (as `records_from` gives them)."""
    by_name = {r.name: r for r in records}
    ablation = tuple(ablation_row(r, by_name) for r in records if r.type == "eval")
    eval_sets = tuple(dict.fromkeys(name for row in ablation for name in row.scores))
    return Report(
        namespace=namespace,
        pipeline=pipeline,
        eval_sets=eval_sets,
        ablation=ablation,
        stages=tuple(stage_row(r) for r in records),
        loss=tuple(p for r in records if (p := loss_panel(r))),
        rewards=tuple(p for r in records if r.type == "grpo" and (p := reward_panel(r))),
        completion_length=tuple(p for r in records if r.type == "grpo" and (p := completion_length_panel(r))),
        before_after=tuple(b for r in records if r.type == "grpo" for b in before_after(r, ablation)),
        notes=notes,
        generated_at=generated_at,
    )


def before_after(record: StageRecord, ablation: Sequence[AblationRow]) -> list[BeforeAfter]:
    """Each eval set scored on both the model `record` starts from and the model it made."""
    if record.model_stage is None:
        return []
    befores = [row for row in ablation if row.model == record.model_stage and row.finished]
    afters = [row for row in ablation if row.model == record.name and row.finished]
    return [BeforeAfter(record.name, name, before.stage, after.stage, before.scores[name], score)
            for after in afters for name, score in after.scores.items() for before in befores if name in before.scores]


def model_lineage(record: StageRecord, by_name: Mapping[str, StageRecord]) -> tuple[str | None, list[StageRecord], list[str]]:
    """(base model, the stages that trained the model `record` reads, oldest first, what could not be followed)."""
    chain: list[StageRecord] = []
    problems: list[str] = []
    name, base = record.model_stage, record.base_model
    while name is not None:
        upstream = by_name.get(name)
        if upstream is None:
            problems.append(f"{name} (no such stage)")
            break
        if any(r.name == name for r in chain):  # a cycle: the operator marks it Invalid; the report must not loop
            problems.append(f"{name} (cycle)")
            break
        chain.append(upstream)
        name, base = upstream.model_stage, upstream.base_model
    return (None if problems else base), chain[::-1], problems


def ablation_row(record: StageRecord, by_name: Mapping[str, StageRecord]) -> AblationRow:
    base, chain, problems = model_lineage(record, by_name)
    return AblationRow(
        stage=record.name,
        model=record.model_stage or f"base ({record.base_model or '?'})",
        lineage=(base or "?", *(r.name for r in chain)),
        phase=record.phase,
        finished=record.results is not None,
        scores=scores(record.metrics),
        tokens=lineage_total(chain, problems, lambda r: _number(r.metrics.get("tokens")), "token count"),
        wall_seconds=lineage_total(chain, problems, lambda r: _number((r.results or {}).get("durationSeconds")), "durationSeconds"),
    )


def scores(metrics: Mapping[str, Any]) -> dict[str, Score]:
    """Eval set → pass@1 and its interval, from an eval stage's `pass@1/<set>` metrics."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("pass@1/") and (mean := _number(value)) is not None:
            name = key.removeprefix("pass@1/")
            low, high = _number(metrics.get(f"pass@1_ci_low/{name}")), _number(metrics.get(f"pass@1_ci_high/{name}"))
            out[name] = Score(mean, mean if low is None else low, mean if high is None else high)
    return out


def lineage_total(chain: Sequence[StageRecord], problems: Sequence[str], value_of: Callable[[StageRecord], float | None], what: str) -> Total:
    total, uncounted = 0.0, list(problems)
    for record in chain:
        if record.results is None:
            uncounted.append(f"{record.name} (not finished)")
        elif (value := value_of(record)) is None:
            uncounted.append(f"{record.name} (reports no {what})")
        else:
            total += value
    return Total(total, tuple(uncounted))


def key_metrics(record: StageRecord) -> tuple[tuple[str, float], ...]:
    """The headline metrics of the stage's type (those a quality gate may name), then tokens and steps."""
    names = [m for m in GATE_METRICS.get(record.type, ()) if "<" not in m]
    names += ["tokens", "steps"] if record.type in TRAINING_TYPES else []
    metrics = record.metrics
    return tuple((n, v) for n in names if (v := _number(metrics.get(n))) is not None)


def stage_row(record: StageRecord) -> StageRow:
    return StageRow(
        name=record.name, type=record.type, phase=record.phase, finished=record.results is not None,
        wall_seconds=_number((record.results or {}).get("durationSeconds")), metrics=key_metrics(record),
    )


def curve(entries: Sequence[Mapping[str, Any]], key: str, label: str) -> Series | None:
    """`key` over the steps of logged `entries`; entries without it are skipped."""
    points = [(_step(e, i), v) for i, e in enumerate(entries) if (v := _number(e.get(key))) is not None]
    if not points:
        return None
    steps, values = zip(*points)
    return Series(label, steps, values)


def _panel(record: StageRecord, series: Sequence[Series | None]) -> Panel | None:
    kept = tuple(s for s in series if s is not None)
    title = record.name if record.name == record.type else f"{record.name} ({record.type})"
    return Panel(title, kept) if kept else None


def loss_panel(record: StageRecord) -> Panel | None:
    """Training loss per logged step, from results.json `history`."""
    return _panel(record, [curve((record.results or {}).get("history") or [], "loss", "loss")])


def reward_panel(record: StageRecord) -> Panel | None:
    """GRPO: the weighted total reward and each reward function's mean before weighting, from `rewardHistory`."""
    history = (record.results or {}).get("rewardHistory") or []
    parts = dict.fromkeys(m.group(1) for entry in history for key in entry if (m := REWARD_PART.match(key)))
    return _panel(record, [curve(history, "reward", "total (weighted)"), *(curve(history, f"rewards/{p}/mean", p) for p in parts)])


def completion_length_panel(record: StageRecord) -> Panel | None:
    """GRPO: mean, shortest and longest completion per step, in tokens."""
    history = (record.results or {}).get("rewardHistory") or []
    return _panel(record, [curve(history, key, label) for key, label in COMPLETION_LENGTH.items()])


def _step(entry: Mapping[str, Any], index: int) -> float:
    step = _number(entry.get("step"))
    return float(index + 1) if step is None else step


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
