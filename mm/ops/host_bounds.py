"""Packed-sequence boundaries (`cu_seqlens`) on the host, shared by every layer of one forward."""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

_HOST_BOUNDS = WeakIdKeyDictionary()


def host_bounds(cu_seqlens: torch.Tensor) -> tuple[int, ...]:
    """`cu_seqlens` as host integers, read from the device once per tensor.

    Every layer of a forward gets the same packed batch's `cu_seqlens` tensor, so they share one
    device-to-host read instead of one each (keyed by the tensor object and its version counter, so
    an in-place change is read again).
    """
    hit = _HOST_BOUNDS.get(cu_seqlens)
    if hit is not None and hit[0] == cu_seqlens._version:
        return hit[1]
    bounds = tuple(int(x) for x in cu_seqlens.tolist())
    _HOST_BOUNDS[cu_seqlens] = (cu_seqlens._version, bounds)
    return bounds
