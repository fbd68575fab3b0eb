"""The transformer's layers: RMSNorm, rotary embeddings, causal attention (fp32 on the CPU), SwiGLU, the pre-norm
block, and the preallocated key/value cache of incremental decoding. ``robotok.policy.model`` assembles them.

References in ``robotok.policy.model``'s docstring (LLaMA's layer choices over nanoGPT's shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from robotok.policy.model import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """cos, sin: [max_seq_len, head_dim/2] float32."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    ang = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D/2]. Rotates the pairs (i, i + D/2) (the GPT-NeoX layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, in fp32 on the CPU whatever the autocast dtype.

    On the CPU torch's bf16 attention kernel buys no speed at these sizes (``benchmarks/policy_speed.py``: bf16
    training 9,425 tokens/s with fp32 attention against 8,509 with the kernel, best of 4, equal medians), so
    the softmax and its gradient keep fp32's precision for free. CUDA keeps its bf16 kernels.
    """
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3x [B, H, T, D]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = self._qkv(x, cos, sin)
        p = self.dropout if self.training else 0.0
        return self._out(attend(q, k, v, dropout_p=p, is_causal=True))

    def forward_kv(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        positions: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        inplace: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend from x (at ``positions``, [T]) to the cache after writing x's keys/values into it.

        k_cache/v_cache: [B, H, T_max, D]. mask: [T, L] bool (True: may attend), L = the cache length used.
        With ``inplace`` the caches are written in place and only their first L entries are read.
        """
        q, k, v = self._qkv(x, cos, sin)
        if inplace:
            k_cache.index_copy_(2, positions, k.to(k_cache.dtype))
            v_cache.index_copy_(2, positions, v.to(v_cache.dtype))
        else:
            k_cache = k_cache.index_copy(2, positions, k.to(k_cache.dtype))
            v_cache = v_cache.index_copy(2, positions, v.to(v_cache.dtype))
        length = mask.shape[-1]
        k_all, v_all = k_cache[:, :, :length].to(q.dtype), v_cache[:, :, :length].to(q.dtype)
        y = attend(q, k_all, v_all, attn_mask=mask)
        return self._out(y), k_cache, v_cache


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block; the FSDP2 wrap unit."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        return x + self.drop(self.ffn(self.ffn_norm(x)))

    def forward_kv(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        positions: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        inplace: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, k_cache, v_cache = self.attn.forward_kv(
            self.attn_norm(x), cos, sin, mask, positions, k_cache, v_cache, inplace
        )
        x = x + a
        return x + self.ffn(self.ffn_norm(x)), k_cache, v_cache


@dataclass
class KVCache:
    """Preallocated keys/values of every layer, ``[n_layer, B, n_head, max_len, head_dim]``, and the next position.

    ``pos`` may be moved back (``truncate``) to reuse a cached prefix: entries at or after it are ignored
    and overwritten by the next ``forward_cached``. ``frame_open`` ([B] int64, -1: none) is the position of
    the last FRAME_OPEN written, so that a frame fed one id at a time still knows each id's cell; ``cond``
    ([B, prompt_film]) is the prompt's encoding, so that frames fed after a cached prompt are conditioned on it.
    """

    k: Tensor
    v: Tensor
    pos: int = 0
    frame_open: Tensor | None = None
    cond: Tensor | None = None

    def __post_init__(self) -> None:
        if self.frame_open is None:
            self.frame_open = torch.full((self.k.shape[1],), -1, dtype=torch.long, device=self.k.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def truncate(self, pos: int) -> None:
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot truncate a cache at position {self.pos} to {pos}")
        self.pos = pos
        self.frame_open = self.frame_open.masked_fill(self.frame_open >= pos, -1)
        if pos == 0:
            self.cond = None

    def clone(self) -> KVCache:
        cond = None if self.cond is None else self.cond.clone()
        return KVCache(self.k.clone(), self.v.clone(), self.pos, self.frame_open.clone(), cond)
