"""Qwen2/Qwen3-layout dLLMs: Dream (bidirectional, shifted logits) and block diffusion
(Fast-dLLM v2 on Qwen2, SDAR on Qwen3: block-causal attention).

Qwen3 (``config.qk_norm``, SDAR) differs from Qwen2 only in the attention: per-head RMSNorm
``self_attn.{q,k}_norm`` on q and k before RoPE, no q/k/v bias unless ``attention_bias`` (which
then also biases ``o_proj``), and ``head_dim`` given in config.json rather than hidden / heads.

Both families share the same weights layout (``model.embed_tokens``,
``model.layers.{i}.self_attn.{q,k,v}_proj`` with bias, ``o_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``). What differs, the attention pattern and the logit shift,
lives in the ``attention_bias`` the runtime passes and in how the runtime reads the logits.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import RMSNorm, SelfAttention, gather_rows, rope_cos_sin, swiglu


class Qwen2MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.act = c.activation  # hidden_act

    def forward(self, x):
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj, self.act)


class Qwen2Layer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.self_attn = SelfAttention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.qkv_bias, out_name="o_proj",
                                       qk_norm_eps=c.rms_norm_eps if c.qk_norm else None,
                                       out_bias=c.qk_norm and c.qkv_bias)
        self.mlp = Qwen2MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, past_k, past_v, attention_bias):
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, past_k, past_v, attention_bias)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Qwen2DiffusionModel(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.model.layers = nn.ModuleList(Qwen2Layer(c) for _ in range(c.num_layers))
        self.model.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    @property
    def layers(self):
        return self.model.layers

    def forward(self, input_ids, position_ids, attention_bias, past_key_values=None, logits_index=None):
        """Returns raw (unshifted) logits [B, L, V] (or [B, R, V] of the rows in ``logits_index``) and
        per-layer current (key, value) [B, Hkv, L, D]."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        presents = []
        for i, layer in enumerate(self.model.layers):
            pk, pv = past_key_values[i] if past_key_values is not None else (None, None)
            x, k, v = layer(x, cos, sin, pk, pv, attention_bias)
            presents.append((k, v))
        x = self.model.norm(gather_rows(x, logits_index))
        head = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return torch.matmul(x, head.t()), presents
