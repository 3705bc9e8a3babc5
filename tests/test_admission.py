"""Admission without an API server (`gradatim.api.admission`): the generated CRDs' schema and CEL rules, checked
locally with the API server's words, and `gradatim run`'s recipe loading on top of it. No cluster needed;
tests/test_api_server.py holds the same corpus against the real API server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradatim.api import admission
from gradatim.api.hyperparams import GRPOParams
from gradatim.local.recipe import RecipeError, load_recipe
from tests.bad_specs import BAD_SPECS, DELETE, VALID_PIPELINE, VALID_STAGE, merge

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir())


def test_both_kinds_load_from_the_generated_crds():
    """Loading compiles every CEL rule and refuses a schema keyword or CEL function the local check lacks."""
    assert set(admission.kinds()) == {"TrainingStage", "TrainingPipeline"}


@pytest.mark.parametrize("bad", BAD_SPECS, ids=lambda c: c.case.replace(" ", "-"))
def test_bad_spec_is_refused_naming_the_field(bad):
    """The whole corpus the API server refuses (test_api_server.py), refused here with the same field and words."""
    problems = admission.validate(bad.body())
    assert any(p.field == bad.field and bad.allowed in str(p) for p in problems), f"{bad.case}: {problems}"


def test_no_rule_fails_to_evaluate_on_the_corpus():
    """A rule reading a field it did not check with has() fails with "no such key" beside the real problem: a CRD
    bug, and a confusing message for the user."""
    failed = [(bad.case, str(p)) for bad in BAD_SPECS for p in admission.validate(bad.body()) if "evaluating rule" in p.detail]
    assert failed == []


@pytest.mark.parametrize("body", [VALID_STAGE, VALID_PIPELINE], ids=["stage", "pipeline"])
def test_the_valid_bases_pass(body):
    assert admission.validate(body) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes(example):
    docs = [d for f in sorted(example.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d and d.get("kind") in admission.kinds()]
    assert any(d["kind"] == "TrainingStage" for d in docs)
    for doc in docs:
        assert admission.validate(doc) == [], doc["metadata"]["name"]


def stage_with(**spec: Any) -> dict[str, Any]:
    return merge(copy.deepcopy(VALID_STAGE), {"spec": spec})


def test_rules_read_the_schema_defaults():
    """`batchSize % numGenerations` with numGenerations left at its default: rules see the defaulted object."""
    group = GRPOParams().num_generations
    assert group > 2
    assert admission.validate(stage_with(type="grpo", sft=DELETE, grpo={"batchSize": group * 2})) == []
    problems = admission.validate(stage_with(type="grpo", sft=DELETE, grpo={"batchSize": group + 1}))
    assert [str(p) for p in problems] == [
        'spec.grpo.batchSize: Invalid value: "object": batchSize (completions per step) must be a multiple of numGenerations'
    ]


def test_a_null_is_dropped_or_defaulted_as_the_api_server_does():
    """`sft: null` is no sft block (so the type's rule fires); `learningRate: null` takes the default."""
    assert [p.field for p in admission.validate(stage_with(sft=None))] == ["spec.sft"]
    assert admission.validate(stage_with(sft={"learningRate": None, "batchSize": 32, "microBatchSize": 2})) == []


def test_unknown_fields_fail_alone_and_suggest_the_declared_name():
    """Strict decoding fails the request before validation: the other problem is not reported yet."""
    body = stage_with(type="ppo", sft={"learningrate": 1e-5})
    body["metadata"]["labels"] = {"team": "a"}
    body["metadata"]["lables"] = {"team": "a"}
    problems = admission.validate(body)
    assert [str(p) for p in problems] == [
        'metadata.lables: unknown field; did you mean "labels"?',
        'spec.sft.learningrate: unknown field; did you mean "learningRate"?',
    ]
    assert {p.type for p in problems} == {admission.UNKNOWN_FIELD}


def test_a_blocking_error_stops_the_rules_and_says_so():
    """A wrong type or unsupported value means no CEL rule runs (the API server's hasBlockingErr)."""
    body = stage_with(type="ppo", sft={"batchSize": 30, "microBatchSize": 4})
    problems = admission.validate(body)
    assert [p.field for p in problems] == ["spec.type", "<nil>"]
    assert admission.RULES_NOT_CHECKED in problems[-1].detail
    assert "microBatchSize" not in str(problems)
    typed = admission.validate(stage_with(retryLimit="three"))
    assert str(typed[0]) == 'spec.retryLimit: Invalid value: "string": spec.retryLimit in body must be of type integer: "string"'


def test_a_rule_error_is_reported_as_the_api_server_reports_it():
    """A rule that fails to evaluate is reported with cel-go's words, on the node the rule sits on. (A minimum is
    not a blocking error, so the rule still runs.)"""
    problems = admission.validate(stage_with(sft={"batchSize": 32, "microBatchSize": 0}))
    assert [str(p) for p in problems] == [
        "spec.sft.microBatchSize: Invalid value: 0: spec.sft.microBatchSize in body should be greater than or equal to 1",
        'spec.sft: Invalid value: "object": modulus by zero evaluating rule: batchSize must be a multiple of microBatchSize',
    ]


def test_metadata_name_is_checked_as_the_api_server_checks_it():
    no_name = copy.deepcopy(VALID_STAGE)
    del no_name["metadata"]["name"]
    assert [str(p) for p in admission.validate(no_name)][0] == "metadata.name: Required value: name or generateName is required"
    upper = merge(copy.deepcopy(VALID_STAGE), {"metadata": {"name": "SFT"}})
    assert [p.field for p in admission.validate(upper)] == ["metadata.name", "metadata.name"]  # subdomain, then pattern
    assert "RFC 1123 subdomain" in str(admission.validate(upper)[0])


def test_list_types_report_the_second_occurrence():
    body = stage_with(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": "A", "value": "3"}])
    assert [str(p) for p in admission.validate(body)] == ['spec.env[1]: Duplicate value: {"name":"A"}']


def test_the_body_is_not_changed():
    body = copy.deepcopy(VALID_STAGE)
    admission.validate(body)
    assert body == VALID_STAGE


def test_wrong_api_version():
    body = merge(copy.deepcopy(VALID_PIPELINE), {"apiVersion": "gradatim.io/v1"})
    assert [str(p) for p in admission.validate(body)] == ['apiVersion: Invalid value: "gradatim.io/v1": must be gradatim.io/v1alpha1']


@pytest.mark.parametrize("value, go", [
    (1.0, "1"), (0.5, "0.5"), (1e-5, "1e-05"), (-1e-05, "-1e-05"), (0.0001, "0.0001"), (123456.0, "123456"),
    (1234567.0, "1.234567e+06"), (1e6, "1e+06"), (2.5e-7, "2.5e-07"), (1e21, "1e+21"),
])
def test_floats_print_as_go_prints_them(value, go):
    """Bad values and bounds in messages are Go's %v (checked against `fmt.Printf("%v")`)."""
    assert admission._go_float(value) == go


# --- gradatim run's recipe loading -----------------------------------------------------------------------------------

MIDTRAIN = {
    "apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": "midtrain"},
    "spec": {"pipeline": "recipe", "type": "midtrain", "midtrain": {},
             "inputs": {"model": {"hf": "org/model"}, "data": [{"uri": "s3://bucket/corpus/"}]}},
}


def write_recipe(directory: Path, *stages: dict[str, Any], pipeline: dict[str, Any] = VALID_PIPELINE) -> Path:
    directory.mkdir()
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    (directory / "stages.yaml").write_text(yaml.safe_dump_all(stages))
    return directory


def test_a_valid_recipe_loads(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r", MIDTRAIN, VALID_STAGE))
    assert recipe.name == "recipe" and set(recipe.stages) == {"midtrain", "sft"}


@pytest.mark.parametrize("case", [
    "packing on dpo", "grpo epsilonHigh below epsilon", "all reward weights zero", "pass-rate band inverted",
    "pairs need two samples", "two kinds of activation checkpointing", "hf token in plain text",
])
def test_rules_the_hand_written_checks_missed_now_refuse_the_recipe(tmp_path, case):
    bad = next(b for b in BAD_SPECS if b.case == case)
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "r", MIDTRAIN, bad.body()))
    assert any(p.startswith(f"stages.yaml: TrainingStage sft: {bad.field}: ") and bad.allowed in p for p in err.value.problems), err.value.problems


