"""The backend protocol's types and shared checks (see dllm_trt/runtime/backends/__init__.py).

A module of its own so that the backends import it without importing the package that loads them.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np


class StepOutput(NamedTuple):
    """What one forward returns for the rows the step reads."""

    tokens: np.ndarray  # [B, R] int64: top-1 token of each row, the mask token excluded
    confidence: np.ndarray  # [B, R] float32: its softmax probability
    logits: np.ndarray | None  # [B, R, V] float32, only when asked for (sampling)
    margin: np.ndarray | None = None  # [B, R] float32: top-1 minus top-2 probability (Dream's topk_margin)
    neg_entropy: np.ndarray | None = None  # [B, R] float32: sum p log p over the row (Dream's entropy)
    logit_gap: np.ndarray | None = None  # [B, R] float64: top-1 minus top-2 logit (only from a device sampler)
    raw_confidence: np.ndarray | None = None  # [B, R] float64: the drawn token's untempered probability (sampler)


class Backend(Protocol):
    config: Any

    def allocate_cache(self, batch: int, capacity: int) -> Any: ...

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None, logits_index: np.ndarray,
                want_logits: bool = False) -> StepOutput: ...


def check_forward_args(input_ids: np.ndarray, attention_bias: np.ndarray, cache: Any, past_len: int,
                       write_mask: np.ndarray | None, logits_index: np.ndarray) -> None:
    """The shape/cache preconditions every backend's forward shares; raises DllmError."""
    from ...errors import DllmError

    b, l = input_ids.shape
    if attention_bias.shape != (b, 1, l, past_len + l):
        raise DllmError(f"attention_bias has shape {attention_bias.shape}, expected {(b, 1, l, past_len + l)}")
    if (past_len > 0 or write_mask is not None) and cache is None:
        raise DllmError("a forward with past keys/values or writes needs a cache from allocate_cache()")
    if past_len not in (0, getattr(cache, "capacity", 0)):
        raise DllmError(f"past_len {past_len} must be 0 or the cache capacity {cache.capacity}: the whole cache is "
                        "the past (the bias masks what a step may not see)")
    if logits_index.ndim != 2 or logits_index.shape[0] != b or logits_index.shape[1] < 1:
        raise DllmError(f"logits_index has shape {logits_index.shape}, expected ({b}, R >= 1)")
    if logits_index.size and (logits_index.min() < 0 or logits_index.max() >= l):
        raise DllmError(f"logits_index reads rows outside the query window 0..{l - 1}")
