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


def llada_norm(c: ModelConfig) -> RMSNorm:
    """LLaDA's norm: layer_norm_type, layer_norm_with_affine, bias_for_layer_norm (upstream's LayerNorm
    ("default") takes eps 1e-5, not rms_norm_eps)."""
    eps = 1e-5 if c.norm_type == "layer" else c.rms_norm_eps
    return RMSNorm(c.hidden_size, eps, affine=c.norm_affine, bias=c.norm_bias, kind=c.norm_type)


class LLaDABlock(SelfAttention):
    """One LLaDA block; q/k/v/attn_out live directly on the block, as upstream."""

    def __init__(self, c: ModelConfig):
        super().__init__(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.qkv_bias, out_name="attn_out",
                         out_bias=c.linear_bias)
        self.attn_norm = llada_norm(c)
        self.ff_norm = llada_norm(c)
        self.act = c.activation
        self.ff_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.linear_bias)  # gate (activation side)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.linear_bias)
        self.ff_out = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.linear_bias)

    def forward(self, x, cos, sin, past_k, past_v, attention_bias):
        h, k, v = super().forward(self.attn_norm(x), cos, sin, past_k, past_v, attention_bias)
        x = x + h
        x = x + swiglu(self.ff_norm(x), self.ff_proj, self.up_proj, self.ff_out, self.act)
        return x, k, v


class LLaDAModel(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        t = nn.Module()
        t.wte = nn.Embedding(c.embedding_size, c.hidden_size)
        t.blocks = nn.ModuleList(LLaDABlock(c) for _ in range(c.num_layers))
        t.ln_f = llada_norm(c)
        if not c.tie_word_embeddings:
            t.ff_out = nn.Linear(c.hidden_size, c.embedding_size, bias=c.linear_bias)
        self.model = nn.Module()
        self.model.transformer = t

    @property
    def layers(self):
        return self.model.transformer.blocks

    def forward(self, input_ids, position_ids, attention_bias, past_key_values=None, logits_index=None):
        """Returns logits [B, L, V] (or [B, R, V] of the rows in ``logits_index``) and, per layer,
        (key, value) of the current tokens [B, Hkv, L, D]."""
        t = self.model.transformer
        c = self.config
        x = t.wte(input_ids)
        if c.embedding_scale != 1.0:  # input_emb_norm
            x = x * c.embedding_scale
        # rope_full_precision: the rotation in fp32 (tables and q/k), rounded to the model dtype after
        rope_dtype = torch.float32 if c.rope_fp32 else x.dtype
        cos, sin = rope_cos_sin(position_ids, c.head_dim, c.rope_theta, rope_dtype)
        presents = []
        for i, block in enumerate(t.blocks):
            pk, pv = past_key_values[i] if past_key_values is not None else (None, None)
            x, k, v = block(x, cos, sin, pk, pv, attention_bias)
            presents.append((k, v))
        x = t.ln_f(gather_rows(x, logits_index))
        head = t.wte.weight if c.tie_word_embeddings else t.ff_out.weight
        logits = torch.matmul(x, head.t())
        if not c.tie_word_embeddings and t.ff_out.bias is not None:  # include_bias
            logits = logits + t.ff_out.bias
        if c.logits_scale != 1.0:  # scale_logits
            logits = logits * c.logits_scale
        if logits.shape[-1] != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits, presents
