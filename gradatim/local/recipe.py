"""A recipe directory as `gradatim run` reads it: every `*.yaml` in it (the kustomization only for its
`namespace:`), one TrainingPipeline and the TrainingStages that name it, parsed with the API types.

Without an API server, each object goes through `gradatim.api.admission` first: the CRD's own schema and CEL rules,
with the API server's messages. What is checked here besides is what only a local run needs (one pipeline, stage
names unique, dependencies in the directory, no cycle); every problem names the file, the object and the field.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gradatim.api import TrainingPipeline, TrainingStage, admission
from gradatim.api.base import DNS1123_LABEL
from gradatim.planner.graph import find_cycle

KINDS = {"TrainingPipeline": TrainingPipeline, "TrainingStage": TrainingStage}
KUSTOMIZATION = "kustomization.yaml"
GENERATION = 1  # the objects are "applied" once per run; the planner compares status.observedGeneration with it


class RecipeError(ValueError):
    """The recipe cannot run; `problems` each name the file, the object and the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Recipe:
    directory: Path
    namespace: str
    pipeline: TrainingPipeline
    stages: dict[str, TrainingStage]
    ignored: tuple[str, ...] = ()
    """Documents of other kinds, as `file: Kind name`: a local run reads only pipelines and stages."""

    @property
    def name(self) -> str:
        return self.pipeline.metadata["name"]


def load_recipe(directory: Path) -> Recipe:
    """Parses and validates the recipe in `directory`; raises RecipeError with every problem found."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError([f"{directory}: not a directory"])
    problems: list[str] = []
    found = _read_objects(directory, problems)
    if len(found.pipelines) != 1:
        names = ", ".join(w for w, _ in found.pipelines) or "none"
        raise RecipeError(problems + [f"{directory}: a local run takes exactly one TrainingPipeline per directory (found: {names})"])
    pipeline = found.pipelines[0][1]
    namespace = _namespace(directory, pipeline, problems)
    by_name = _check_stages(directory, pipeline, found, problems)
    if problems:
        raise RecipeError(problems)
    for kind, obj in [("TrainingPipeline", pipeline), *(("TrainingStage", st) for st in by_name.values())]:
        # What the API server would add on create; the planner reads uid (owner references) and generation.
        obj.metadata.update(namespace=namespace, generation=GENERATION, uid=_uid(namespace, kind, obj.metadata["name"]))
        obj.metadata.setdefault("annotations", {})
    return Recipe(directory, namespace, pipeline, by_name, tuple(found.ignored))


@dataclass
class _Found:
    """The directory's objects, each with where it was found (`file: Kind name`)."""

    pipelines: list[tuple[str, TrainingPipeline]] = field(default_factory=list)
    stages: list[tuple[str, TrainingStage]] = field(default_factory=list)
    unparsed: set[str] = field(default_factory=set)  # names of stages already reported as invalid
    ignored: list[str] = field(default_factory=list)


def _read_objects(directory: Path, problems: list[str]) -> _Found:
    found = _Found()
    files = sorted(p for p in directory.glob("*.yaml") if p.name != KUSTOMIZATION)
    if not files:
        raise RecipeError([f"{directory}: no *.yaml files"])
    for path in files:
        for index, doc in _documents(path, problems):
            kind, metadata = doc.get("kind"), doc.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            where = f"{path.name}: {kind or 'document ' + str(index + 1)} {name or '(no metadata.name)'}"
            if kind not in KINDS:
                if kind is None:
                    problems.append(f"{path.name}: document {index + 1}: kind: required")
                else:
                    found.ignored.append(f"{path.name}: {kind} {name or ''}".rstrip())
                continue
            refused = admission.validate(doc)  # what the API server would refuse, in its words
            problems.extend(f"{where}: {p}" for p in refused)
            obj = None if refused else _parse(KINDS[kind], doc, where, problems)
            if obj is None:
                found.unparsed.add(str(name))
            elif kind == "TrainingPipeline":
                found.pipelines.append((where, obj))
            else:
                found.stages.append((where, obj))
    return found


