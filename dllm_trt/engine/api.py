"""Alias of dllm_trt/runtime/backends/trt_api.py (the TensorRT / TensorRT-RTX API loader).

It lives in the runtime because the TensorRT backend loads engines with it, and the runtime
imports nothing from the engine builder; the builder builds on it. ``dllm_trt.engine.api`` is the
same module object (attributes set on one are seen through the other).
"""
import sys

from ..runtime.backends import trt_api as _impl

sys.modules[__name__] = _impl
