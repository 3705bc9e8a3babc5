"""A Report as one self-contained HTML page (inline CSS, every text escaped) and the PNG plots it shows.

The ablation table's cells carry their exact values as data attributes (`data-pass-at-1`, `data-tokens`, ...),
so a reader or a test can take the numbers back out without parsing the rounded text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradatim.report.build import TOKENS_MEANS, WALL_TIME_MEANS, AblationRow, Panel, Report, Score, StageRow, Total

PLOTS = ("pass_at_1.png", "loss.png", "rewards.png", "completion_length.png")
DPI = 100

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta, .footnote, .uncounted, .lineage, .ci { color: #666; } .footnote { font-size: 12px; max-width: 900px; }
.notes { background: #f6f6f0; border-left: 4px solid #c8b560; padding: 0.2em 1em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pending td { color: #999; font-style: italic; } .uncounted, .lineage { font-size: 11px; }
img { max-width: 100%; border: 1px solid #eee; } .empty { color: #999; }
"""


def render_html(report: Report, out_dir: Path) -> Path:
    """Writes `index.html` and the PNGs it shows into `out_dir`; returns the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a plot with no data this time must not leave last run's picture behind
        (out_dir / name).unlink(missing_ok=True)
    drawn = {
        "pass_at_1.png": plot_pass_at_1(report.ablation, report.eval_sets, out_dir / "pass_at_1.png"),
        "loss.png": plot_panels(report.loss, "loss", out_dir / "loss.png"),
        "rewards.png": plot_panels(report.rewards, "reward", out_dir / "rewards.png"),
        "completion_length.png": plot_panels(report.completion_length, "tokens", out_dir / "completion_length.png"),
    }
    page = out_dir / "index.html"
    page.write_text(html_page(report, {name for name, wrote in drawn.items() if wrote}), encoding="utf-8")
    return page


# -- plots -----------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> bool:
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global figure state
    fig.savefig(path, dpi=DPI)
    return True


def plot_panels(panels: Sequence[Panel], ylabel: str, path: Path) -> bool:
    """One subplot per panel, up to three across; False (and no file) when there is nothing to draw."""
    if not panels:
        return False
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.2 * rows), layout="constrained")
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for series in panel.series:
            ax.plot(series.steps, series.values, marker="." if len(series.steps) < 30 else None, label=series.label)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pass_at_1(rows: Sequence[AblationRow], eval_sets: Sequence[str], path: Path) -> bool:
    """pass@1 of each finished eval stage, one marker per eval set, the interval as error bars."""
    finished = [r for r in rows if r.finished and r.scores]
    if not finished:
        return False
    fig = Figure(figsize=(max(5.0, 1.3 * len(finished) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.6 / max(len(eval_sets), 1)
    for j, name in enumerate(eval_sets):
        points = [(i, r.scores[name]) for i, r in enumerate(finished) if name in r.scores]
        xs = [i + (j - (len(eval_sets) - 1) / 2) * width for i, _ in points]
        ys = [100 * s.pass_at_1 for _, s in points]
        errors = [[100 * (s.pass_at_1 - s.ci_low) for _, s in points], [100 * (s.ci_high - s.pass_at_1) for _, s in points]]
        ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=4, label=name)
    ax.set_xticks(range(len(finished)), [r.model for r in finished], rotation=20, ha="right")
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="eval set", fontsize=8)
    return _save(fig, path)


# -- HTML ------------------------------------------------------------------------------------------------


def html_page(report: Report, plots: set[str]) -> str:
    title = f"{report.namespace}/{report.pipeline}"
    done = sum(1 for s in report.stages if s.finished)
    when = f" · generated {report.generated_at:%Y-%m-%d %H:%M:%S %Z}".rstrip() if report.generated_at else ""
    parts = [
        f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Gradatim report: {escape(title)}</title>",
        f"<style>{CSS}</style>\n</head>\n<body>",
        f"<h1>Pipeline {escape(title)}</h1>",
        f"<p class=\"meta\">{done}/{len(report.stages)} stages finished{escape(when)}</p>",
    ]
    if report.notes.strip():
        paragraphs = "".join(f"<p>{escape(p.strip())}</p>" for p in report.notes.split("\n\n") if p.strip())
        parts.append(f"<section class=\"notes\" id=\"notes\">\n<h2>About this run</h2>\n{paragraphs}\n</section>")
    parts += [
        "<h2>Ablation: pass@1 by model</h2>",
        ablation_table(report),
        "<p class=\"footnote\">pass@1 in percent: the mean over problems of each problem's share of correct samples, "
        "with the confidence interval (normal approximation over problems) in brackets. "
        f"{escape(TOKENS_MEANS)} {escape(WALL_TIME_MEANS)}</p>",
        figure("pass@1 by stage", "pass_at_1.png", plots, "no eval stage has finished yet"),
        figure("Training loss per stage", "loss.png", plots, "no training stage has finished yet"),
        figure("GRPO reward parts over steps", "rewards.png", plots, "no GRPO stage has finished yet"),
        "<p class=\"footnote\">Each reward function's mean before weighting, and the weighted total that GRPO optimises.</p>"
        if "rewards.png" in plots else "",
        before_after_table(report),
        figure("GRPO completion length over steps", "completion_length.png", plots, "no GRPO stage has finished yet"),
        "<h2>Stages</h2>",
        stage_table(report.stages),
        "</body>\n</html>\n",
    ]
    return "\n".join(parts)


def figure(title: str, name: str, plots: set[str], empty: str) -> str:
    body = f"<img src=\"{name}\" alt=\"{escape(title)}\">" if name in plots else f"<p class=\"empty\">{escape(empty)}</p>"
    return f"<h2>{escape(title)}</h2>\n{body}"


def ablation_table(report: Report) -> str:
    if not report.ablation:
        return "<p class=\"empty\">This pipeline has no eval stage.</p>"
    sets = report.eval_sets
    head = "".join(f"<th>{escape(name)}</th>" for name in sets)
    rows = []
    for row in report.ablation:
        if row.finished:
            cells = "".join(score_cell(name, row.scores.get(name)) for name in sets)
        else:
            cells = f"<td class=\"pending\" colspan=\"{max(len(sets), 1)}\">pending ({escape(row.phase)})</td>"
        rows.append(
            f"<tr data-stage=\"{escape(row.stage)}\" class=\"{'finished' if row.finished else 'pending'}\">"
            f"<td class=\"model\">{escape(row.model)}<div class=\"lineage\">{escape(' → '.join(row.lineage))}</div></td>"
            f"{cells}{total_cell('tokens', row.tokens, format_tokens)}{total_cell('seconds', row.wall_seconds, format_seconds)}"
            f"<td class=\"stage\">{escape(row.stage)}</td></tr>"
        )
    return (
        "<table id=\"ablation\">\n<thead><tr><th>model</th>" + (head or "<th>pass@1</th>")
        + "<th>tokens trained</th><th>wall time</th><th>eval stage</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows) + "\n</tbody>\n</table>"
    )


def before_after_table(report: Report) -> str:
    """pass@1 of each GRPO stage's input model and of its own, per eval set both were scored on."""
    if not report.before_after:
        return ""
    rows = []
    for b in report.before_after:
        change = b.after.pass_at_1 - b.before.pass_at_1
        rows.append(
            f"<tr data-stage=\"{escape(b.stage)}\" data-eval-set=\"{escape(b.eval_set)}\"><td>{escape(b.stage)}</td><td>{escape(b.eval_set)}</td>"
            f"{score_cell(b.eval_set, b.before)}{score_cell(b.eval_set, b.after)}"
            f"<td class=\"num\" data-change=\"{change!r}\">{'+' if change >= 0 else '−'}{format_percent(abs(change))}</td></tr>"
        )
    return (
        "<h2>GRPO: pass@1 before and after</h2>\n<table id=\"grpo-before-after\">\n<thead><tr><th>stage</th><th>eval set</th>"
        "<th>before (its input model)</th><th>after</th><th>change (points)</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    )


def score_cell(name: str, score: Score | None) -> str:
    if score is None:
        return f"<td class=\"score num\" data-eval-set=\"{escape(name)}\">—</td>"
    return (
        f"<td class=\"score num\" data-eval-set=\"{escape(name)}\" data-pass-at-1=\"{score.pass_at_1!r}\" "
        f"data-ci-low=\"{score.ci_low!r}\" data-ci-high=\"{score.ci_high!r}\">{format_percent(score.pass_at_1)} "
        f"<span class=\"ci\">[{format_percent(score.ci_low)}, {format_percent(score.ci_high)}]</span></td>"
    )


def total_cell(kind: str, total: Total, fmt: Callable[[float], str]) -> str:
    note = f"<div class=\"uncounted\">not counted: {escape(', '.join(total.uncounted))}</div>" if total.uncounted else ""
    mark = "*" if total.uncounted else ""
    return f"<td class=\"{kind} num\" data-{kind}=\"{total.value!r}\">{fmt(total.value)}{mark}{note}</td>"


def stage_table(stages: Sequence[StageRow]) -> str:
    rows = []
    for s in stages:
        wall = format_seconds(s.wall_seconds) if s.wall_seconds is not None else "—"
        metrics = ", ".join(f"{escape(k)} {format_metric(k, v)}" for k, v in s.metrics) or "—"
        rows.append(
            f"<tr data-stage=\"{escape(s.name)}\" class=\"{'finished' if s.finished else 'pending'}\">"
            f"<td>{escape(s.name)}</td><td>{escape(s.type)}</td><td>{escape(s.phase)}</td><td class=\"num\">{wall}</td><td>{metrics}</td></tr>"
        )
    return (
        "<table id=\"stages\">\n<thead><tr><th>stage</th><th>type</th><th>phase</th><th>wall time</th><th>key metrics</th></tr></thead>\n"
        "<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    )


# -- numbers ---------------------------------------------------------------------------------------------


def format_percent(ratio: float) -> str:
    return f"{100 * ratio:.1f}"


def format_tokens(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_metric(name: str, value: float) -> str:
    return format_tokens(value) if name == "tokens" else f"{value:.4g}"
