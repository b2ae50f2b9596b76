"""Packed sequences: several documents per row, boundaries given FlashAttention-style.

``cu_seqlens`` [N + 1] (int) holds cumulative document lengths over the flattened B·T tokens,
from 0 to B·T; every row start is also a boundary (no document straddles two rows).
"""

from __future__ import annotations

import torch

from mm.ops.host_bounds import host_bounds


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> None:
    """Validate the boundaries on the host: the one read the lightning layers then reuse (host_bounds)."""
    total = batch * seq_len
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    bounds = host_bounds(cu_seqlens)
    if bounds[0] != 0 or bounds[-1] != total:
        raise ValueError(f"cu_seqlens must run from 0 to B*T = {total}, got {bounds[0]}..{bounds[-1]}")
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError("cu_seqlens must be strictly increasing (no empty documents)")
    if not set(range(0, total, seq_len)) <= set(bounds):
        raise ValueError(f"every row start (multiples of T = {seq_len}) must be a boundary in cu_seqlens")


def document_ids(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """[B, T] index of the document each token belongs to."""
    flat = torch.arange(batch * seq_len, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens[1:].long(), flat, right=True)).view(batch, seq_len)


def document_positions(cu_seqlens: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """[B, T] position of each token inside its own document (restarts at 0 at each boundary)."""
    flat = torch.arange(batch * seq_len, device=cu_seqlens.device)
    starts = cu_seqlens.long()[document_ids(cu_seqlens, batch, seq_len).flatten()]
    return (flat - starts).view(batch, seq_len)
