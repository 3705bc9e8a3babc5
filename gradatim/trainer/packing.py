"""Packing several documents into one sequence without letting any token attend across a document boundary.

The packing itself is TRL's `pack_dataset` (best-fit decreasing over Arrow columns, O(n log n), documents longer
than the sequence split rather than cut): each packed row holds `input_ids` and the `seq_lengths` of the
documents in it. With FlashAttention's varlen kernel, `position_ids` that restart at 0 for every document are
enough (the kernel derives the boundaries from them). SDPA and eager attention ignore that and would let a
document see its neighbours, so for them the collator also builds the block-diagonal causal mask explicitly,
as a 4D boolean `attention_mask` (batch, 1, query, key), which transformers passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100
PACK_BATCH = 10_000  # documents binned together: more packs tighter, but each batch is one Arrow table in memory


def pack(tokens: Any, max_length: int, packing: bool) -> Any:
    """Rows of `input_ids` + `seq_lengths`, each at most `max_length` tokens. Packing: several documents per row
    (TRL's best-fit decreasing); otherwise one per row. Either way a longer document is split, never cut short."""
    from trl import pack_dataset

    if packing:
        return pack_dataset(tokens, max_length, strategy="bfd_split", map_kwargs={"batch_size": PACK_BATCH, "desc": "packing"})

    def split(batch: Mapping[str, list]) -> dict[str, list]:
        chunks = [doc[i : i + max_length] for doc in batch["input_ids"] for i in range(0, max(len(doc), 1), max_length)]
        return {"input_ids": chunks, "seq_lengths": [[len(c)] for c in chunks]}

    return tokens.map(split, batched=True, remove_columns=tokens.column_names, desc="splitting")


def documents_of(row: Mapping[str, Sequence[int]]) -> list[Sequence[int]]:
    """The documents of one packed row, cut at its `seq_lengths`."""
    ids, out, at = row["input_ids"], [], 0
    for n in row["seq_lengths"]:
        out.append(ids[at : at + n])
        at += n
    return out


@dataclass(frozen=True)
class PackedCollator:
    """Turns a batch of packed rows (`input_ids` + `seq_lengths`) into model inputs.

    `block_mask`: build the 4D block-diagonal causal mask (needed for SDPA/eager; leave False for
    flash_attention_2, where position_ids suffice)."""

    pad_token_id: int
    block_mask: bool = True

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        packs = [documents_of(row) for row in rows]
        width = max(sum(len(d) for d in pack) for pack in packs)
        ids = torch.full((len(packs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(packs), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(packs), width), dtype=torch.long)
        segments = torch.full((len(packs), width), -1, dtype=torch.long)  # -1: padding
        for row, pack in enumerate(packs):
            at = 0
            for seg, doc in enumerate(pack):
                n = len(doc)
                ids[row, at : at + n] = torch.as_tensor(doc)
                labels[row, at + 1 : at + n] = torch.as_tensor(doc[1:])  # the first token would be predicted from the previous document
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