def test_every_refused_object_is_reported_with_its_file_and_name(tmp_path):
    pipeline = merge(copy.deepcopy(VALID_PIPELINE), {"spec": {"storage": {"bucket": "My_Bucket"}}})
    stage = stage_with(sft={"batchSize": 30, "microBatchSize": 4})
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "r", MIDTRAIN, stage, pipeline=pipeline))
    assert err.value.problems[0].startswith("pipeline.yaml: TrainingPipeline recipe: spec.storage.bucket: Invalid value: \"My_Bucket\"")
    assert 'stages.yaml: TrainingStage sft: spec.sft.batchSize: Invalid value: "object": batchSize must be a multiple of microBatchSize' in err.value.problems


def test_local_checks_beyond_the_crd_remain(tmp_path):
    """A local run has the whole recipe: dependencies must be in the directory, without a cycle, names unique."""
    lonely = stage_with(dependsOn=["nowhere"], inputs={"model": {"fromStage": "nowhere"}})
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "missing", lonely))
    assert err.value.problems == [f"stages.yaml: TrainingStage sft: spec.dependsOn: no TrainingStage nowhere in {tmp_path / 'missing'}"]

    looped = merge(copy.deepcopy(MIDTRAIN), {"spec": {"dependsOn": ["sft"]}})
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "cycle", looped, VALID_STAGE))
    assert any("dependency cycle" in p for p in err.value.problems), err.value.problems

    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "twice", MIDTRAIN, VALID_STAGE, VALID_STAGE))
    assert any("a second TrainingStage named sft" in p for p in err.value.problems), err.value.problems
