"""Loading the models and datasets a resolved stage spec names: Hugging Face ids, `s3://` artifacts, paths
inside the container, and the builtin tiny generators used by tests and the quickstart."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradatim.api.common import Fields
from gradatim.api.resolved import ResolvedSource
from gradatim.trainer import tiny
from gradatim.trainer.artifacts import MANIFEST, download_dir
from gradatim.trainer.runtime import Runtime

BUILTIN_SIZES = {"train": 2000, "eval": 500, "rl": 400}
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


def local_copy(source: ResolvedSource, store: Any, rt: Runtime) -> Path:
    """A local directory (or file) holding the source: S3 artifacts are downloaded once per node, by its local
    rank 0, into the scratch volume, and verified; the node's other ranks wait and read the same copy."""
    if source.uri is None:
        raise SourceError("has no hf, uri or builtin")
    if source.uri.startswith("s3://"):
        target = rt.workdir / "inputs" / source.uri[5:].rstrip("/").replace("/", "_")
        with rt.node_first():
            if not target.exists():
                download_dir(store, source.uri, target)
        return target
    path = Path(source.uri)
    if not path.exists():
        raise SourceError(f"{source.uri} does not exist in the trainer container; mount it or use an s3:// URI")
    return path


BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _data_files(path: Path) -> list[str]:
    """The data files of one of our own artifacts (or any folder without a split layout): every jsonl/parquet/csv
    file below it, the manifest left out."""
    return sorted(str(p) for p in path.rglob("*") if p.suffix in BUILDERS and p.name != MANIFEST and not p.name.startswith("."))


def _load_local(path: Path, source: ResolvedSource, cache_dir: Path) -> Any:
    """A file, a folder laid out as a Hub dataset repository (README configs, `data/test-*.parquet`, `test.jsonl`),
    or one of our own artifacts, read by `datasets` as the Hub id would be."""
    import datasets

    if path.is_file():
        if path.suffix not in BUILDERS:
            raise SourceError(f"{path.name} is not a .jsonl, .json, .parquet or .csv file")
        return datasets.load_dataset(BUILDERS[path.suffix], data_files={_split_name(source.split): str(path)}, split=source.split, cache_dir=str(cache_dir))
    files = _data_files(path)
    if not files:
        raise SourceError(f"{source.uri or path} holds no .jsonl, .parquet or .csv files")
    if (path / "README.md").exists() or source.config or _has_split_layout(files, path):
        return datasets.load_dataset(str(path), name=source.config, split=source.split, cache_dir=str(cache_dir))
    builder = BUILDERS[Path(files[0]).suffix]
    return datasets.load_dataset(builder, data_files={_split_name(source.split): files}, split=source.split, cache_dir=str(cache_dir))


def _split_name(split: str) -> str:
    return split.split("[", 1)[0]


SPLIT_FILE = re.compile(r"(^|[/_.-])(train|test|validation|valid|dev)([/_.-]|$)")


def _has_split_layout(files: list[str], root: Path) -> bool:
    """Whether file names say which split they hold, as on the Hub (`test.jsonl`, `data/train-00000-of-00001.parquet`)."""
    return any(SPLIT_FILE.search(str(Path(f).relative_to(root))) for f in files)


def load_dataset(source: ResolvedSource, store: Any, rt: Runtime, seed: int = 0) -> Any:
    """One dataset source as a `datasets.Dataset`: Arrow, memory-mapped from the node's scratch (never a Python list
    of the whole set), with its columns mapped to Gradatim's names (`fields`) and multiple choice rendered."""
    import datasets

    cache_dir = rt.workdir / "datasets"
    with loading(source):
        try:
            if source.builtin:
                ds = datasets.Dataset.from_list(builtin_records(source.builtin, seed))
            elif source.hf:
                repo, revision = source.hub
                with rt.node_first():  # one download per node; the others read the cache
                    ds = datasets.load_dataset(repo, name=source.config, split=source.split, revision=revision, cache_dir=str(cache_dir))
            else:
                where = local_copy(source, store, rt)
                with rt.node_first():
                    ds = _load_local(where, source, cache_dir)
        except ValueError as err:  # datasets' word for an unknown split or config
            if isinstance(err, SourceError):
                raise
            raise SourceError(f"{err}; check split and config against the dataset's card") from err
        return conform(ds, source.fields, seed)


