"""Checkpoint-compatible PyTorch definitions of LLaDA, Dream and block-diffusion models.

Each forward takes explicit ``input_ids``, ``position_ids``, an additive ``attention_bias``
[B, 1, L, P + L] and per-layer past (key, value) [B, Hkv, P, D], and returns logits plus the
(key, value) of the current tokens: no hidden caches, so the export is a plain graph.
"""
from .checkpoint import build_model, load_model, load_state_dict, save_model, torch_dtype
from .llada import LLaDAModel
from .qwen2 import Qwen2DiffusionModel

__all__ = ["build_model", "load_model", "load_state_dict", "save_model", "torch_dtype", "LLaDAModel",
           "Qwen2DiffusionModel"]
