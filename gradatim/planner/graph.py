"""The stage graph of one pipeline: dependency order, cycles, downstream sets and content keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from gradatim.api.stage import TrainingStage

KEY_LENGTH = 16


def stages_by_name(stages: Iterable[TrainingStage]) -> dict[str, TrainingStage]:
    return {s.metadata["name"]: s for s in stages}


def find_cycle(stages: Mapping[str, TrainingStage]) -> list[str] | None:
    """A dependency cycle among the stages, as the list of names around it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in stages[name].spec.depends_on:
            if dep not in stages:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(stages):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def on_cycle(name: str, stages: Mapping[str, TrainingStage]) -> list[str] | None:
    """The cycle through `name`, if it lies on one. Linear: a breadth-first walk up the dependencies that keeps,
    for each stage reached, the stage it was reached from."""
    if name not in stages:
        return None
    reached_from: dict[str, str] = {}
    frontier = [name]
    while frontier:
        following = []
        for current in frontier:
            for dep in stages[current].spec.depends_on:
                if dep == name:
                    path = [current]
                    while path[-1] != name:
                        path.append(reached_from[path[-1]])
                    return [name, *reversed(path[:-1]), name]
                if dep in stages and dep not in reached_from:
                    reached_from[dep] = current
                    following.append(dep)
        frontier = following
    return None


def topological_order(stages: Mapping[str, TrainingStage]) -> list[str]:
    """Stage names with every dependency before its dependents (ties by name, in rounds); stages on cycles come
    last. Linear in stages and edges: a pipeline may hold a thousand stages, and this runs on every reconcile."""
    dependents: dict[str, list[str]] = {n: [] for n in stages}
    blocking = {}
    for name, stage in stages.items():
        deps = {d for d in stage.spec.depends_on if d in stages}
        blocking[name] = len(deps)
        for dep in deps:
            dependents[dep].append(name)
    ready = sorted(n for n, count in blocking.items() if count == 0)
    order: list[str] = []
    while ready:
        order.extend(ready)
        released = []
        for name in ready:
            for other in dependents[name]:
                blocking[other] -= 1
                if blocking[other] == 0:
                    released.append(other)
        ready = sorted(released)
    placed = set(order)
    return order + sorted(n for n in stages if n not in placed)


def downstream(name: str, stages: Mapping[str, TrainingStage]) -> set[str]:
    """Every stage that depends on `name`, directly or not."""
    out: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for other, stage in stages.items():
            if current in stage.spec.depends_on and other not in out:
                out.add(other)
                frontier.append(other)
    return out


def _key_material(stage: TrainingStage, dep_keys: Mapping[str, str], image: str) -> dict[str, Any]:
    """What a stage's output depends on: its type, hyperparameters, inputs (upstream stages by their keys),
    seed and trainer image. Not resources, retries, gates, suspend or scheduling: they change how or whether
    it runs, not what it produces."""
    spec = stage.spec
    inputs = spec.inputs.model_dump(mode="json", by_alias=True, exclude_none=True)
    for source in [inputs.get("model")] + inputs.get("data", []) + inputs.get("evalData", []):
        if source and "fromStage" in source:
            source["fromStage"] = dep_keys.get(source["fromStage"], "?")
    return {
        "type": spec.type,
        "params": stage.params().to_wire(),
        "inputs": inputs,
        "after": sorted(dep_keys.get(d, "?") for d in spec.depends_on),
        "seed": spec.seed,
        "image": spec.image or image,
    }


def cache_keys(stages: Mapping[str, TrainingStage], image: str, memo: dict[tuple, str] | None = None) -> dict[str, str]:
    """The content key of every stage not on a cycle: a hash of its spec with inputs resolved to the keys of
    the stages they come from, so editing a stage changes its key and every key downstream of it.

    `memo` (kept by a caller that asks again and again) maps (uid, generation, image, upstream keys) to a key
    already computed: a spec changes only with its generation, so only new or edited stages are hashed."""
    keys: dict[str, str] = {}
    for name in topological_order(stages):
        stage = stages[name]
        deps = stage.spec.depends_on
        if any(d in stages and d not in keys for d in deps):
            continue  # on or behind a cycle
        uid, generation = stage.metadata.get("uid"), stage.metadata.get("generation")
        known = (uid, generation, image, tuple(keys.get(d, "?") for d in deps)) if memo is not None and uid and generation else None
        if known is not None and known in memo:
            keys[name] = memo[known]
            continue
        material = _key_material(stage, keys, image)
        digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        keys[name] = digest[:KEY_LENGTH]
        if known is not None:
            memo[known] = keys[name]
    return keys