def load_records(source: ResolvedSource, store: Any, rt: Runtime, seed: int = 0) -> list[dict[str, Any]]:
    """Every record of a (small) dataset source, in order: eval sets, and prompts on one process's share."""
    return load_dataset(source, store, rt, seed).to_list()


def load_all(sources: list[ResolvedSource], store: Any, rt: Runtime, seed: int = 0, to_row: Any = None) -> Any:
    """Several dataset sources as one `datasets.Dataset`, in order. `to_row(record) -> dict` first brings each to
    the stage's schema (their own columns dropped), so sources with different columns concatenate."""
    import datasets

    parts = []
    for source in sources:
        ds = load_dataset(source, store, rt, seed)
        if to_row is not None:
            with loading(source), rt.node_first():  # an unusable record's error names this input; one rank per node maps
                ds = ds.map(to_row, remove_columns=ds.column_names, desc=f"reading {source.label}")
        parts.append(ds)
    return datasets.concatenate_datasets(parts) if len(parts) != 1 else parts[0]


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHOICE_INSTRUCTION = "Answer with the letter of the correct choice, as \\boxed{X}."


def conform(ds: Any, fields: Fields | None, seed: int) -> Any:
    """The dataset with Gradatim's column names (`prompt`, `answer`, `completion`, `id`); multiple choice rendered
    into a lettered prompt whose `answer` is the correct letter."""
    if fields is None:
        return ds
    renames = {getattr(fields, name): name for name in ("prompt", "answer", "completion", "id") if getattr(fields, name)}
    missing = sorted({c for c in [*renames, *(fields.choices or [])] if c not in ds.column_names})
    if missing:
        raise SourceError(f"fields name column(s) {', '.join(missing)}, but the dataset has {', '.join(ds.column_names)}; fix fields")
    if fields.choices:
        return ds.map(_multiple_choice(fields, seed), with_indices=True, remove_columns=ds.column_names, desc="rendering choices")
    renames = {old: new for old, new in renames.items() if old != new}
    ds = ds.remove_columns([c for c in renames.values() if c in ds.column_names and c not in renames])
    return ds.rename_columns(renames)


def _multiple_choice(fields: Fields, seed: int) -> Any:
    def render(record: dict[str, Any], index: int) -> dict[str, Any]:
        cols = fields.choices or []
        options = [str(o) for o in record[cols[0]]] if len(cols) == 1 else [str(record[c]) for c in cols]
        record_id = str(record[fields.id]) if fields.id else str(index)
        correct = correct_choice(record[fields.answer or "answer"], options, f"record {record_id}")
        order = list(range(len(options)))
        random.Random(f"{seed}:{record_id}").shuffle(order)  # GPQA lists the correct answer first: never show it there
        shown = [options[i] for i in order]
        lines = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(shown))
        question = str(record[fields.prompt or "prompt"])
        return {"id": record_id, "prompt": f"{question}\n\n{lines}\n\n{CHOICE_INSTRUCTION}", "answer": LETTERS[order.index(correct)],
                "choices": shown, "answer_text": options[correct]}
    return render


def correct_choice(value: Any, options: list[str], where: str) -> int:
    """Index of the correct option, given as its text, its 0-based index or its letter."""
    text = str(value).strip()
    if text in options:  # CSV readers may have typed a numeric answer: compare as text first
        return options.index(text)
    if isinstance(value, int) or text.isdigit():
        if 0 <= int(text) < len(options):
            return int(text)
    elif len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return LETTERS.index(text.upper())
    raise SourceError(f"{where}: the answer {text[:80]!r} is neither one of its {len(options)} choices, nor their index or letter; fix fields.answer")


