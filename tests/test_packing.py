"""Packed sequences: best-fit packing, labels, and no token attending across a document boundary on SDPA."""

from __future__ import annotations

import torch

from gradatim.trainer.packing import IGNORE, PackedCollator, pack_best_fit, split_long
from gradatim.trainer.tiny import build_model, build_tokenizer, tiny_math


def test_best_fit_packs_everything_within_the_limit():
    lengths = [7, 3, 9, 2, 5, 5, 1, 8]
    packs = pack_best_fit(lengths, 10)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 10 for p in packs)
    assert len(packs) == 4  # 40 tokens in packs of 10: best fit reaches the minimum here
    assert split_long([list(range(25))], 10) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]


def test_labels_and_positions_restart_per_document():
    batch = PackedCollator(pad_token_id=0)([[[5, 6, 7], [8, 9]], [[4, 4]]])
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
        first = model(**{k: v for k, v in collate([[a, b]]).items() if k != "labels"}).logits[0, len(a):]
        second = model(**{k: v for k, v in collate([[c, b]]).items() if k != "labels"}).logits[0, len(c):]
        alone = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(first, second, atol=1e-5), "b's logits changed when its neighbour changed"
    assert torch.allclose(first, alone, atol=1e-5), "b packed behaves as b alone"
    # Without the block mask (position_ids only, as for FlashAttention), SDPA would leak across documents:
    leaky = PackedCollator(tok.pad_token_id, block_mask=False)
    with torch.no_grad():
        leaked = model(**{k: v for k, v in leaky([[c, b]]).items() if k != "labels"}).logits[0, len(c):]
    assert not torch.allclose(leaked, alone, atol=1e-3)
