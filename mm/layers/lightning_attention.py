"""MiniMax lightning-attention block (DESIGN §3).

x → SiLU(W_qkv x) split per head into [q | k | v] → lightning attention with this layer's slopes
→ RMSNorm over all H·d → ⊙ sigmoid(W_gate x) → W_out. No RoPE, no softmax, no 1/sqrt(d).
"""

from __future__ import annotations

import torch
from torch import nn

from mm.layers.norm import RMSNorm
from mm.ops.lightning_attn import build_slopes, lightning_attn, lightning_attn_step

# torch.compile stops at the op and runs it as it is: it launches its own Triton kernels and keeps
# packed-segment bookkeeping on the host, neither of which belongs in a traced graph.
_lightning_attn = torch.compiler.disable(lightning_attn)


class LightningAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int, layer_idx: int, num_layers: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv_proj = nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.output_gate = nn.Linear(hidden, heads * head_dim, bias=False)
        self.norm = RMSNorm(heads * head_dim, eps=1e-6)  # MiniMax's fixed eps here, not the config's
        self.out_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        # Fixed decay rates, derived from the layer's place: not parameters, not in the state dict.
        self.register_buffer("slopes", build_slopes(heads, layer_idx, num_layers), persistent=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = nn.functional.silu(self.qkv_proj(x))
        qkv = qkv.view(*x.shape[:-1], self.heads, 3 * self.head_dim)  # [..., H, 3d]
        return qkv.split(self.head_dim, dim=-1)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.norm(o.reshape(*x.shape[:-1], self.heads * self.head_dim))
        return self.out_proj(torch.sigmoid(self.output_gate(x)) * o)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, state: torch.Tensor | None = None,
                return_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, hidden]; cu_seqlens over the flattened B·T tokens (packed documents) or a
        starting state [B, H, d, d]. Returns (y [B, T, hidden], the final state [B or N, H, d, d] in
        float32 when ``return_state``, else None)."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x)  # [B, T, H, d] each
        if cu_seqlens is not None:
            # Packed: every document (and row) starts from a zero state; run all rows as one sequence.
            flat = (t.reshape(1, B * T, self.heads, self.head_dim) for t in (q, k, v))
            o, final = _lightning_attn(*flat, self.slopes, cu_seqlens=cu_seqlens, output_final_state=return_state)
            o = o.view(B, T, self.heads, self.head_dim)
        else:
            o, final = _lightning_attn(q, k, v, self.slopes, initial_state=state, output_final_state=return_state)
        return self._output(o, x), final

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding token: x [B, hidden], state [B, H, d, d] -> (y [B, hidden], new state). O(1)."""
        q, k, v = self._qkv(x)  # [B, H, d]
        o, state = lightning_attn_step(q, k, v, state, self.slopes)
        return self._output(o, x), state
