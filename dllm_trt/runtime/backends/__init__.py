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

from typing import Any

from .base import Backend, StepOutput, check_forward_args

__all__ = ["Backend", "StepOutput", "check_forward_args", "load_backend"]


def load_backend(name: str, model_dir: str, **kwargs: Any) -> Backend:
    """``torch`` (reference, needs torch), ``ort`` (ONNX Runtime, on an exported folder) or ``trt``
    (TensorRT / TensorRT-RTX, on a ``dllm-trt build`` folder; needs a GPU and cuda-python)."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend.from_pretrained(model_dir, **kwargs)
    if name in ("ort", "onnxruntime"):
        from .ort_backend import OrtBackend

        return OrtBackend.from_pretrained(model_dir, **kwargs)
    if name in ("trt", "tensorrt", "trt-rtx"):
        from .trt_backend import TrtBackend

        return TrtBackend.from_pretrained(model_dir, **kwargs)
    from ...errors import DllmError

    raise DllmError(f"unknown backend {name!r}; use torch, ort or trt")
