"""The pydantic types and the CRDs generated from them, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.api.crd import CRD_DIR, generated_files, render_crds
from gradatim.api.hyperparams import PHI4_REASONING_SYSTEM_MESSAGE

REPO = Path(__file__).resolve().parents[1]


def test_generated_crds_are_fresh():
    """`crds/` is generated from gradatim/api; edit the types and run `make crds`, never the YAML."""
    rendered = generated_files()
    on_disk = {p.name for p in CRD_DIR.iterdir()}
    assert on_disk == set(rendered), "crds/ holds files the generator does not write; run `make crds`"
    for name, text in rendered.items():
        assert (CRD_DIR / name).read_text() == text, f"crds/{name} is stale; run `make crds`"


def test_the_generated_cluster_training_runtime_is_fresh():
    """manifests/trainer/ holds Gradatim's ClusterTrainingRuntime, rendered beside the TrainJobs that use it."""
    from gradatim.planner.render import RUNTIME_MANIFEST_DIR, runtime_manifests

    folder = CRD_DIR.parent / RUNTIME_MANIFEST_DIR
    for name, text in runtime_manifests().items():
        assert (folder / name).read_text() == text, f"{RUNTIME_MANIFEST_DIR}/{name} is stale; run `make crds`"


def _walk(schema, path="spec", is_field=True):
    """Every node of a schema, and whether it is a named field (which must carry a description)."""
    yield path, schema, is_field
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]", False)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}", False)


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_every_field_is_described_and_structural(name):
    crd = render_crds()[name]
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, node, is_field in _walk(root["properties"][part], part):
            assert node.get("description") or not is_field, f"{path} has no description"
            assert "anyOf" not in node and "$ref" not in node and "title" not in node, path
            assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"


def test_cel_rules_cover_cross_field_constraints():
    stage = render_crds()["gradatim.io_trainingstages.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_rules = [r["rule"] for r in stage["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("has(self.grpo)" in r for r in spec_rules)
    assert any("qualityGate.metric" in r for r in spec_rules)
    assert any("self.metadata.name in self.spec.dependsOn" in r["rule"] for r in stage["x-kubernetes-validations"])
    dpo = stage["properties"]["spec"]["properties"]["dpo"]
    assert any("packing" in r["rule"] for r in dpo["x-kubernetes-validations"])


def _docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in ("TrainingStage", "TrainingPipeline")]


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_examples_parse_as_api_types(path):
    for doc in _docs(path):
        {"TrainingStage": TrainingStage, "TrainingPipeline": TrainingPipeline}[doc["kind"]].model_validate(doc)


def test_defaults_follow_the_reports():
    stage = TrainingStage.model_validate(
        {"metadata": {"name": "rl"}, "spec": {"pipeline": "p", "type": "grpo", "grpo": {}, "inputs": {"model": {"hf": "a/b"}, "data": [{"uri": "/d"}]}}}
    )
    grpo = stage.params()
    assert (grpo.num_generations, grpo.beta, grpo.learning_rate, grpo.batch_size) == (8, 0.001, 5e-8, 512)
    assert abs(grpo.rewards.correctness - 8 / 13) < 1e-12 and abs(grpo.rewards.repetition - 1 / 13) < 1e-12
    assert grpo.rewards.length_aware.positive_control_length == 25600
    sft = TrainingStage.model_validate(
        {"metadata": {"name": "s"}, "spec": {"pipeline": "p", "type": "sft", "sft": {}, "inputs": {"model": {"hf": "a/b"}, "data": [{"uri": "/d"}]}}}
    ).params()
    assert sft.packing is False and sft.system_message == PHI4_REASONING_SYSTEM_MESSAGE
    assert TrainingStage.model_validate(
        {"metadata": {"name": "m"}, "spec": {"pipeline": "p", "type": "midtrain", "midtrain": {}, "inputs": {"model": {"hf": "a/b"}, "data": [{"uri": "/d"}]}}}
    ).params().packing is True
