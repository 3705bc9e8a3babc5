"""Generate the CustomResourceDefinitions in `crds/` from the pydantic types (`make crds`).

Pydantic writes JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3 schema. The conversion inlines
`$ref`s, drops `null` branches and titles, turns `int | str` quantities into `x-kubernetes-int-or-string`, and
keeps descriptions, defaults, bounds, patterns and the CEL rules attached to the models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from gradatim.api.base import DNS1035, GROUP, MAX_STAGE_NAME, VERSION
from gradatim.api.pipeline import TrainingPipeline
from gradatim.api.stage import TrainingStage

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"

_DROP = {"title", "examples", "discriminator", "$defs"}


class _FactoryDefaults(GenerateJsonSchema):
    """Also write defaults that come from a `default_factory`, so CEL rules can rely on the field being there.
    Objects are written whole: the API server checks a default against the rules without filling it in."""

    def default_schema(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()
            schema = {k: v for k, v in schema.items() if k != "default_factory"}
            schema["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(value, BaseModel) else value
        return super().default_schema(schema)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = _resolve(target, defs)
        own = {k: _resolve(v, defs) for k, v in node.items()}
        if own.get("description") and merged.get("description") and own["description"] != merged["description"]:
            own["description"] = f"{own['description']} {merged['description']}"  # the field's role, then its type's docstring
        merged.update(own)
        return merged
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node.pop("allOf")[0], defs)
        inner.update({k: _resolve(v, defs) for k, v in node.items()})
        return inner
    return {k: _resolve(v, defs) for k, v in node.items()}


def _merge_rules(outer: dict[str, Any], inner: dict[str, Any]) -> None:
    rules = outer.get("x-kubernetes-validations", []) + inner.get("x-kubernetes-validations", [])
    if rules:
        outer["x-kubernetes-validations"] = rules


def _structural(node: Any) -> Any:
    """Rewrite one resolved JSON Schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        types = sorted(b.get("type", "") for b in branches)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            pattern = next((b["pattern"] for b in branches if "pattern" in b), None)
            if pattern:
                node.setdefault("pattern", pattern)
        elif len(branches) == 1:
            inner = dict(branches[0])
            if node.get("description") and inner.get("description") and node["description"] != inner["description"]:
                node["description"] = f"{node['description']} {inner['description']}"
            _merge_rules(inner, node)
            node.pop("x-kubernetes-validations", None)
            inner.update({k: v for k, v in node.items() if k != "x-kubernetes-validations"})
            node = inner
        else:
            raise ValueError(f"cannot express anyOf {branches} structurally")
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
        node.pop("anyOf", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        node.pop("default")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[bound.replace("exclusive", "").lower()] = node.pop(bound)
            node[bound] = True
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if node.pop("uniqueItems", False):
        node["x-kubernetes-list-type"] = "set"
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"])
    for key in list(node):
        if key in _DROP:
            node.pop(key)
        elif key == "properties":
            node[key] = {name: _structural(sub) for name, sub in node[key].items()}
        elif key in ("additionalProperties",) and isinstance(node[key], dict):
            node[key] = _structural(node[key])
    if "properties" in node:
        node.setdefault("type", "object")
    return node


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    resolved = _resolve(raw, raw.get("$defs", {}))
    return _structural(resolved)


def _root_schema(model: type, name_max: int) -> dict[str, Any]:
    schema = openapi_schema(model)
    props = schema["properties"]
    for key in ("apiVersion", "kind"):
        props[key] = {"type": "string", "description": props[key].get("description", f"{key} of the object.")}
    props["apiVersion"]["description"] = "APIVersion defines the versioned schema of this representation of an object."
    props["kind"]["description"] = "Kind is a string value representing the REST resource this object represents."
    props["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": name_max, "pattern": DNS1035}},
    }
    schema["required"] = ["spec"]
    return schema


def _crd(model: type, *, plural: str, short: list[str], columns: list[dict[str, Any]], name_max: int) -> dict[str, Any]:
    kind = model.__name__
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "annotations": {"gradatim.io/generated-by": "python -m gradatim.api.crd (do not edit by hand)"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["gradatim"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": _root_schema(model, name_max)},
                }
            ],
        },
    }


def _condition_column(name: str, ctype: str, priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": "string", "jsonPath": f'.status.conditions[?(@.type=="{ctype}")].status', "priority": priority}


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def render_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object, for every kind Gradatim serves."""
    stage = _crd(
        TrainingStage,
        plural="trainingstages",
        short=["tstage", "tstages"],
        name_max=MAX_STAGE_NAME,
        columns=[
            {"name": "Pipeline", "type": "string", "jsonPath": ".spec.pipeline"},
            {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.text"},
            {"name": "ETA(s)", "type": "integer", "jsonPath": ".status.progress.etaSeconds"},
            {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
            {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
            {"name": "Backend", "type": "string", "jsonPath": ".status.backend", "priority": 1},
            _condition_column("Ready", "Ready", 1),
            _age(),
        ],
    )
    pipeline = _crd(
        TrainingPipeline,
        plural="trainingpipelines",
        short=["tpipe", "tpipes"],
        name_max=63,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
            {"name": "Running", "type": "string", "jsonPath": ".status.currentStage"},
            _condition_column("Ready", "Ready", 1),
            _age(),
        ],
    )
    return {
        f"{GROUP}_trainingpipelines.yaml": pipeline,
        f"{GROUP}_trainingstages.yaml": stage,
    }


def dump(obj: dict[str, Any]) -> str:
    return "# Generated from gradatim/api by `make crds`; do not edit.\n" + yaml.safe_dump(obj, sort_keys=False, width=120)


def generated_files() -> dict[str, str]:
    """Everything in `crds/`: the CRDs and a kustomization listing them, so `kubectl apply -k crds/` works."""
    crds = render_crds()
    files = {name: dump(obj) for name, obj in crds.items()}
    files["kustomization.yaml"] = dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": sorted(crds)})
    return files


def write_crds(directory: Path = CRD_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


CHART_CRD_DIR = CRD_DIR.parent / "charts" / "gradatim" / "crds"


def write_chart_crds(directory: Path = CHART_CRD_DIR) -> list[Path]:
    """The Helm chart's copy of the CRDs (Helm installs a chart's crds/ as they are, before its templates)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, obj in render_crds().items():
        (directory / name).write_text(dump(obj))
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for p in write_crds(Path(sys.argv[1]) if len(sys.argv) > 1 else CRD_DIR):
        print(f"Wrote {p}")
