"""LightNet blocks (DESIGN §5): the additive-recurrence token mixer, its softmax-attention twin (the
ViT baseline), the GLU channel mixer and the pre-norm block.

Token mixer:  q = SiLU(W_q x), k = W_k x (raw logits: the op softmax-normalises them), v = W_v x;
MD-LRPE on q and k; o = lightnet_attn(q, k, v); y = W_o(GroupRMSNorm(o) ⊙ sigmoid(W_up W_down x)),
the output gate low-rank (rank r ≪ hidden). GroupRMSNorm: RMSNorm within each head's e channels.
Softmax twin (mixer = "softmax"): q, k, v = W x, the same MD-LRPE, SDPA with 1/sqrt(d), W_o.
Block: x + mixer(RMSNorm(x)), then x + GLU(RMSNorm(x)) with GLU = SwiGLU.
"""

from __future__ import annotations

import torch
from torch import nn

from mm.layers.md_lrpe import MDLRPE
from mm.layers.norm import RMSNorm
from mm.layers.swiglu import SwiGLU
from mm.ops.lightnet_attn import lightnet_attn, lightnet_causal_state, lightnet_causal_step

MIXERS = ("lightnet", "softmax")

# torch.compile stops at the op: it launches its own Triton kernels and reads cu_seqlens on the host.
_lightnet_attn = torch.compiler.disable(lightnet_attn)


def _packed(t: torch.Tensor) -> torch.Tensor:
    """[B, T, H, x] -> [1, B·T, H, x]: the rows as one packed row (cu_seqlens over the flattened tokens)."""
    return t.reshape(1, -1, *t.shape[2:])


class GroupRMSNorm(nn.Module):
    """RMSNorm over each group of ``dim / groups`` channels (one group per head), learned gain per channel."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-6):
        super().__init__()
        if dim % groups:
            raise ValueError(f"dim {dim} must be a multiple of groups {groups}")
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xg = x.float().reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        y = nn.functional.rms_norm(xg, (xg.shape[-1],), eps=self.eps).reshape(shape)
        return (y * self.weight.float()).to(x.dtype)


class TokenMixer(nn.Module):
    """LightNet (or softmax) attention over tokens [B, T, hidden] with positions for MD-LRPE. A causal
    lightnet mixer also decodes: :meth:`prefill` returns the state after each sequence, :meth:`step`
    takes one token per row from it."""

    def __init__(self, hidden: int, heads: int, head_dim: int, *, mixer: str = "lightnet", causal: bool = False,
                 lrpe: str = "rotate", num_axes: int = 2, gate_rank: int = 16):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.mixer, self.causal, self.heads, self.head_dim = mixer, causal, heads, head_dim
        self.qkv = nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.lrpe = MDLRPE(head_dim, num_axes, lrpe)
        self.out_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        if mixer == "lightnet":
            self.norm = GroupRMSNorm(heads * head_dim, heads)
            self.gate = nn.Sequential(nn.Linear(hidden, gate_rank, bias=False),
                                      nn.Linear(gate_rank, heads * head_dim, bias=True))

    def _qkv(self, x: torch.Tensor, theta: torch.Tensor | None):
        """x [B, T, hidden] -> q, k [B, T, H, lrpe.out_dim] (MD-LRPE applied), v [B, T, H, head_dim]."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, self.heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        if self.mixer == "lightnet":
            q = nn.functional.silu(q)
        if theta is not None:
            q, k = self.lrpe(q, theta), self.lrpe(k, theta)
        return q, k, v

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LightNet's W_o(GroupRMSNorm(o) ⊙ sigmoid(gate(x))): o [..., H, head_dim], x [..., hidden]."""
        o = self.norm(o.reshape(*x.shape[:-1], -1))
        return self.out_proj(o * torch.sigmoid(self.gate(x)))

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None):
        """x [B, T, hidden]; theta [T, head_dim/2] MD-LRPE angles (None: no positional encoding);
        cu_seqlens over the B·T flattened tokens (packed sequences; lightnet only). Returns [B, T, hidden]."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, theta)
        if self.mixer == "softmax":
            if cu_seqlens is not None:
                raise ValueError("the softmax mixer takes no cu_seqlens (one sequence per row)")
            o = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=self.causal, scale=self.head_dim ** -0.5)
            return self.out_proj(o.transpose(1, 2).reshape(B, T, -1))
        return self._output(self._lightnet(q, k, v, cu_seqlens), x)

    def _lightnet(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None):
        """o [B, T, H, head_dim]; with cu_seqlens the B·T tokens run as one packed row."""
        if cu_seqlens is None:
            return _lightnet_attn(q, k, v, causal=self.causal)
        flat = (_packed(t) for t in (q, k, v))
        return _lightnet_attn(*flat, causal=self.causal, cu_seqlens=cu_seqlens).view(v.shape)

    def _check_decoding(self) -> None:
        if self.mixer != "lightnet" or not self.causal:
            raise ValueError(f"only a causal lightnet mixer decodes token by token, this one is "
                             f"mixer={self.mixer!r}, causal={self.causal}")

    def prefill(self, x: torch.Tensor, theta: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None):
        """The forward pass that also returns the decoding state after each sequence: (y [B, T, hidden],
        (z [N, H, d], S [N, H, d, head_dim]) float32), N = B or the packed sequences of cu_seqlens
        (see :mod:`mm.ops.lightnet_attn.decode`)."""
        self._check_decoding()
        q, k, v = self._qkv(x, theta)
        y = self._output(self._lightnet(q, k, v, cu_seqlens), x)
        if cu_seqlens is not None:
            k, v = _packed(k), _packed(v)
        return y, lightnet_causal_state(k, v, cu_seqlens=cu_seqlens)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], theta: torch.Tensor | None = None):
        """One decoding token per row: x [B, hidden], state (z, S) from :meth:`prefill`, theta [B, head_dim/2]
        each row's MD-LRPE angles at its position (None: no positional encoding) ->
        (y [B, hidden], new (z, S)). Reads nothing on the host: a CUDA graph can record it."""
        self._check_decoding()
        q, k, v = self._qkv(x[None], theta)  # rows as the tokens of one sequence: theta [B, ...] per row
        o, z, s = lightnet_causal_step(q[0], k[0], v[0], *state)
        return self._output(o, x), (z, s)


class LightNetBlock(nn.Module):
    """Pre-norm block: x + mixer(RMSNorm(x)); x + GLU(RMSNorm(x))."""

    def __init__(self, hidden: int, heads: int, head_dim: int, ffn: int, *, mixer: str = "lightnet",
                 causal: bool = False, lrpe: str = "rotate", num_axes: int = 2, gate_rank: int = 16):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(hidden), RMSNorm(hidden)
        self.mixer = TokenMixer(hidden, heads, head_dim, mixer=mixer, causal=causal, lrpe=lrpe,
                                num_axes=num_axes, gate_rank=gate_rank)
        self.glu = SwiGLU(hidden, ffn)

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None):
        x = x + self.mixer(self.norm1(x), theta, cu_seqlens)
        return x + self.glu(self.norm2(x))
