"""Alias of dllm_trt/runtime/backends/gpu.py (GPU discovery: name, compute capability).

It lives in the runtime because the TensorRT backend's preflight needs it, and the runtime
imports nothing from the engine builder. ``dllm_trt.engine.gpu`` is the same module object.
"""
import sys

from ..runtime.backends import gpu as _impl

sys.modules[__name__] = _impl
