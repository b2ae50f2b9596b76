"""Causal softmax attention with grouped-query heads and partial NeoX RoPE, through SDPA.

scores = q kᵀ / sqrt(d), causal (and block-diagonal over documents when packed); q heads share
kv heads in groups of H_q / H_kv.
"""

from __future__ import annotations

import torch
from torch import nn

from mm.layers.rotary import apply_rotary

# FlashAttention's varlen kernel takes half precision only; packed documents in float32 (a model run on
# CUDA without autocast) take SDPA with the block-diagonal causal mask instead: exact, O(T²) memory.
VARLEN_DTYPES = (torch.float16, torch.bfloat16)


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

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """x [B, T, hidden] -> q [B, H, T, d], k, v [B, H_kv, T, d] (RoPE applied to q and k)."""
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, self.heads, self.head_dim), *rope)
        k = apply_rotary(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def output(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA over q [B, H, Tq, d] and k, v [B, H_kv, Tk, d]; mask [B, Tq, Tk] bool or None (causal)."""
        if mask is None:
            o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
        B, _, T, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))

    def varlen_output(self, q, k, v, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Packed documents on CUDA in half precision: FlashAttention varlen over the flattened B·T tokens
        (no T×T mask)."""
        from torch.nn.attention.varlen import varlen_attn

        B, H, T, d = q.shape
        flat = lambda t: t.transpose(1, 2).reshape(B * T, t.shape[1], d)  # [B·T, heads, d]
        groups = self.heads // self.kv_heads
        k, v = (flat(t).repeat_interleave(groups, dim=1) if groups > 1 else flat(t) for t in (k, v))
        cu = cu_seqlens.to(torch.int32)
        # No document straddles two rows, so T bounds the longest one. A bound is all the kernel needs
        # (it sizes the launch grid; blocks past a document's end return at once) and, unlike the
        # true maximum, it is known without waiting on the device.
        o = varlen_attn(flat(q), k, v, cu, cu, T, T, window_size=(-1, 0))  # causal
        return self.o_proj(o.reshape(B, T, H * d))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, return_kv: bool = False):
        """x [B, T, hidden]; rope = (cos, sin) [B, T, r/2]; packed documents given by cu_seqlens [N + 1]
        over the flattened tokens and doc_ids [B, T] (both None: one document per row).
        Returns y [B, T, hidden], and (k, v) for a decoding cache when ``return_kv``."""
        q, k, v = self.qkv(x, rope)
        if cu_seqlens is not None and q.is_cuda and q.dtype in VARLEN_DTYPES:
            y = self.varlen_output(q, k, v, cu_seqlens)
        else:
            mask = None
            if doc_ids is not None:
                T = x.shape[1]
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                mask = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])  # [B, T, T]
            y = self.output(q, k, v, mask)
        return (y, (k, v)) if return_kv else y
