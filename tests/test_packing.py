"""Packed sequences: best-fit packing, labels, and no token attending across a document boundary on SDPA."""

from __future__ import annotations

import datasets
import torch

from gradatim.trainer.packing import IGNORE, PackedCollator, documents_of, pack
from gradatim.trainer.tiny import build_model, build_tokenizer, tiny_math


def rows(*packs: list[list[int]]) -> list[dict[str, list[int]]]:
    return [{"input_ids": [t for doc in p for t in doc], "seq_lengths": [len(doc) for doc in p]} for p in packs]


def test_best_fit_packs_everything_within_the_limit():
    lengths = [7, 3, 9, 2, 5, 5, 1, 8]
    docs = [[100 * i + j for j in range(n)] for i, n in enumerate(lengths)]
    packed = pack(datasets.Dataset.from_dict({"input_ids": docs}), 10, packing=True).to_list()
    found = [list(d) for row in packed for d in documents_of(row)]
    assert sorted(found) == sorted(docs), "every document whole, in exactly one pack"
    assert all(len(row["input_ids"]) <= 10 for row in packed)
    assert len(packed) == 4  # 40 tokens in packs of 10: best fit reaches the minimum here


def test_long_documents_are_split_not_cut():
    doc = list(range(25))
    for packing in (True, False):
        packed = pack(datasets.Dataset.from_dict({"input_ids": [doc]}), 10, packing=packing).to_list()
        pieces = sorted((list(d) for row in packed for d in documents_of(row)), key=lambda d: d[0])
        assert pieces == [list(range(10)), list(range(10, 20)), list(range(20, 25))], packing
        assert all(len(row["input_ids"]) <= 10 for row in packed)
    unpacked = pack(datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]]}), 10, packing=False).to_list()
    assert [r["seq_lengths"] for r in unpacked] == [[2], [1]], "without packing: one document per row"


def test_labels_and_positions_restart_per_document():
    batch = PackedCollator(pad_token_id=0)(rows([[5, 6, 7], [8, 9]], [[4, 4]]))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 4, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9], [IGNORE, 4, IGNORE, IGNORE, IGNORE]]
    mask = batch["attention_mask"][0, 0]
    assert mask[4].tolist() == [False, False, False, True, True]  # the second document sees only itself
    assert mask[2].tolist() == [True, True, True, False, False]


def test_no_token_attends_across_a_document_boundary():
    tok = build_tokenizer()
    model = build_model(tok, seed=1).eval()
    problems = tiny_math("train", 3)
    a, b, c = (tok(p.prompt + " " + p.solution())["input_ids"] for p in problems)
    collate = PackedCollator(tok.pad_token_id)
    with torch.no_grad():
        first = model(**{k: v for k, v in collate(rows([a, b])).items() if k != "labels"}).logits[0, len(a):]
        second = model(**{k: v for k, v in collate(rows([c, b])).items() if k != "labels"}).logits[0, len(c):]
        alone = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(first, second, atol=1e-5), "b's logits changed when its neighbour changed"
    assert torch.allclose(first, alone, atol=1e-5), "b packed behaves as b alone"
    # Without the block mask (position_ids only, as for FlashAttention), SDPA would leak across documents:
    leaky = PackedCollator(tok.pad_token_id, block_mask=False)
    with torch.no_grad():
        leaked = model(**{k: v for k, v in leaky(rows([c, b])).items() if k != "labels"}).logits[0, len(c):]
    assert not torch.allclose(leaked, alone, atol=1e-3)
