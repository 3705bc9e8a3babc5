"""`gradatim report`: the quickstart recipe's stages with results.json shaped as the trainer writes them,
rendered and read back: the ablation table's numbers are the eval stages' results, lineage totals add up,
unfinished stages render as pending, the plots are real PNGs; and the whole command against the real API
server and SeaweedFS, publishing next to the outputs."""

from __future__ import annotations

import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gradatim.storage import s3
from gradatim.api import GROUP, VERSION, TrainingStage
from gradatim.cli import main
from gradatim.operator.kube import STAGES, replace_status
from gradatim.report.build import Report, build_report, records_from
from gradatim.report.collect import NOTES_ANNOTATION, publish
from gradatim.report.render import render_html

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "mini-reasoning"
EVAL_SETS = [{"builtin": "tiny-math:eval", "name": "math-eval"}, {"builtin": "tiny-math:eval:hard", "name": "math-hard"}]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quickstart_stage_bodies() -> list[dict[str, Any]]:
    """examples/quickstart/stages.yaml, with a second eval set on every eval stage."""
    bodies = list(yaml.safe_load_all((REPO / "examples/quickstart/stages.yaml").read_text()))
    for body in bodies:
        if body["spec"]["type"] == "eval":
            body["spec"]["inputs"]["evalData"] = EVAL_SETS
    return bodies


# -- results.json as gradatim.trainer.report.Reporter.results writes them --------------------------------

