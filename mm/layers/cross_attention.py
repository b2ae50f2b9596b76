"""Cross-attention from a token stream to condition tokens (text) under a padding mask.

    y = W_o softmax(q kᵀ / sqrt(d) + M) v,   q = W_q x,  (k, v) = W_kv c,
    M_ts = 0 where condition token s is real (mask True), -inf where it is padding,

per head. A padding token gets exactly zero weight, so its value cannot change the output; a row
whose mask is all False has no token to attend to (0/0) and is refused by the caller's check
(`check_cond_mask`). W_o starts at zero (PixArt-α's cross-attention), so a residual block
x + CrossAttention(x, c) starts as the identity, like the adaLN-Zero sublayers beside it.
"""

from __future__ import annotations

import torch
from torch import nn


def check_cond_mask(cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The boolean mask [B, L] of condition tokens [B, L, D] (None: every token real), checked.

    Raises ValueError on a wrong shape or dtype, or a row without a real token. The last check reads
    the mask's values, so it runs for host tensors only: on a GPU it would be a device sync per call
    (and no CUDA graph could hold it); there the text encoders' contract (every prompt, "" included,
    has a real token) stands in for it.
    """
    if cond.dim() != 3:
        raise ValueError(f"condition tokens must be [B, L, D], got {tuple(cond.shape)}")
    if mask is None:
        return torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(cond.shape[:2]):
        raise ValueError(f"the condition mask must be bool [B, L] = {tuple(cond.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if mask.device.type != "cpu":
        return mask
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"condition mask rows {empty.nonzero().flatten().tolist()} have no real token "
                         "(encode the empty prompt to at least one token marked True)")
    return mask


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, cond_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(hidden, heads * head_dim, bias=False)
        self.kv = nn.Linear(cond_dim, 2 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden] queries; cond [B, L, cond_dim]; mask [B, L] bool (True = real, checked
        by `check_cond_mask`). Returns [B, T, hidden]."""
        B, T, _ = x.shape
        h, d = self.heads, self.head_dim
        q = self.q(x).view(B, T, h, d).transpose(1, 2)  # [B, h, T, d]
        k, v = self.kv(cond).view(B, cond.shape[1], h, 2 * d).transpose(1, 2).split(d, dim=-1)  # [B, h, L, d]
        o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(B, T, h * d))
