"""The live view of a pipeline run: one row per stage (phase, progress, loss or reward, ETA, headline result),
redrawn in place on a terminal and printed as a line per change in logs. Shared by `make quickstart` (stages
from the API server) and `gradatim run` (stages from the local runner).

`stage_views` is pure; `follow` is the loop, fed by a `poll` callable that does the I/O.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from gradatim.api.stage import Progress, TrainingStage
from gradatim.planner.graph import stages_by_name, topological_order

FINISHED = ("Succeeded", "Failed")  # pipeline phases after which there is nothing more to follow
PHASE_STYLE = {"Running": "bold blue", "Succeeded": "green", "Cached": "green", "Failed": "bold red", "Invalid": "bold red",
               "Blocked": "yellow", "Retrying": "yellow", "Suspended": "magenta"}


@dataclass(frozen=True)
class StageView:
    name: str
    type: str
    phase: str
    attempt: int
    step: int
    total_steps: int
    eta_seconds: int | None
    live: str  # the running attempt's loss or reward, from its status
    result: str  # the finished stage's headline metric
    progress_text: str = ""  # `step/total`, after the activity when the trainer names one

    @property
    def progress(self) -> str:
        return (self.progress_text or f"{self.step}/{self.total_steps}") if self.total_steps else ""

    def line(self) -> str:
        parts = [f"{self.name:<18}", f"{self.type:<13}", f"{self.phase:<10}", self.progress, self.live, self.result,
                 f"ETA {clock(self.eta_seconds)}" if self.eta_seconds and self.phase == "Running" else ""]
        return "  ".join(p for p in parts if p).rstrip()


def clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def headline(type_: str, metrics: Mapping[str, float], first_set: str | None = None) -> str:
    """The one number that says how a finished stage went. An eval's is its first eval set's pass@1 (`first_set`,
    when named; the others are in its results and the report), else the pass@1 over all its sets."""
    if type_ == "eval" and "pass@1" in metrics:
        key = f"/{first_set}" if first_set and f"pass@1/{first_set}" in metrics else ""
        low, high = metrics.get(f"pass@1_ci_low{key}"), metrics.get(f"pass@1_ci_high{key}")
        ci = f" [{low:.1%}, {high:.1%}]" if low is not None and high is not None else ""
        return f"pass@1 {metrics[f'pass@1{key}']:.1%}{ci}"
    for key, label in (("acceptance_rate", "accepted"), ("removed_fraction", "removed")):
        if key in metrics:
            return f"{label} {metrics[key]:.1%}"
    for key in ("reward_mean", "reward_margin", "train_loss"):
        if key in metrics:
            return f"{key} {metrics[key]:.4g}"
    return ""


def live_values(progress: Progress | None) -> str:
    """Loss for training stages, reward for GRPO, as the status has them from the trainer's progress.json."""
    if progress is None:
        return ""
    parts = [f"{k} {v:.4g}" for k, v in (("loss", progress.loss), ("reward_mean", progress.reward_mean)) if v is not None]
    return "  ".join(parts)


def stage_views(stages: Sequence[TrainingStage]) -> list[StageView]:
    """One view per stage, in pipeline order, from the stages' status alone."""
    by_name = stages_by_name(stages)
    views = []
    for name in topological_order(by_name):
        stage = by_name[name]
        st = stage.status
        progress = st.progress if st else None
        phase = (st.phase if st else None) or "Pending"
        views.append(StageView(
            name=name, type=stage.spec.type, phase=phase, attempt=st.attempt if st else 0,
            step=progress.step if progress else 0, total_steps=progress.total_steps if progress else 0,
            eta_seconds=progress.eta_seconds if progress else None, progress_text=progress.text if progress else "",
            live=live_values(progress) if phase == "Running" else "",
            result=headline(stage.spec.type, st.metrics, next((d.name for d in stage.spec.inputs.eval_data[:1]), None))
            if st and phase in ("Succeeded", "Cached") else "",
        ))
    return views


# The columns in the order shown, and what gives way, in order, on a narrow terminal: the bar narrows, then the type
# goes, the running stage's activity text, its live values, the bar, the ETA and last the progress column. The stage's
# name, phase and result always stay whole.
COLUMNS = ("stage", "type", "phase", "progress", "live", "result", "ETA")
GIVE_WAY = ("wide bar", "type", "activity", "live", "bar", "ETA", "progress")


def table(title: str, views: Sequence[StageView], width: int | None = None) -> Table:
    """The views as a table, in the widest layout that fits `width` terminal columns (all of it when None)."""
    if width is None:
        return _table(title, views, set())
    measure = Console(width=10_000)  # a table's natural width, unconstrained
    for dropped in range(len(GIVE_WAY) + 1):
        t = _table(title, views, set(GIVE_WAY[:dropped]))
        if measure.measure(t).maximum <= width:
            return t
    return t


def _table(title: str, views: Sequence[StageView], dropped: set[str]) -> Table:
    columns = [c for c in COLUMNS if c not in dropped]
    t = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        t.add_column(column, no_wrap=True)
    for v in views:
        style = PHASE_STYLE.get(v.phase, "")
        text = v.progress if "activity" not in dropped else f"{v.step}/{v.total_steps}"
        bar = "" if "bar" in dropped else progress_bar(v.step, v.total_steps, "", 8 if "wide bar" in dropped else 16)
        cells = {
            "stage": v.name, "type": v.type, "phase": f"[{style}]{v.phase}[/]" if style else v.phase,
            "progress": f"{bar}{text}" if v.total_steps else "",
            "live": v.live, "result": v.result, "ETA": clock(v.eta_seconds) if v.phase == "Running" else "",
        }
        t.add_row(*(cells[c] for c in columns))
    return t


def progress_bar(step: int, total: int, text: str, width: int = 16) -> str:
    done = min(width, round(width * step / total)) if total else 0
    return f"{'█' * done}{'░' * (width - done)} {text}"


Poll = Callable[[], tuple[str | None, list[StageView]]]  # (pipeline phase, stage views)


def follow(title: str, poll: Poll, interval: float = 1.0, timeout: float | None = None, console: Console | None = None) -> str | None:
    """Shows the views until the pipeline finishes (or `timeout` passes); returns the last pipeline phase.
    On a terminal the table is redrawn in place; otherwise each stage's line is printed when it changes."""
    console = console or Console()
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    phase, views = poll()

    def heading() -> str:
        return f"{title}  {phase or 'Pending'}  {clock(time.monotonic() - started)}"

    if console.is_terminal:
        with Live(table(heading(), views, console.width), console=console, refresh_per_second=4) as live:
            while phase not in FINISHED and (deadline is None or time.monotonic() < deadline):
                time.sleep(interval)
                phase, views = poll()
                live.update(table(heading(), views, console.width))  # the width read each time: a resized terminal
        return phase
    shown: dict[str, str] = {}
    while True:
        for v in views:
            # Progress changes often; print a running stage at most every ~10% so logs stay readable.
            key = f"{v.phase} {v.step * 10 // v.total_steps if v.total_steps else 0} {v.result}"
            if shown.get(v.name) != key:
                shown[v.name] = key
                print(f"[{clock(time.monotonic() - started)}] {v.line()}", file=console.file or sys.stdout, flush=True)
        if phase in FINISHED or (deadline is not None and time.monotonic() >= deadline):
            return phase
        time.sleep(interval)
        phase, views = poll()
