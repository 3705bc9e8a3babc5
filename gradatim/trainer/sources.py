"""Loading the models and datasets a resolved stage spec names: Hugging Face ids, `s3://` artifacts, paths
inside the container, and the builtin tiny generators used by tests and the quickstart."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradatim.api.resolved import ResolvedSource
from gradatim.trainer import tiny
from gradatim.trainer.artifacts import download_dir

BUILTIN_SIZES = {"train": 2000, "eval": 200, "rl": 400}
# Where builtin models trained on first use are kept (an image would ship them prebuilt).
MODEL_CACHE = Path(os.environ.get("GRADATIM_MODEL_CACHE") or Path.home() / ".cache" / "gradatim" / "models")
log = logging.getLogger("gradatim.trainer")


class SourceError(ValueError):
    """A source that cannot be loaded, with what to change."""


class InputError(Exception):
    """Loading one input failed: `source` is the input, `__cause__` the error beneath. The trainer's error report
    turns it into a message naming the input's field (inputs.model, inputs.data[0], ...)."""

    def __init__(self, source: ResolvedSource) -> None:
        super().__init__(f"cannot load input {source.hf or source.uri or source.builtin}")
        self.source = source


@contextmanager
def loading(source: ResolvedSource) -> Iterator[None]:
    """Wraps whatever loading `source` raises in an InputError that remembers the source."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        raise InputError(source) from err


def local_copy(source: ResolvedSource, store: Any, workdir: Path) -> Path:
    """A local directory (or file) holding the source: S3 artifacts are downloaded and verified."""
    if source.uri is None:
        raise SourceError("has no hf, uri or builtin")
    if source.uri.startswith("s3://"):
        target = workdir / "inputs" / source.uri[5:].rstrip("/").replace("/", "_")
        return target if target.exists() else download_dir(store, source.uri, target)
    path = Path(source.uri)
    if not path.exists():
        raise SourceError(f"{source.uri} does not exist in the trainer container; mount it or use an s3:// URI")
    return path


def _read_table(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.rglob("*.jsonl")) + sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path} holds no .jsonl or .parquet files")
    records: list[dict[str, Any]] = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            records.extend(pq.read_table(f).to_pylist())
        else:
            records.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    return records


def builtin_records(name: str, seed: int) -> list[dict[str, Any]]:
    """`tiny-math:<split>` or `tiny-math:<split>:<n>`: procedural problems with a gold answer and a solution."""
    parts = name.split(":")
    if parts[0] != "tiny-math" or len(parts) not in (2, 3) or parts[1] not in tiny.SPLITS:
        raise SourceError(f"builtin dataset {name!r} is unknown; use tiny-math:<train|eval|rl>[:<count>]")
    n = int(parts[2]) if len(parts) == 3 else BUILTIN_SIZES[parts[1]]
    return [p.record() | {"solution": p.solution()} for p in tiny.tiny_math(parts[1], n, seed)]  # type: ignore[arg-type]


def load_records(source: ResolvedSource, store: Any, workdir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Every record of a dataset source, in order."""
    with loading(source):
        if source.builtin:
            return builtin_records(source.builtin, seed)
        if source.hf:
            import datasets

            repo, _, revision = source.hf.partition("@")
            return list(datasets.load_dataset(repo, revision=revision or None, split="train"))
        return _read_table(local_copy(source, store, workdir))


def load_all(sources: list[ResolvedSource], store: Any, workdir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """The records of several dataset sources, concatenated in order."""
    return [record for source in sources for record in load_records(source, store, workdir, seed)]


def load_model(source: ResolvedSource, store: Any, workdir: Path, seed: int = 0, dtype: Any = None, on_teacher_step: Any = None):
    """(model, tokenizer) for a model source; `on_teacher_step(step, steps, loss)` hears how training the builtin
    tiny-teacher goes, the first time a machine needs it."""
    with loading(source):
        return _load_model(source, store, workdir, seed, dtype, on_teacher_step)


def _load_model(source: ResolvedSource, store: Any, workdir: Path, seed: int, dtype: Any, on_teacher_step: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.builtin == "tiny-model":
        tokenizer = tiny.build_tokenizer()
        return tiny.build_model(tokenizer, seed=seed), tokenizer
    if source.builtin == "tiny-teacher":
        return tiny.cached_teacher(MODEL_CACHE, seed=seed, log=log.info, on_step=on_teacher_step)
    if source.builtin:
        raise SourceError(f"builtin model {source.builtin!r} is unknown; use tiny-model (freshly initialised) or tiny-teacher (trained on worked solutions)")
    if source.hf:
        repo, _, revision = source.hf.partition("@")
        where, kwargs = repo, {"revision": revision or None}
    else:
        where, kwargs = str(local_copy(source, store, workdir)), {}
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    return model, tokenizer


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path