def _record(name: str, metrics: dict[str, float], outputs: list[str], duration: float, history: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    out = f"s3://gradatim/default/{PIPELINE}/{name}/k-{name}/"
    return {"metrics": metrics, "outputs": {o: out + o + "/" for o in outputs}, "durationSeconds": duration, "attempt": 1,
            "cacheKey": f"k-{name}", "history": history, **extra}


def _training_history(losses: list[float]) -> list[dict[str, float]]:
    return [{"step": float(i + 1), "elapsed_seconds": 4.0 * (i + 1), "loss": loss, "learning_rate": 1e-3, "grad_norm": 2.5 - 0.1 * i,
             "tokens_per_second": 1800.0} for i, loss in enumerate(losses)]


def _eval(name: str, duration: float, scores: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    for set_name, (mean, low, high) in scores.items():
        metrics |= {f"pass@1/{set_name}": mean, f"pass@1_ci_low/{set_name}": low, f"pass@1_ci_high/{set_name}": high}
    means = [s[0] for s in scores.values()]
    metrics |= {"pass@1": sum(means) / len(means), "pass@1_ci_low": min(s[1] for s in scores.values()),
                "pass@1_ci_high": max(s[2] for s in scores.values()), "completion_length_mean": 71.25, "samples_per_problem": 4.0}
    history = [{"step": float(i), "elapsed_seconds": 2.0 * i, "tokens_per_second": 0.0} for i in (16, 32)]
    return _record(name, dict(sorted(metrics.items())), ["results"], duration, history)


def _grpo_step(step: int) -> dict[str, float]:
    correctness, repetition, fmt = -0.9 + 0.05 * step, -0.02 * step, 0.1 * step
    return {"reward": 8 / 13 * correctness + 1 / 13 * repetition + 0.1 * fmt, "reward_std": 0.3,
            "rewards/correctness/mean": correctness, "rewards/correctness/std": 0.2, "rewards/repetition/mean": repetition,
            "rewards/repetition/std": 0.01, "rewards/format/mean": fmt, "rewards/format/std": 0.4,
            "completions/mean_length": 90.0 - 3 * step, "completions/min_length": 40.0 - step, "completions/max_length": 96.0,
            "completions/clipped_ratio": 0.5, "completions/mean_terminated_length": 60.0, "step": step}


RESULTS: dict[str, dict[str, Any]] = {
    "teacher-rollouts": _record("teacher-rollouts", {"acceptance_rate": 0.41015625, "pass_rate_mean": 0.45, "kept_traces": 210.0, "kept_prompts": 0.0,
                                                     "pairs": 0.0, "prompts": 128.0, "samples": 512.0},
                                ["traces", "pairs", "prompts", "stats"], 88.2, [{"step": 64.0, "elapsed_seconds": 40.0, "tokens_per_second": 0.0}]),
    "decontaminate": _record("decontaminate", {"kept": 205.0, "removed": 5.0, "removed_fraction": 5 / 210}, ["data", "removed"], 1.7, []),
    "eval-base": _eval("eval-base", 30.5, {"math-eval": (0.03125, 0.0, 0.0736718893), "math-hard": (0.0, 0.0, 0.0)}),
    "midtrain": _record("midtrain", {"train_loss": 1.2634, "steps": 12.0, "documents": 205.0, "sequences": 31.0, "tokens": 61447.0,
                                     "packing_efficiency": 0.9671}, ["model"], 312.75, _training_history([3.9, 3.1, 2.4, 1.9, 1.5, 1.26])),
    "eval-midtrain": _eval("eval-midtrain", 31.0, {"math-eval": (0.2578125, 0.1721368841, 0.3434881159), "math-hard": (0.09375, 0.0312, 0.1563)}),
    "sft": _record("sft", {"train_loss": 0.8712, "steps": 26.0, "examples": 205.0, "tokens": 30211.0}, ["model"], 140.25,
                   _training_history([1.4, 1.1, 0.95, 0.87])),
    "eval-sft": _eval("eval-sft", 29.0, {"math-eval": (0.4296875, 0.3321770137, 0.5271979863), "math-hard": (0.1875, 0.0961, 0.2789)}),
    "sft-rollouts": _record("sft-rollouts", {"acceptance_rate": 0.44, "pass_rate_mean": 0.5, "kept_traces": 100.0, "kept_prompts": 30.0, "pairs": 41.0,
                                             "prompts": 128.0, "samples": 512.0}, ["traces", "pairs", "prompts", "stats"], 61.0, []),
    "dpo": _record("dpo", {"train_loss": 0.6412, "reward_margin": 0.1421, "reward_accuracy": 0.75, "pairs": 41.0, "steps": 6.0}, ["model"], 55.5,
                   [{**h, "dpo_reward_margin": 0.02 * h["step"], "dpo_reward_accuracy": 0.5} for h in _training_history([0.69, 0.68, 0.66, 0.64])]),
    "eval-dpo": _eval("eval-dpo", 28.5, {"math-eval": (0.4453125, 0.3489123401, 0.5417126599), "math-hard": (0.21875, 0.1155, 0.322)}),
    "grpo": _record("grpo", {"train_loss": 0.0123, "reward_mean": _grpo_step(5)["reward"], "reward_std": 0.3,
                             "correctness_mean": _grpo_step(5)["rewards/correctness/mean"], "completion_length_mean": 75.0, "steps": 5.0, "prompts": 30.0},
                    ["model"], 402.0, _training_history([0.01, 0.02, 0.015, 0.012, 0.0123]), rewardHistory=[_grpo_step(s) for s in range(1, 6)]),
}
PHASES = {name: "Succeeded" for name in RESULTS} | {"eval-grpo": "Running"}


def stages_with_status(phases: dict[str, str]) -> list[TrainingStage]:
    stages = []
    for body in quickstart_stage_bodies():
        name = body["metadata"]["name"]
        body["metadata"]["namespace"] = "default"
        if name in phases:
            body["status"] = {"phase": phases[name], "cacheKey": f"k-{name}"}
        stages.append(TrainingStage.model_validate(body))
    return stages


def read_fixture(stage: TrainingStage) -> dict[str, Any] | None:
    return RESULTS.get(stage.metadata["name"]) if stage.status and stage.status.phase == "Succeeded" else None


# -- reading the page back -----------------------------------------------------------------------------

class Tables(HTMLParser):
    """Every table by id: its rows, each as (the tr's attributes, [(a cell's attributes, its text)])."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: tuple[dict[str, str], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a, []))
        elif tag == "td" and self._table is not None:
            self._cell = (a, [])
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1][1].append((self._cell[0], " ".join("".join(self._cell[1]).split())))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)


def parse(page: Path) -> Tables:
    tables = Tables()
    tables.feed(page.read_text(encoding="utf-8"))
    return tables


def rows_by_stage(tables: Tables, table: str) -> dict[str, list[tuple[dict[str, str], str]]]:
    return {attrs["data-stage"]: cells for attrs, cells in tables.tables[table] if "data-stage" in attrs}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_table_matches_results(page: Path, results: dict[str, dict[str, Any]]) -> int:
    """Every score cell of the ablation table equals its eval stage's results.json, exactly and as shown; returns the count."""
    checked = 0
    for stage, cells in rows_by_stage(parse(page), "ablation").items():
        for attrs, text in cells:
            if "data-eval-set" not in attrs:
                continue
            metrics, name = results[stage]["metrics"], attrs["data-eval-set"]
            mean, low, high = metrics[f"pass@1/{name}"], metrics[f"pass@1_ci_low/{name}"], metrics[f"pass@1_ci_high/{name}"]
            assert (float(attrs["data-pass-at-1"]), float(attrs["data-ci-low"]), float(attrs["data-ci-high"])) == (mean, low, high)
            assert text == f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
            checked += 1
    return checked


# -- the tests -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Report, Path]:
    records = records_from(stages_with_status(PHASES), read_fixture)
    report = build_report("default", PIPELINE, records, notes="A miniature: a 2-layer model on <generated> math.\n\nNot a benchmark.")
    return report, render_html(report, tmp_path_factory.mktemp("report"))


def test_the_ablation_table_shows_each_eval_stages_pass_at_1_and_interval(rendered):
    report, page = rendered
    ablation = rows_by_stage(parse(page), "ablation")
    assert list(ablation) == ["eval-base", "eval-midtrain", "eval-sft", "eval-dpo", "eval-grpo"]  # pipeline order
    assert [row.model for row in report.ablation] == ["base (tiny-model)", "midtrain", "sft", "dpo", "grpo"]
    assert [attrs.get("data-eval-set") for attrs, _ in ablation["eval-sft"] if "data-eval-set" in attrs] == ["math-eval", "math-hard"]
    assert assert_table_matches_results(page, RESULTS) == 4 * 2  # four finished eval stages, two sets each


def test_tokens_and_wall_time_add_up_over_the_models_lineage(rendered):
    report, page = rendered
    rows = {row.stage: row for row in report.ablation}
    midtrain, sft = RESULTS["midtrain"], RESULTS["sft"]
    assert rows["eval-base"].tokens.value == 0 and rows["eval-base"].lineage == ("tiny-model",)
    assert rows["eval-midtrain"].tokens.value == midtrain["metrics"]["tokens"]
    assert rows["eval-sft"].tokens.value == midtrain["metrics"]["tokens"] + sft["metrics"]["tokens"]
    assert rows["eval-sft"].wall_seconds.value == midtrain["durationSeconds"] + sft["durationSeconds"]
    assert rows["eval-sft"].lineage == ("tiny-model", "midtrain", "sft") and not rows["eval-sft"].tokens.uncounted
    # dpo and grpo write no token count: counted as far as known, and said so
    assert rows["eval-grpo"].tokens.value == midtrain["metrics"]["tokens"] + sft["metrics"]["tokens"]
    assert rows["eval-grpo"].tokens.uncounted == ("dpo (reports no token count)", "grpo (reports no token count)")
    assert rows["eval-grpo"].wall_seconds.value == sum(RESULTS[s]["durationSeconds"] for s in ("midtrain", "sft", "dpo", "grpo"))
    cells = {stage: {a["class"].split()[0]: (a, text) for a, text in row} for stage, row in rows_by_stage(parse(page), "ablation").items()}
    assert float(cells["eval-sft"]["tokens"][0]["data-tokens"]) == 61447.0 + 30211.0 and cells["eval-sft"]["tokens"][1] == "91.7k"
    assert float(cells["eval-sft"]["seconds"][0]["data-seconds"]) == 312.75 + 140.25 and cells["eval-sft"]["seconds"][1] == "7m 33s"
    assert "not counted: dpo (reports no token count)" in cells["eval-dpo"]["tokens"][1]


def test_unfinished_stages_render_as_pending(rendered, tmp_path):
    _, page = rendered
    pending = rows_by_stage(parse(page), "ablation")["eval-grpo"]
    assert [text for _, text in pending][1] == "pending (Running)"
    stages = rows_by_stage(parse(page), "stages")
    assert [text for _, text in stages["eval-grpo"]][:4] == ["eval-grpo", "eval", "Running", "—"]
    assert [text for _, text in stages["sft"]] == ["sft", "sft", "Succeeded", "2m 20s", "train_loss 0.8712, tokens 30.2k, steps 26"]

    # A lineage stage still running: its tokens and time are not counted yet, and the row says so.
    running = build_report("default", PIPELINE, records_from(stages_with_status(PHASES | {"sft": "Running", "eval-sft": "Pending"}), read_fixture))
    eval_sft = next(row for row in running.ablation if row.stage == "eval-sft")
    assert not eval_sft.finished and eval_sft.tokens.uncounted == ("sft (not finished)",)

    # Nothing has run yet: no stage has a status, nothing to plot; the page still renders, says so, and a
    # directory that held an earlier render keeps none of its plots.
    render_html(rendered[0], tmp_path)
    empty = render_html(build_report("default", PIPELINE, records_from(stages_with_status({}), read_fixture)), tmp_path)
    tables = parse(empty)
    assert {attrs["class"] for attrs, _ in tables.tables["ablation"] if "data-stage" in attrs} == {"pending"}
    assert {cells[2][1] for cells in rows_by_stage(tables, "stages").values()} == {"Pending"}
    assert tables.images == [] and not list(tmp_path.glob("*.png"))
    assert "no eval stage has finished yet" in empty.read_text()


def test_plots_are_png_files_the_page_shows(rendered):
    report, page = rendered
    images = parse(page).images
    assert images == ["pass_at_1.png", "loss.png", "rewards.png", "completion_length.png"]
    for name in images:
        width, height = png_size(page.parent / name)
        assert width >= 400 and height >= 300 and (page.parent / name).stat().st_size > 10_000, name
    # one loss panel per training stage; GRPO's reward parts and completion lengths as TRL logged them
    assert [p.title for p in report.loss] == ["midtrain", "sft", "dpo", "grpo"]
    (rewards,) = report.rewards
    history = RESULTS["grpo"]["rewardHistory"]
    assert {s.label: s.values for s in rewards.series} == {
        "total (weighted)": tuple(h["reward"] for h in history),
        **{part: tuple(h[f"rewards/{part}/mean"] for h in history) for part in ("correctness", "repetition", "format")},
    }
    (lengths,) = report.completion_length
    assert lengths.series[0].label == "mean" and lengths.series[0].values == tuple(h["completions/mean_length"] for h in history)
    assert lengths.series[0].steps == (1, 2, 3, 4, 5)


def test_notes_render_escaped(rendered):
    _, page = rendered
    text = page.read_text()
    assert "<p>A miniature: a 2-layer model on &lt;generated&gt; math.</p><p>Not a benchmark.</p>" in text
    assert "<generated>" not in text


def test_gradatim_report_reads_the_cluster_and_publishes_next_to_the_outputs(cluster, kube, namespace, tmp_path):
    """The command end to end: stages and status from the API server, results.json from SeaweedFS through the
    pipeline's Secret, the page written locally and to s3://<bucket>/<namespace>/<pipeline>/report/."""
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s3"}, "stringData": {
        "AWS_ACCESS_KEY_ID": cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_key, "AWS_ENDPOINT_URL": cluster.s3_endpoint}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingpipelines", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingPipeline",
        "metadata": {"name": PIPELINE, "annotations": {NOTES_ANNOTATION: "What this miniature is and isn't."}},
        "spec": {"storage": {"bucket": cluster.s3_bucket, "secretRef": {"name": "s3"}}}})
    store = cluster.s3_client()
    for body in quickstart_stage_bodies():
        name = body["metadata"]["name"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingstages", body)
        if name in RESULTS:
            s3.write_json(store, f"s3://{cluster.s3_bucket}/{namespace}/{PIPELINE}/{name}/k-{name}/results.json", RESULTS[name])
            replace_status(kube, STAGES, namespace, name, {"phase": "Succeeded", "cacheKey": f"k-{name}"})
    replace_status(kube, STAGES, namespace, "eval-grpo", {"phase": "Running", "cacheKey": "k-eval-grpo"})  # no results.json yet

    out = tmp_path / "out"
    assert main(["report", PIPELINE, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig), "--out", str(out)]) == 0
    assert assert_table_matches_results(out / "index.html", RESULTS) == 8
    prefix = f"{namespace}/{PIPELINE}/report/"
    published = store.get_object(Bucket=cluster.s3_bucket, Key=prefix + "index.html")
    assert published["ContentType"] == "text/html"
    page = published["Body"].read().decode()
    assert page == (out / "index.html").read_text() and "What this miniature is and isn&#x27;t." in page
    keys = {o["Key"] for o in store.list_objects_v2(Bucket=cluster.s3_bucket, Prefix=prefix)["Contents"]}
    assert keys == {prefix + n for n in ("index.html", "pass_at_1.png", "loss.png", "rewards.png", "completion_length.png")}
    assert store.get_object(Bucket=cluster.s3_bucket, Key=prefix + "loss.png")["Body"].read() == (out / "loss.png").read_bytes()
    # publish() alone, as a caller without Kubernetes uses it
    assert publish(store, out, f"s3://{cluster.s3_bucket}/elsewhere/") == f"s3://{cluster.s3_bucket}/elsewhere/index.html"


