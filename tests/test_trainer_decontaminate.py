"""`decontaminate` removes a planted overlap with the eval set, and only that, and says why."""

from __future__ import annotations

import json

from gradatim.storage import s3
from gradatim.trainer.artifacts import download_dir, upload_dir
from gradatim.trainer.sources import builtin_records, write_jsonl
from gradatim.trainer.stages.decontaminate import decontaminate
from tests.trainer_harness import run_trainer, stage_spec


def planted_training_set() -> tuple[list[dict], list[dict]]:
    train = builtin_records("tiny-math:train:80", 0)
    evals = builtin_records("tiny-math:eval:20", 0)
    leaks = [
        {"id": "leak-case", "prompt": evals[0]["prompt"].upper().replace("?", " ?"), "solution": "copied"},
        {"id": "leak-inside", "prompt": "Homework: " + evals[1]["prompt"] + " Show your work.", "solution": "copied"},
        {"id": "leak-latex", "prompt": evals[2]["prompt"].replace(" + ", "+").replace(" * ", " \\times "), "solution": "copied"},
    ]
    return train + leaks, evals


def test_removes_exactly_the_planted_overlaps():
    train, evals = planted_training_set()
    kept, removed = decontaminate(train, [("eval", evals)], n=13, threshold=0.5, fields=["prompt"])
    removed_ids = {r["record"]["id"] for r in removed}
    assert {"leak-case", "leak-inside"} <= removed_ids
    assert removed_ids <= {"leak-case", "leak-inside", "leak-latex"}, removed_ids
    assert len(kept) + len(removed) == len(train)
    why = next(r for r in removed if r["record"]["id"] == "leak-inside")
    assert why["evalSet"] == "eval" and why["evalIndex"] == 1 and why["overlap"] >= 0.5 and why["sharedNgram"]


def test_decontaminate_stage_end_to_end(cluster, tmp_path):
    train, evals = planted_training_set()
    store = cluster.s3_client()
    spec = stage_spec(cluster, "decontaminate", {"ngramSize": 13, "threshold": 0.5, "fields": ["prompt"]}, {})
    data_uri = spec.output.uri.replace("/decontaminate/", "/decontaminate-inputs/") + "train/"
    write_jsonl(train, tmp_path / "in" / "train.jsonl")
    upload_dir(store, tmp_path / "in", data_uri)
    spec = spec.model_copy(update={"inputs": spec.inputs.model_validate({"data": [{"uri": data_uri}], "evalData": [{"builtin": "tiny-math:eval:20", "name": "eval"}]})})
    result = run_trainer(cluster, spec, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    results = s3.read_json(store, spec.output.uri + "results.json")
    assert results["metrics"]["removed"] >= 2 and results["metrics"]["kept"] == len(train) - results["metrics"]["removed"]
    removed = [json.loads(line) for line in (download_dir(store, results["outputs"]["removed"], tmp_path / "removed") / "part-00000.jsonl").read_text().splitlines()]
    assert {"leak-case", "leak-inside"} <= {r["record"]["id"] for r in removed}
    kept = (download_dir(store, results["outputs"]["data"], tmp_path / "kept") / "part-00000.jsonl").read_text()
    assert "leak-case" not in kept and len(kept.splitlines()) == results["metrics"]["kept"]