def _check_stages(directory: Path, pipeline: TrainingPipeline, found: _Found, problems: list[str]) -> dict[str, TrainingStage]:
    """The stages by name, after the checks a local run needs beyond the CRD's: the whole recipe is here, so a
    stage must name this pipeline and depend only on stages in the directory, without a cycle."""
    pipeline_name = pipeline.metadata["name"]
    by_name: dict[str, TrainingStage] = {}
    where_of: dict[str, str] = {}
    for where, stage in found.stages:
        name = stage.metadata["name"]
        if name in by_name:
            problems.append(f"{where}: metadata.name: a second TrainingStage named {name}")
            continue
        by_name[name], where_of[name] = stage, where
        if stage.spec.pipeline != pipeline_name:
            problems.append(f"{where}: spec.pipeline: no TrainingPipeline {stage.spec.pipeline!r} in {directory} (it holds {pipeline_name!r})")
    for name, stage in by_name.items():  # on a cluster a missing stage may come later; here it never will
        missing = [d for d in stage.spec.depends_on if d not in by_name and d not in found.unparsed]
        if missing:
            problems.append(f"{where_of[name]}: spec.dependsOn: no TrainingStage {', '.join(missing)} in {directory}")
    if cycle := find_cycle(by_name):
        problems.append(f"{where_of[cycle[0]]}: spec.dependsOn: dependency cycle {' -> '.join(cycle)}")
    if not by_name and not problems:  # (with problems, the stages may be among what failed to parse)
        problems.append(f"{directory}: no TrainingStage names pipeline {pipeline_name!r}")
    return by_name


def _namespace(directory: Path, pipeline: TrainingPipeline, problems: list[str]) -> str:
    """The kustomization's `namespace:` (which, as in kustomize, overrides the objects'), else the pipeline's
    `metadata.namespace`, else `default`."""
    namespace = pipeline.metadata.get("namespace") or "default"
    path = directory / KUSTOMIZATION
    if path.exists():
        try:
            kustomization = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            problems.append(f"{path.name}: not valid YAML: {err}")
            return namespace
        if isinstance(kustomization, dict) and "namespace" in kustomization:
            namespace = kustomization["namespace"]
    if not isinstance(namespace, str) or not re.match(DNS1123_LABEL, namespace) or len(namespace) > 63:
        where = path.name if path.exists() else f"TrainingPipeline {pipeline.metadata['name']} metadata."
        problems.append(f"{where}: namespace: {namespace!r} is not a valid namespace name (lower-case letters, digits and '-')")
    return namespace


def _documents(path: Path, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as err:
        problems.append(f"{path.name}: not valid YAML: {err}")
        return []
    out = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{path.name}: document {index + 1}: expected an object with apiVersion, kind, metadata and spec")
            continue
        out.append((index, doc))
    return out


def _parse(model: type, doc: dict[str, Any], where: str, problems: list[str]) -> Any:
    """The API types of an object admission accepted. (They should accept whatever the CRD does; an error here
    means the two disagree, and is reported in pydantic's words.)"""
    body = {k: v for k, v in doc.items() if k != "status"}  # status is the runner's to write
    try:
        return model.model_validate(body)
    except ValidationError as err:
        for e in err.errors():
            got = f" (got {e['input']!r})" if e["type"] not in ("missing", "extra_forbidden") and not isinstance(e.get("input"), (dict, list)) else ""
            problems.append(f"{where}: {field_path(e['loc'])}: {e['msg']}{got}")
        return None


def field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a field path: `spec.inputs.data[0].uri`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-union")):  # validator names, not fields
            out += f".{part}" if out else str(part)
    return out or "(object)"


def _uid(namespace: str, kind: str, name: str) -> str:
    """Stable per object, as an API server's uid is stable for the object's life; it lands in ownerReferences."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gradatim-local:{namespace}/{kind}/{name}"))
