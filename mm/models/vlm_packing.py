"""Packing of VLM training samples: several short samples in one row, attention kept per sample.

A sample (prompt with its image placeholders, answer, EOS; :func:`mm.models.vlm_prompt.training_example`)
is never cut: a cut would part an image's placeholders from each other or the answer from its
image. Samples go whole into rows of at most ``row_tokens`` tokens, first-fit decreasing (longest
first, each into the first row with room), and the rows are right-padded to the longest one.
``cu_seqlens`` (:mod:`mm.layers.packing`) marks every sample start and every row's padding, so the LM
attends within a sample only and restarts its positions there: each sample's loss terms are those
of the unpacked batch. The visual tokens fill the placeholders in flattened order, so the images
are put in the samples' packed order (``order``).

It pays when samples vary in length (captions of different lengths, images of different token
counts): the unpacked batch pads every row to the longest sample. With near-equal lengths the
packed rows, padded to the longest row, can hold more positions than the unpacked batch; the
batcher (:meth:`mm.models.vlm_prompt.VLBatcher.training_batch`) then keeps the batch unpacked.
"""

from __future__ import annotations

import torch

from mm.models.vlm_prompt import IGNORE


def pack_plan(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Rows of sample indices (first-fit decreasing; within a row in index order) whose lengths sum
    to at most ``row_tokens``."""
    if lengths and max(lengths) > row_tokens:
        raise ValueError(f"a sample has {max(lengths)} tokens, over the row length pack_tokens={row_tokens}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, left in enumerate(room):
            if lengths[i] <= left:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_tokens - lengths[i])
    return [sorted(row) for row in rows]


def pack_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, row_tokens: int
               ) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(ids, shifted labels) per sample -> (``input_ids``/``labels`` [R, T], ``cu_seqlens`` [S + 1]
    int32 over the flattened R·T tokens; the sample order of the packed rows)."""
    plan = pack_plan([len(ids) for ids, _ in rows], row_tokens)
    width = max(sum(len(rows[i][0]) for i in row) for row in plan)
    ids = torch.full((len(plan), width), pad_id, dtype=torch.long)
    labels = torch.full((len(plan), width), IGNORE, dtype=torch.long)
    bounds = [0]
    for b, row in enumerate(plan):
        at = 0
        for i in row:
            row_ids, row_labels = rows[i]
            ids[b, at:at + len(row_ids)] = torch.tensor(row_ids)
            labels[b, at:at + len(row_labels)] = torch.tensor(row_labels)
            at += len(row_ids)
            bounds.append(b * width + at)
        if at < width:  # the row's padding: a segment of its own, label -100
            bounds.append((b + 1) * width)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    return {"input_ids": ids, "labels": labels, "cu_seqlens": cu_seqlens}, [i for row in plan for i in row]