def test_grpo_before_and_after_on_each_eval_set_both_models_were_scored_on(tmp_path):
    """The GRPO stage's input model (dpo, scored by eval-dpo) against its own (eval-grpo), per eval set."""
    results = RESULTS | {"eval-grpo": _eval("eval-grpo", 30.0, {"math-eval": (0.5, 0.41, 0.59), "math-hard": (0.2, 0.12, 0.28)})}
    records = records_from(stages_with_status({name: "Succeeded" for name in results}),
                           lambda st: results.get(st.metadata["name"]) if st.status and st.status.phase == "Succeeded" else None)
    report = build_report("default", PIPELINE, records)
    assert [(b.stage, b.eval_set, b.before_stage, b.after_stage) for b in report.before_after] == [
        ("grpo", "math-eval", "eval-dpo", "eval-grpo"), ("grpo", "math-hard", "eval-dpo", "eval-grpo")]
    rows = parse(render_html(report, tmp_path)).tables["grpo-before-after"]
    cells = {attrs["data-eval-set"]: [text for _, text in row] for attrs, row in rows if attrs}
    assert cells["math-eval"] == ["grpo", "math-eval", "44.5 [34.9, 54.2]", "50.0 [41.0, 59.0]", "+5.5"]
    assert cells["math-hard"][-1] == "−1.9"
    pending = build_report("default", PIPELINE, records_from(stages_with_status(PHASES), read_fixture))
    assert pending.before_after == (), "eval-grpo has not finished: no after"
