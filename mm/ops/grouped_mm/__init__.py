"""Grouped matrix product: rows of ``x`` sorted by group, each group times its own matrix.

    y[offsets[g-1]:offsets[g]] = x[offsets[g-1]:offsets[g]] @ w[g]      (offsets[-1] = 0)

Fast path: ``torch._grouped_mm`` (one kernel for all groups; on CUDA bf16 with compute capability
≥ 9.0, on CPU whenever rows are 16-byte aligned). Fallback: the groups padded into a batch and
one ``bmm`` — no Python loop over groups either way. ``grouped_mm_reference`` loops, for tests.
"""

from __future__ import annotations

import torch

__all__ = ["grouped_mm", "grouped_mm_padded", "grouped_mm_reference"]


def _check(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> None:
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need x [N, k] and w [G, k, n], got {tuple(x.shape)} and {tuple(w.shape)}")
    if offsets.shape != (w.shape[0],):
        raise ValueError(f"offsets must be [G] = [{w.shape[0]}] cumulative row counts, got {tuple(offsets.shape)}")


@torch.compiler.assume_constant_result  # a host query torch.compile cannot trace; fixed for a device
def _hopper_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def _native_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    aligned = all((size * x.element_size()) % 16 == 0 for size in (x.shape[1], w.shape[2]))
    if x.device.type == "cuda":
        return aligned and x.dtype == torch.bfloat16 and _hopper_or_newer(x.device.index)
    # torch.compile's shape rules for _grouped_mm accept bf16 only (CUDA's rule), also on CPU.
    return aligned and (x.dtype == torch.bfloat16 or x.dtype == torch.float32 and not torch.compiler.is_compiling())


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [N, k] (rows grouped), w [G, k, n], offsets [G] int (cumulative ends) -> [N, n]. Differentiable."""
    _check(x, w, offsets)
    if _native_ok(x, w):
        return torch._grouped_mm(x, w.to(x.dtype), offs=offsets.to(torch.int32))
    return grouped_mm_padded(x, w, offsets)


@torch.compiler.disable  # the padded width is data-dependent (read on the host): not traceable
def grouped_mm_padded(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Fallback: scatter the groups into [G, max_rows, k], one bmm, gather back."""
    _check(x, w, offsets)
    groups, n_rows = w.shape[0], x.shape[0]
    offsets = offsets.long()
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    group = torch.repeat_interleave(torch.arange(groups, device=x.device), counts, output_size=n_rows)
    row_in_group = torch.arange(n_rows, device=x.device) - (offsets - counts)[group]
    width = int(counts.max()) if n_rows else 0
    padded = x.new_zeros(groups, width, x.shape[1])
    padded = padded.index_put((group, row_in_group), x)
    out = torch.bmm(padded, w.to(x.dtype))  # [G, max_rows, n]
    return out[group, row_in_group]


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    _check(x, w, offsets)
    start, parts = 0, []
    for g, end in enumerate(offsets.tolist()):
        parts.append(x[start:end] @ w[g])
        start = end
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[2])