def builtin_records(name: str, seed: int) -> list[dict[str, Any]]:
    """`tiny-math:<split>` or `tiny-math:<split>:<n>`: procedural problems with a gold answer and a solution."""
    parts = name.split(":")
    if parts[0] != "tiny-math" or len(parts) not in (2, 3) or parts[1] not in tiny.SPLITS:
        raise SourceError(f"builtin dataset {name!r} is unknown; use tiny-math:<train|eval|rl>[:<count>]")
    n = int(parts[2]) if len(parts) == 3 else BUILTIN_SIZES[parts[1]]
    return [p.record() | {"solution": p.solution()} for p in tiny.tiny_math(parts[1], n, seed)]  # type: ignore[arg-type]


def load_model(source: ResolvedSource, store: Any, rt: Runtime, seed: int = 0, dtype: Any = "auto", on_teacher_step: Any = None,
               adjust_config: Any = None):
    """(model, tokenizer) for a model source, in `dtype` ("auto": the dtype it was saved in);
    `adjust_config(config)` changes the model's config before the weights load (attention kernel, RoPE);
    `on_teacher_step(step, steps, loss)` hears how training the builtin tiny-teacher goes, the first time a
    machine needs it."""
    with loading(source):
        return _load_model(source, store, rt, seed, dtype, on_teacher_step, adjust_config)


def _load_model(source: ResolvedSource, store: Any, rt: Runtime, seed: int, dtype: Any, on_teacher_step: Any, adjust_config: Any):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if source.builtin == "tiny-model":
        tokenizer = tiny.build_tokenizer()
        return tiny.build_model(tokenizer, seed=seed, adjust_config=adjust_config), tokenizer
    if source.builtin == "tiny-teacher":
        if adjust_config is not None:
            raise SourceError("builtin model tiny-teacher is cached as built; leave out attention and configOverrides, or use tiny-model")
        # Rank 0 first: it reports the training's progress, and the others load what it cached (on its machine).
        with rt.rank0_first():
            return tiny.cached_teacher(MODEL_CACHE, seed=seed, log=log.info, on_step=on_teacher_step)
    if source.builtin:
        raise SourceError(f"builtin model {source.builtin!r} is unknown; use tiny-model (freshly initialised) or tiny-teacher (trained on worked solutions)")
    if source.hf:
        repo, revision = source.hub
        where, kwargs = repo, {"revision": revision, "cache_dir": str(rt.workdir / "hub")}
    else:
        where, kwargs = str(local_copy(source, store, rt)), {}
    with rt.node_first():  # one download per node into its scratch; HF_TOKEN (from a Secret) for gated ones
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if adjust_config is not None:
            kwargs["config"] = AutoConfig.from_pretrained(where, **kwargs)
            adjust_config(kwargs["config"])
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    return model, tokenizer


def model_dir(source: ResolvedSource, store: Any, rt: Runtime, seed: int = 0, on_teacher_step: Any = None) -> Path:
    """A local directory holding the model's weights and tokenizer, for engines that load from a path (vLLM):
    downloaded once per node into its scratch; a builtin model is built and saved there."""
    with loading(source):
        if source.builtin:
            target = rt.workdir / "models" / f"{source.builtin}-{seed}"
            with rt.node_first():
                if not (target / "config.json").exists():
                    model, tokenizer = _load_model(source, store, rt, seed, "auto", on_teacher_step, None)
                    tiny.save_local(model, tokenizer, target)  # this node's first process, whatever its rank
            return target
        if source.hf:
            from huggingface_hub import snapshot_download

            repo, revision = source.hub
            with rt.node_first():
                return Path(snapshot_download(repo, revision=revision, cache_dir=str(rt.workdir / "hub")))
        return local_copy(source, store, rt)


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path
