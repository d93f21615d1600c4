"""LLaDA (GSAI-ML/LLaDA-8B-Instruct layout): bidirectional LLaMA-style transformer.

Parameter names follow the upstream checkpoint exactly, so ``model.safetensors`` from the
hub loads unchanged: ``model.transformer.wte``, ``model.transformer.blocks.{i}.{q_proj,
k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out,attn_norm,ff_norm}``, ``model.transformer.ln_f``
and ``model.transformer.ff_out`` (the LM head, absent when ``weight_tying``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import RMSNorm, SelfAttention, gather_rows, rope_cos_sin, swiglu


class LLaDABlock(SelfAttention):
    """One LLaDA block; q/k/v/attn_out live directly on the block, as upstream."""

    def __init__(self, c: ModelConfig):
        super().__init__(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.qkv_bias, out_name="attn_out")
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.ff_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.ff_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)  # gate (SiLU side)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.ff_out = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, past_k, past_v, attention_bias):
        h, k, v = super().forward(self.attn_norm(x), cos, sin, past_k, past_v, attention_bias)
        x = x + h
        x = x + swiglu(self.ff_norm(x), self.ff_proj, self.up_proj, self.ff_out)
        return x, k, v


class LLaDAModel(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        t = nn.Module()
        t.wte = nn.Embedding(c.embedding_size, c.hidden_size)
        t.blocks = nn.ModuleList(LLaDABlock(c) for _ in range(c.num_layers))
        t.ln_f = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if not c.tie_word_embeddings:
            t.ff_out = nn.Linear(c.hidden_size, c.embedding_size, bias=False)
        self.model = nn.Module()
        self.model.transformer = t

    @property
    def layers(self):
        return self.model.transformer.blocks

    def forward(self, input_ids, position_ids, attention_bias, past_key_values=None, logits_index=None):
        """Returns logits [B, L, V] (or [B, R, V] of the rows in ``logits_index``) and, per layer,
        (key, value) of the current tokens [B, Hkv, L, D]."""
        t = self.model.transformer
        x = t.wte(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        presents = []
        for i, block in enumerate(t.blocks):
            pk, pv = past_key_values[i] if past_key_values is not None else (None, None)
            x, k, v = block(x, cos, sin, pk, pv, attention_bias)
            presents.append((k, v))
        x = t.ln_f(gather_rows(x, logits_index))
        head = t.wte.weight if self.config.tie_word_embeddings else t.ff_out.weight
        logits = torch.matmul(x, head.t())
        if logits.shape[-1] != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits, presents
