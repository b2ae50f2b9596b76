"""The dtype a matmul on a tensor runs in: autocast's when autocast is on for the tensor's device,
else the tensor's own. For ops that cast their operands themselves (grouped experts, the LM loss)."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
