"""Backends run one forward of the exported (or PyTorch) model and own the KV cache storage.

The protocol every backend implements (the decode loop needs nothing else)::

    allocate_cache(batch, capacity) -> cache
    forward(input_ids [B, L] int64, position_ids [B, L] int64,
            attention_bias [B, 1, L, P + L] float32, cache, past_len P,
            write_mask [B, L] bool | None) -> logits [B, L, V] float32 (numpy)

``past_len`` selects cache positions 0..P-1 as past keys/values; ``write_mask`` marks the
current tokens whose keys/values are written into the cache at their positions.
Backends are imported lazily so that importing the runtime never imports torch.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    config: Any

    def allocate_cache(self, batch: int, capacity: int) -> Any: ...

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None) -> np.ndarray: ...


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
