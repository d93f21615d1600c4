"""TensorRT / TensorRT-RTX engines: ``dllm-trt build`` (``builder.build_engine``), the engine check
(``check.check_engine``) and the two Python APIs behind one interface (``api``). Nothing here imports
TensorRT until a function runs; the runtime backend is ``dllm_trt.runtime.backends.trt_backend``."""
from __future__ import annotations


def build_engine(*args, **kwargs):
    from .builder import build_engine as _build

    return _build(*args, **kwargs)


def check_engine(*args, **kwargs):
    from .check import check_engine as _check

    return _check(*args, **kwargs)


__all__ = ["build_engine", "check_engine"]
