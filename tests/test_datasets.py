"""Datasets as their publishers lay them out, read through the same `datasets` code a Hub id takes: MATH-500 (a
`test` split, `problem`), AIME 2024 (`data/train-*.parquet`, `problem`) and GPQA-Diamond (a README config,
multiple choice in `Question`, `Correct Answer`, `Incorrect Answer 1..3`), from a path and from SeaweedFS, and
scored by eval through the real trainer."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradatim.storage import s3
from gradatim.api.common import Fields
from gradatim.api.resolved import ResolvedSource, ResolvedStageSpec
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.rewards import chosen_letter, grade
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.errors import classify
from gradatim.trainer.sources import InputError, load_dataset
from gradatim.trainer.tiny import tiny_math
from tests.trainer_harness import run_trainer, stage_spec

GPQA_FIELDS = Fields(prompt="Question", answer="Correct Answer", id="Record ID",
                     choices=["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"])
# What the full-scale examples name, with the folder standing in for the Hub repository.
PUBLISHED = {
    "math500": {"split": "test", "fields": Fields(prompt="problem", id="unique_id")},
    "aime24": {"split": "train", "fields": Fields(prompt="problem")},
    "gpqa-diamond": {"config": "gpqa_diamond", "split": "train", "fields": GPQA_FIELDS},
}


def write_hub_layouts(root: Path, n: int = 12) -> dict[str, Path]:
    """Three folders laid out as the Hub repositories HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024 and
    Idavidrein/gpqa are, with the publishers' column names; the content is procedural math."""
    problems = tiny_math("eval", n, seed=3)
    math500 = root / "MATH-500"
    math500.mkdir(parents=True)
    (math500 / "test.jsonl").write_text("".join(json.dumps({
        "problem": p.prompt, "solution": p.solution(), "answer": str(p.answer), "subject": "Algebra", "level": 1 + i % 5,
        "unique_id": f"test/algebra/{i}.json"}) + "\n" for i, p in enumerate(problems)))
    aime = root / "aime_2024"
    (aime / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": 60 + i, "problem": p.prompt, "solution": p.solution(), "answer": str(p.answer),
                                          "url": f"https://example.org/{i}", "year": "2024"} for i, p in enumerate(problems)]),
                   aime / "data" / "train-00000-of-00001.parquet")
    gpqa = root / "gpqa"
    gpqa.mkdir(parents=True)
    (gpqa / "README.md").write_text("---\nconfigs:\n- config_name: gpqa_diamond\n  data_files: gpqa_diamond.csv\n"
                                    "- config_name: gpqa_main\n  data_files: gpqa_main.csv\n---\n# GPQA (test-made)\n")
    header = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    rows = [[f"rec{i}", f"What is {p.prompt}", p.answer, f"{p.answer}0", f"-{p.answer}", f"2{p.answer}"] for i, p in enumerate(problems)]
    for config, copies in (("gpqa_diamond", 1), ("gpqa_main", 2)):
        with open(gpqa / f"{config}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows * copies])
    return {"math500": math500, "aime24": aime, "gpqa-diamond": gpqa}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    return write_hub_layouts(tmp_path_factory.mktemp("hub"))


def load(source: ResolvedSource, tmp_path: Path, store=None) -> list[dict]:
    return load_dataset(source, store, Runtime.single(tmp_path / "scratch")).to_list()


def test_published_layouts_load_with_their_split_config_and_fields(layouts, tmp_path):
    for name, how in PUBLISHED.items():
        records = load(ResolvedSource(uri=str(layouts[name]), name=name, **how), tmp_path)
        assert len(records) == 12, name
        assert all(r["prompt"] and r["answer"] for r in records), name
    math = load(ResolvedSource(uri=str(layouts["math500"]), **PUBLISHED["math500"]), tmp_path)
    assert math[0]["id"] == "test/algebra/0.json" and "problem" not in math[0]
    main = load(ResolvedSource(uri=str(layouts["gpqa-diamond"]), config="gpqa_main", split="train", fields=GPQA_FIELDS), tmp_path)
    assert len(main) == 24, "the config picks the file"


def test_multiple_choice_is_lettered_shuffled_and_graded_by_letter(layouts, tmp_path):
    records = load(ResolvedSource(uri=str(layouts["gpqa-diamond"]), **PUBLISHED["gpqa-diamond"]), tmp_path)
    for r in records:
        assert len(r["choices"]) == 4 and r["answer"] in "ABCD"
        assert r["choices"]["ABCD".index(r["answer"])] == r["answer_text"], "the letter points at the correct text"
        assert all(f"{letter}) {text}" in r["prompt"] for letter, text in zip("ABCD", r["choices"]))
        assert r["prompt"].startswith("What is ") and "\\boxed{X}" in r["prompt"]
    letters = Counter(r["answer"] for r in records)
    assert len(letters) >= 3, f"GPQA lists the correct answer first; shown shuffled: {letters}"
    r = records[0]
    wrong = next(x for x in "ABCD" if x != r["answer"])
    assert grade(r, f"<think>maybe {wrong}</think> The answer is \\boxed{{{r['answer']}}}.")
    assert not grade(r, f"<think>it is {r['answer']}</think> \\boxed{{{wrong}}}")
    assert not grade(r, r["answer_text"]), "a multiple-choice answer is graded by its letter, not by its value"
    again = load(ResolvedSource(uri=str(layouts["gpqa-diamond"]), **PUBLISHED["gpqa-diamond"]), tmp_path / "again")
    assert again == records, "the shuffle is seeded by the record id: every run and rank shows the same order"


def test_letters_are_read_from_the_final_answer():
    assert chosen_letter("<think>A or B? \\boxed{A}</think> Final answer: C", 4) == "C"
    assert chosen_letter("so the answer is (b)", 4) == "B"
    assert chosen_letter("\\boxed{ D }", 4) == "D"
    assert chosen_letter("\\boxed{E}", 4) is None, "E is not among four choices"
    assert chosen_letter("no idea", 4) is None


def test_bad_split_config_or_field_says_which_and_what_to_do(layouts, tmp_path):
    """The trainer's one-line error names the input and what to change."""
    cases = [
        (ResolvedSource(uri=str(layouts["math500"]), name="math500", split="train", fields=Fields(prompt="problem")),
         r"^inputs\.evalData\[0\] \(.*MATH-500\): .*split.*test.*; check split and config"),
        (ResolvedSource(uri=str(layouts["math500"]), split="test", fields=Fields(prompt="question")),
         r"^inputs\.evalData\[0\] .*: fields name column\(s\) question, but the dataset has .*problem.*; fix fields$"),
        (ResolvedSource(uri=str(layouts["gpqa-diamond"]), config="gpqa_nope", split="train", fields=GPQA_FIELDS), r"^inputs\.evalData\[0\] .*gpqa_nope"),
    ]
    for source, message in cases:
        with pytest.raises(InputError) as failure:
            load(source, tmp_path)
        spec = ResolvedStageSpec(namespace="n", pipeline="p", stage="s", type="eval", attempt=1, cache_key="k", params={},
                                 inputs={"model": {"builtin": "tiny-model"}, "evalData": [source.to_wire()]},
                                 output={"uri": "s3://b/o/", "checkpointUri": "s3://b/o/c/"}, storage={"bucket": "b"})
        error = classify(failure.value, spec)
        assert error.field == "inputs.evalData[0]" and re.search(message, error.message), error.message


def test_from_seaweedfs_as_from_a_path_and_downloaded_once_per_node(cluster, layouts, tmp_path):
    store = cluster.s3_client()
    rt = Runtime.single(tmp_path / "scratch")
    for name, how in PUBLISHED.items():
        uri = f"s3://{cluster.s3_bucket}/datasets-test/{tmp_path.name}/{name}/"
        upload_dir(store, layouts[name], uri)
        from_s3 = load_dataset(ResolvedSource(uri=uri, name=name, **how), store, rt).to_list()
        assert from_s3 == load(ResolvedSource(uri=str(layouts[name]), name=name, **how), tmp_path), name
    copies = list((rt.workdir / "inputs").iterdir())
    assert len(copies) == 3
    before = {p: p.stat().st_mtime_ns for p in copies}
    load_dataset(ResolvedSource(uri=f"s3://{cluster.s3_bucket}/datasets-test/{tmp_path.name}/math500/", **PUBLISHED["math500"]), store, rt)
    assert {p: p.stat().st_mtime_ns for p in copies} == before, "a second read uses the node's copy"


def test_eval_reports_pass_at_1_for_each_published_set(cluster, layouts, tmp_path):
    """The examples' eval sets, as they name them, through `torchrun -m gradatim.trainer` from SeaweedFS."""
    store = cluster.s3_client()
    eval_data = []
    for name, how in PUBLISHED.items():
        uri = f"s3://{cluster.s3_bucket}/datasets-test/{tmp_path.name}/{name}/"
        upload_dir(store, layouts[name], uri)
        eval_data.append({"uri": uri, "name": name, **{k: v.to_wire() if isinstance(v, Fields) else v for k, v in how.items()}})
    spec = stage_spec(cluster, "eval", {"samplesPerProblem": 2, "maxNewTokens": 8, "temperature": 1.0, "maxBatchTokens": 2048},
                      {"model": {"builtin": "tiny-model"}, "evalData": eval_data})
    result = run_trainer(cluster, spec, tmp_path / "run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = s3.read_json(store, spec.output.uri + "results.json")["metrics"]
    for name in PUBLISHED:
        assert 0.0 <= metrics[f"pass@1/{name}"] <= 1.0
    where = s3.S3Location.parse(spec.output.uri + "results/gpqa-diamond.jsonl")
    body = store.get_object(Bucket=where.bucket, Key=where.key)["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert len(rows) == 12 and all(r["answer"] in "ABCD" and len(r["completions"]) == 2 for r in rows)
