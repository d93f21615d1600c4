"""Backends run one forward of the exported (or PyTorch) model and own the KV cache storage.

The protocol every backend implements (the decode loop needs nothing else; the graph contract
behind it is dllm_trt/contract.py)::

    allocate_cache(batch, capacity) -> cache      (cache.capacity >= capacity: backends may round up)
    forward(input_ids [B, L] int64, position_ids [B, L] int64,
            attention_bias [B, 1, L, P + L] float32, cache, past_len P,
            write_mask [B, L] bool | None, logits_index [B, R] int64,
            want_logits: bool = False) -> StepOutput

``past_len`` is 0 (no past) or the cache's capacity: the whole cache is the past, the bias masks
what the step may not see, so a backend never slices or copies it. ``write_mask`` marks the
current tokens whose keys/values are written into the cache, in place, at their positions.
``logits_index`` names the query rows whose predictions the step reads; the backend returns
their top-1 tokens (the mask token excluded) and confidences, and their logits only when
``want_logits`` (sampling). Backends are imported lazily so that importing the runtime never
imports torch.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np


class StepOutput(NamedTuple):
    """What one forward returns for the rows the step reads."""

    tokens: np.ndarray  # [B, R] int64: top-1 token of each row, the mask token excluded
    confidence: np.ndarray  # [B, R] float32: its softmax probability
    logits: np.ndarray | None  # [B, R, V] float32, only when asked for (sampling)


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


def load_backend(name: str, model_dir: str, **kwargs: Any) -> Backend:
    """``torch`` (reference, needs torch), ``ort`` (ONNX Runtime, on an exported folder) or ``trt``
    (TensorRT / TensorRT-RTX, on a ``dllm-trt build`` folder; needs a GPU and cuda-python)."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend.from_pretrained(model_dir, **kwargs)
    if name in ("ort", "onnxruntime"):
        from .ort_backend import OrtBackend  # noqa: F401  (added by the export work)

        return OrtBackend.from_pretrained(model_dir, **kwargs)
    if name in ("trt", "tensorrt", "trt-rtx"):
        from .trt_backend import TrtBackend

        return TrtBackend.from_pretrained(model_dir, **kwargs)
    from ...errors import DllmError

    raise DllmError(f"unknown backend {name!r}; use torch, ort or trt")
