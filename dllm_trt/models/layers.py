"""The pieces every dLLM family shares: RMSNorm, rotary embeddings, attention over an explicit cache.

Attention takes the keys/values of earlier positions as plain tensors and an additive
``attention_bias`` that encodes the whole layout (bidirectional, block-causal, padding,
stale cache entries). The module keeps no state between calls: that is what makes the
export a plain graph and lets one graph serve every cache mode.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """The checkpoints' norm. ``kind``: "rms" (RMSNorm in fp32, scaled in the model dtype), "gemma_rms"
    (the same, scaled by 1 + weight) or "layer" (LayerNorm in the model dtype, no fp32 step; LLaDA's
    layer_norm_type "default"). ``affine=False``: no weight (nor bias); ``bias``: an added bias."""

    def __init__(self, dim: int, eps: float, *, affine: bool = True, bias: bool = False, kind: str = "rms"):
        super().__init__()
        self.eps, self.kind, self.dim = eps, kind, dim
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
            if bias:
                self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        if self.kind == "layer":
            return F.layer_norm(x, (self.dim,), weight, bias, self.eps)
        # Normalise in fp32 as upstream does, then scale in the model dtype.
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if weight is not None:
            h = h * (1 + weight) if self.kind == "gemma_rms" else weight * h
        return h if bias is None else h + bias


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
        # RoPE in the tables' dtype: fp32 tables (LLaDA's rope_full_precision) rotate in fp32, then round
        q = apply_rope(q.to(cos.dtype), cos, sin).to(v.dtype)
        k = apply_rope(k.to(cos.dtype), cos, sin).to(v.dtype)
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


class RowSelection(NamedTuple):
    """Per read row: the top-1 token and the statistics the unmasking rules rank by (all float32)."""

    tokens: torch.Tensor  # [B, R] int64, the mask token excluded
    confidence: torch.Tensor  # [B, R] its softmax probability
    margin: torch.Tensor  # [B, R] p1 - p2 (Dream's topk_margin)
    neg_entropy: torch.Tensor  # [B, R] sum p log p (Dream's entropy; <= 0, higher = more certain)


def select_rows(logits: torch.Tensor, mask_token_id: int, exclude: torch.Tensor | None = None,
                vocab_ids: torch.Tensor | None = None) -> RowSelection:
    """Top-1 token of each row and its softmax statistics, in float32, the mask token excluded
    (a position filled with [MASK] would stay masked and its block would never finish; the mask's
    probability is 0 in every statistic). Ties go to the lowest token id. Traces to ArgMax /
    GatherElements / Exp / ReduceSum and elementwise ops: no ReduceMax over the vocabulary (ONNX
    Runtime's CUDA ReduceMax over a 126k vocabulary took 8 ms per step on an H200; ArgMax's own
    kernel: 9 us), no softmax tensor kept. The second best is an ArgMax again after adding -inf at
    the first (a one-hot from comparing the token ids with the first's). ``exclude`` (from
    ``mask_exclusion``) and ``vocab_ids`` ([V] int64, 0..V-1) can be passed in, so a traced graph holds
    them as constants."""
    z = logits.float()
    if exclude is None:
        exclude = mask_exclusion(z.shape[-1], mask_token_id, z.device)
    if exclude is not None:
        z = z + exclude
    if vocab_ids is None:
        vocab_ids = torch.arange(z.shape[-1], device=z.device)
    tokens = z.argmax(dim=-1)
    top = z.gather(-1, tokens.unsqueeze(-1))
    d = z - top  # <= 0; -inf at the mask token
    e = torch.exp(d)
    total = e.sum(dim=-1)
    confidence = 1.0 / total
    # sum p log p = sum(e * d) / total - log(total); the clamp keeps 0 * -inf (the mask) at 0
    neg_entropy = (e * d.clamp(min=-1e4)).sum(dim=-1) / total - torch.log(total)
    # -inf at the top-1 token via a one-hot from the constant ids: elementwise, no shape arithmetic
    first = vocab_ids == tokens.unsqueeze(-1)
    second = (d.masked_fill(first, float("-inf"))).argmax(dim=-1)
    p2 = torch.exp(d.gather(-1, second.unsqueeze(-1)).squeeze(-1)) / total
    return RowSelection(tokens, confidence, confidence - p2, neg_entropy)


def select_top1(logits: torch.Tensor, mask_token_id: int,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token of each row and its softmax probability (``select_rows``'s first two)."""
    sel = select_rows(logits, mask_token_id, exclude)
    return sel.tokens, sel.confidence


# Activations by their config.json names (transformers' ACT2FN keys; LLaDA's activation_type).
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def swiglu(x: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act: str = "silu") -> torch.Tensor:
    """down(act(gate(x)) * up(x)); ``act`` names the activation (SiLU for every published checkpoint)."""
    return down(ACTIVATIONS[act](gate(x)) * up(x))
