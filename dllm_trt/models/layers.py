"""The pieces every dLLM family shares: RMSNorm, rotary embeddings, attention over an explicit cache.

Attention takes the keys/values of earlier positions as plain tensors and an additive
``attention_bias`` that encodes the whole layout (bidirectional, block-causal, padding,
stale cache entries). The module keeps no state between calls: that is what makes the
export a plain graph and lets one graph serve every cache mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as upstream does, then scale in the model dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape [B, 1, L, D] for the half-split ("rotate_half") RoPE convention."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # [B, L, D/2]
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [B, 1, L, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attend(
    q: torch.Tensor,  # [B, H, L, D]
    k: torch.Tensor,  # [B, Hkv, L, D]   keys of the current tokens (after RoPE)
    v: torch.Tensor,  # [B, Hkv, L, D]
    past_k: torch.Tensor | None,  # [B, Hkv, P, D]
    past_v: torch.Tensor | None,
    attention_bias: torch.Tensor,  # [B, 1, L, P + L] float32, 0 = attend, large negative = masked
) -> torch.Tensor:
    if past_k is not None:
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        b, hkv, s, d = k.shape
        k = k[:, :, None].expand(b, hkv, groups, s, d).reshape(b, hkv * groups, s, d)
        v = v[:, :, None].expand(b, hkv, groups, s, d).reshape(b, hkv * groups, s, d)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    probs = F.softmax(scores.float() + attention_bias, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class SelfAttention(nn.Module):
    """q/k/v projections + RoPE + attention over (past, current); returns output and current K/V."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool, out_name: str,
                 qk_norm_eps: float | None = None, out_bias: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.out_name = out_name  # upstream name of the output projection ("o_proj" / "attn_out")
        setattr(self, out_name, nn.Linear(heads * head_dim, hidden, bias=out_bias))
        if qk_norm_eps is not None:  # Qwen3: RMSNorm over each head's q and k, before RoPE
            self.q_norm = RMSNorm(head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps)

    def forward(self, x, cos, sin, past_k, past_v, attention_bias):
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, l, self.kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, k, v, past_k, past_v, attention_bias)
        out = out.transpose(1, 2).reshape(b, l, self.heads * self.head_dim)
        return getattr(self, self.out_name)(out), k, v


def swiglu(x: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> torch.Tensor:
    return down(F.silu(gate(x)) * up(x))
