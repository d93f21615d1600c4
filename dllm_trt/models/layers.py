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
    scale: float | None = None,  # 1/sqrt(head_dim); a Python float keeps the traced graph free of shape arithmetic
) -> torch.Tensor:
    if past_k is not None:
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        b, hkv, s, d = k.shape
        k = k[:, :, None].expand(b, hkv, groups, s, d).reshape(b, hkv * groups, s, d)
        v = v[:, :, None].expand(b, hkv, groups, s, d).reshape(b, hkv * groups, s, d)
    scale = float(q.shape[-1]) ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
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
        out = attend(q, k, v, past_k, past_v, attention_bias, self.head_dim ** -0.5)
        out = out.transpose(1, 2).reshape(b, l, self.heads * self.head_dim)
        return getattr(self, self.out_name)(out), k, v


def gather_rows(x: torch.Tensor, logits_index: torch.Tensor | None) -> torch.Tensor:
    """Hidden states of the rows the step reads ([B, R, H]); all rows when ``logits_index`` is None.
    The LM head then runs on R rows, not on the whole window (a block, not the prompt)."""
    if logits_index is None:
        return x
    return torch.gather(x, 1, logits_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def mask_exclusion(vocab: int, mask_token_id: int, device=None) -> torch.Tensor | None:
    """[V] float32: 0 everywhere, -inf at the mask token (None when the mask id is outside the vocabulary)."""
    if not 0 <= mask_token_id < vocab:
        return None
    exclude = torch.zeros(vocab, dtype=torch.float32, device=device)
    exclude[mask_token_id] = float("-inf")
    return exclude


def select_top1(logits: torch.Tensor, mask_token_id: int,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token of each row and its softmax probability, in float32, the mask token excluded
    (a position filled with [MASK] would stay masked and its block would never finish). Ties go
    to the lowest token id. Traces to ArgMax/GatherElements/Exp/ReduceSum: no softmax tensor is kept.
    ``exclude`` (from ``mask_exclusion``) can be passed in, so a traced graph holds it as a constant."""
    z = logits.float()
    if exclude is None:
        exclude = mask_exclusion(z.shape[-1], mask_token_id, z.device)
    if exclude is not None:
        z = z + exclude
    # ArgMax, then gather the maximum: ONNX Runtime's CUDA ReduceMax over a 126k vocabulary goes through
    # a cuDNN reduction that took 8 ms per step on an H200 (ArgMax's own kernel: 9 us).
    tokens = z.argmax(dim=-1)
    top = z.gather(-1, tokens.unsqueeze(-1))
    confidence = 1.0 / torch.exp(z - top).sum(dim=-1)
    return tokens, confidence


def swiglu(x: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> torch.Tensor:
    return down(F.silu(gate(x)) * up(x))
