"""Causal softmax attention with grouped-query heads and partial NeoX RoPE, through SDPA.

scores = q kᵀ / sqrt(d), causal (and block-diagonal over documents when packed); q heads share
kv heads in groups of H_q / H_kv.
"""

from __future__ import annotations

import torch
from torch import nn

from mm.layers.rotary import apply_rotary


class SoftmaxAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], doc_ids: torch.Tensor | None = None):
        """x [B, T, hidden]; rope = (cos, sin) [B, T, r/2]; doc_ids [B, T] or None (one document per row)."""
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, self.heads, self.head_dim), *rope)
        k = apply_rotary(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, d]
        if doc_ids is None:
            o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])  # [B, T, T]
            o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))
