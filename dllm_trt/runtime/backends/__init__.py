"""Backends run one forward of the exported (or PyTorch) model and own the KV cache storage.

The protocol every backend implements (the decode loop needs nothing else)::

    allocate_cache(batch, capacity) -> cache
    forward(input_ids [B, L] int64, position_ids [B, L] int64,
            attention_bias [B, 1, L, P + L] float32, cache, past_len P,
            write_mask [B, L] bool | None) -> logits [B, L, V] float32 (numpy)

``past_len`` selects cache positions 0..P-1 as past keys/values; ``write_mask`` marks the
current tokens whose keys/values are written into the cache at their positions.
Backends are imported lazily so that importing the runtime never imports torch.

Optional, for backends whose graph unmasks on the device (``dllm-trt export --plugins``)::

    fused_unmask: bool
    forward_threshold(input_ids, position_ids, attention_bias, cache, past_len, write_mask,
                      tokens [B, L] int64, candidates [B, L] bool, threshold float) -> UnmaskResult

The forward plus the ThresholdUnmask op on its logits (dllm_trt/plugins/threshold_unmask.py):
row r of tokens/candidates is logits row r. The decode loop uses it for the threshold strategy at
temperature 0, and then never sees the logits.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np


class UnmaskResult(NamedTuple):
    """Outputs of ThresholdUnmask for one forward."""

    new_tokens: np.ndarray  # [B, L] int64: tokens with the chosen rows filled
    num_unmasked: np.ndarray  # [B] int64
    confidence: np.ndarray  # [B, L] float32: top-1 probability of each candidate row (0 elsewhere)


class Backend(Protocol):
    config: Any

    def allocate_cache(self, batch: int, capacity: int) -> Any: ...

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None) -> np.ndarray: ...


def check_forward_args(input_ids: np.ndarray, attention_bias: np.ndarray, cache: Any, past_len: int,
                       write_mask: np.ndarray | None) -> None:
    """The shape/cache preconditions every backend's forward shares; raises DllmError."""
    from ...errors import DllmError

    b, l = input_ids.shape
    if attention_bias.shape != (b, 1, l, past_len + l):
        raise DllmError(f"attention_bias has shape {attention_bias.shape}, expected {(b, 1, l, past_len + l)}")
    if (past_len > 0 or write_mask is not None) and cache is None:
        raise DllmError("a forward with past keys/values or writes needs a cache from allocate_cache()")
    if cache is not None and past_len > cache.capacity:
        raise DllmError(f"past_len {past_len} is beyond the cache capacity {cache.capacity}")


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
