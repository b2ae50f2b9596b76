"""How the Triton path splits the token axis into segments that run in parallel.

Each sequence (a batch row, or one sequence of a `cu_seqlens` pack) is cut into contiguous segments
of at most `segment_len` tokens. Every kernel program owns one (segment, head, tile); the state a
segment starts from comes from a short scan over the segments' local states, so the work is spread
over the sequence as well as over batch x heads (constant speed from 1K to 1M tokens).

The segment table is a small int64 tensor `[num_segments, 5]`: (sequence index, start, end,
is_first, is_last), positions in the flattened token axis; `seq_segs [N + 1]` gives each sequence's
segment range. Every sequence owns at least one segment, also an empty one (start == end), so its
final state (= initial state) is still written.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from mm.ops.host_bounds import host_bounds

ALIGN = 256  # segment lengths are multiples of every block size the kernels use


@dataclass(frozen=True)
class Segments:
    table: torch.Tensor  # [S, 5] int64
    seq_segs: torch.Tensor  # [N + 1] int64
    num_segments: int
    num_seqs: int
    split: bool  # True when some sequence has more than one segment (the scan kernels are needed)


@functools.lru_cache(maxsize=4)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_segment_len(max_len: int, num_seqs: int, num_heads: int, head_dim_v: int, device: torch.device) -> int:
    """Segment length giving about two programs per multiprocessor over all (segment, head, tile).

    Sequences are split only when (sequence, head) pairs alone cannot fill the device: splitting
    costs a local-state pass over the split sequences (a third more memory traffic in the forward),
    so it pays only to fill idle multiprocessors (measured on an H200: 4K x 16 runs fastest unsplit,
    64K x 1 and 1M x 1 with 8-16 segments). `head_dim_v / 64` approximates the value tiles per head.
    On CPU (the interpreter) a notional 4 multiprocessors are used; tests pick explicit lengths.
    """
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    target_pairs = max(1, 2 * sms // max(1, math.ceil(head_dim_v / 64)))
    pieces = max(1, round(target_pairs / max(1, num_seqs * num_heads)))
    length = math.ceil(max(max_len, 1) / pieces)
    return max(ALIGN, math.ceil(length / ALIGN) * ALIGN)


@functools.lru_cache(maxsize=64)
def _build(bounds: tuple[int, ...], segment_len: int, device: torch.device) -> Segments:
    rows: list[tuple[int, int, int, int, int]] = []
    seq_segs = [0]
    for n in range(len(bounds) - 1):
        start, end = bounds[n], bounds[n + 1]
        cuts = list(range(start, end, segment_len)) or [start]
        for i, s0 in enumerate(cuts):
            rows.append((n, s0, min(s0 + segment_len, end), int(i == 0), int(i == len(cuts) - 1)))
        seq_segs.append(len(rows))
    table = torch.tensor(rows, dtype=torch.int64).to(device)
    return Segments(
        table=table,
        seq_segs=torch.tensor(seq_segs, dtype=torch.int64).to(device),
        num_segments=len(rows),
        num_seqs=len(bounds) - 1,
        split=len(rows) > len(bounds) - 1,
    )


def build_segments(
    *,
    batch: int,
    seq_len: int,
    cu_seqlens: torch.Tensor | None,
    num_heads: int,
    head_dim_v: int,
    device: torch.device,
    segment_len: int | None = None,
) -> Segments:
    """Segment table for an equal-length batch (`batch` x `seq_len`) or a `cu_seqlens` pack.

    `segment_len` is chosen by `choose_segment_len` unless given (tests give it to exercise the split
    path on small inputs). With `cu_seqlens` the boundaries are read on the host (`host_bounds`: one
    device sync per packed batch), as FlashAttention-style varlen kernels do to size their grid.
    """
    if cu_seqlens is None:
        bounds = tuple(i * seq_len for i in range(batch + 1))
    else:
        bounds = host_bounds(cu_seqlens)
    if segment_len is None:
        max_len = max((b - a for a, b in zip(bounds, bounds[1:], strict=False)), default=0)
        segment_len = choose_segment_len(max_len, len(bounds) - 1, num_heads, head_dim_v, device)
    if segment_len <= 0:
        raise ValueError(f"segment_len must be positive, got {segment_len}")
    return _build(bounds, segment_len, device)
