"""`decontaminate`: remove training examples that overlap an eval set, by word n-grams of normalised text, and
write what was removed and why."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_all, load_records, write_jsonl

WORD = re.compile(r"[a-z0-9]+|[+\-*/=^<>]")
SAME_OPERATOR = {"\\times": "*", "\\cdot": "*", "×": "*", "÷": "/", "\\div": "/"}


def normalise(text: str) -> list[str]:
    """Lower-case words, numbers and arithmetic operators; spacing, other punctuation and the spelling of an
    operator (`\\times`, `×`, `*`) do not matter, but `18 + 6` and `18 - 6` stay different."""
    text = text.lower()
    for spelling, op in SAME_OPERATOR.items():
        text = text.replace(spelling, f" {op} ")
    return WORD.findall(text)


def ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n is one gram of its own."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def text_of(record: dict[str, Any], fields: Iterable[str]) -> str:
    return " ".join(str(record[f]) for f in fields if f in record and record[f] is not None)


class EvalIndex:
    def __init__(self, sets: Sequence[tuple[str, list[dict[str, Any]]]], n: int) -> None:
        self.n = n
        self.grams: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
        self.sizes: dict[tuple[str, int], int] = {}
        self.short_lengths: set[int] = set()  # eval items shorter than n: found whole, anywhere in an example
        for name, records in sets:
            for i, record in enumerate(records):
                words = normalise(text_of(record, ("prompt", "question", "problem")))
                grams = ngrams(words, n)
                self.sizes[(name, i)] = len(grams)
                if 0 < len(words) < n:
                    self.short_lengths.add(len(words))
                for g in grams:
                    self.grams[g].append((name, i))

    def worst_overlap(self, text: str) -> tuple[float, tuple[str, int] | None, tuple[str, ...] | None]:
        """The largest share of an eval item's n-grams (or of the example's own, if shorter) found in `text`."""
        words = normalise(text)
        own = ngrams(words, self.n)
        candidates = set(own)
        for length in self.short_lengths:
            candidates |= {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}
        shared: dict[tuple[str, int], list[tuple[str, ...]]] = defaultdict(list)
        for g in candidates:
            for item in self.grams.get(g, ()):
                shared[item].append(g)
        best: tuple[float, tuple[str, int] | None, tuple[str, ...] | None] = (0.0, None, None)
        for item, grams in shared.items():
            fraction = len(grams) / max(1, min(self.sizes[item], len(own)))
            if fraction > best[0]:
                best = (fraction, item, grams[0])
        return best


def decontaminate(train: Iterable[dict[str, Any]], evals: Sequence[tuple[str, list[dict[str, Any]]]], n: int, threshold: float,
                  fields: Sequence[str]) -> tuple[list[int], list[dict[str, Any]]]:
    """(indices of the records kept, removed); each removed record says which eval item it overlapped, how much,
    and one shared n-gram. Only indices are kept, so a training set of millions streams through."""
    index = EvalIndex(evals, n)
    kept, removed = [], []
    for i, record in enumerate(train):
        fraction, item, gram = index.worst_overlap(text_of(record, fields))
        if item is not None and fraction >= threshold:
            removed.append({"record": record, "evalSet": item[0], "evalIndex": item[1], "overlap": fraction, "sharedNgram": " ".join(gram or ())})
        else:
            kept.append(i)
    return kept, removed


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    outputs: dict[str, str] = {}
    metrics: dict[str, float] = {}
    train = load_all(spec.inputs.data, store, rt, spec.seed)
    evals = [(s.label, load_records(s, store, rt, spec.seed)) for s in spec.inputs.eval_data]
    if rt.is_rank0:  # one pass over the text; nothing to share across processes
        kept, removed = decontaminate(train, evals, params.ngram_size, params.threshold, params.fields)
        reporter.progress(len(train), len(train))
        (rt.workdir / "data").mkdir(parents=True, exist_ok=True)
        train.select(kept).to_json(str(rt.workdir / "data" / "part-00000.jsonl"), lines=True, force_ascii=False)
        write_jsonl(removed, rt.workdir / "removed" / "part-00000.jsonl")
        for name in ("data", "removed"):
            outputs[name] = spec.output.uri + name + "/"
            upload_dir(store, rt.workdir / name, outputs[name])
        metrics = {"kept": float(len(kept)), "removed": float(len(removed)), "removed_fraction": len(removed) / max(1, len(train))}
    rt.barrier()
    return reporter.results(metrics, outputs)
