"""Packing several documents into one sequence without letting any token attend across a document boundary.

With FlashAttention's varlen kernel, `position_ids` that restart at 0 for every document are enough (the
kernel derives the boundaries from them). SDPA and eager attention ignore that and would let a document see
its neighbours, so for them the collator also builds the block-diagonal causal mask explicitly, as a 4D
boolean `attention_mask` (batch, 1, query, key), which transformers passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


def pack_best_fit(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of documents per pack, each pack at most `max_length` tokens.
    Documents must already be at most `max_length` long (see `split_long`)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"document {i} has {lengths[i]} tokens, more than max_length {max_length}")
        best = min((r, p) for p, r in enumerate(room) if r >= lengths[i]) if any(r >= lengths[i] for r in room) else None
        if best is None:
            packs.append([i])
            room.append(max_length - lengths[i])
        else:
            p = best[1]
            packs[p].append(i)
            room[p] -= lengths[i]
    return packs


def split_long(docs: Sequence[Sequence[int]], max_length: int) -> list[list[int]]:
    """Documents longer than `max_length` cut into chunks, so packing discards no token."""
    out: list[list[int]] = []
    for doc in docs:
        out.extend(list(doc[i : i + max_length]) for i in range(0, max(len(doc), 1), max_length))
    return out


@dataclass(frozen=True)
class PackedCollator:
    """Turns a batch of packs (each a list of token-id documents) into model inputs.

    `block_mask`: build the 4D block-diagonal causal mask (needed for SDPA/eager; leave False for
    flash_attention_2, where position_ids suffice)."""

    pad_token_id: int
    block_mask: bool = True

    def __call__(self, packs: Sequence[Sequence[Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(d) for d in pack) for pack in packs)
        ids = torch.full((len(packs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(packs), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(packs), width), dtype=torch.long)
        segments = torch.full((len(packs), width), -1, dtype=torch.long)  # -1: padding
        for row, pack in enumerate(packs):
            at = 0
            for seg, doc in enumerate(pack):
                n = len(doc)
                ids[row, at : at + n] = torch.tensor(doc)
                labels[row, at + 1 : at + n] = torch.tensor(doc[1:])  # the first token would be predicted from the previous document
                positions[row, at : at + n] = torch.arange(n)
                segments[row, at : at + n] = seg
                at += n
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
        if self.block_mask:
            same = segments[:, :, None] == segments[:, None, :]
            causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
            real = (segments >= 0)[:, :, None]
            mask = same & causal & real
            mask |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no all-masked row: no NaN)
            batch["attention_mask"] = mask[:, None]
        return batch
