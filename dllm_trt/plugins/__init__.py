"""Fused ops for the decode loop, each with four faces that compute the same function.

``ThresholdUnmask``          Fast-dLLM threshold unmasking at temperature 0 on the logits, in the
                             graph: per candidate row the top-1 token (never the mask token) and
                             its softmax probability, then per sequence every candidate above
                             the threshold and always the most confident one. No softmax tensor,
                             and the logits need not leave the device.
``SubBlockCacheAttention``   the current tokens' keys/values written into a preallocated
                             position-indexed cache at their positions (in place), then attention
                             of the current queries over the cache prefix with an additive bias
                             (the family's pattern: block-causal, bidirectional dual cache, ...).

Faces (docs/plugins.md):

  reference      numpy, the runtime's own semantics       threshold_unmask.py, subblock_cache.py
  ONNX fallback  standard ONNX ops only (runs anywhere)   onnx_fallback.py
  GPU kernels    Triton (imported lazily)                 triton_unmask.py, triton_cache.py
  TensorRT       IPluginV3 plugins, one code path for     trt_plugins.py (``register_plugins``)
                 ``tensorrt`` and ``tensorrt_rtx_bindings``

The export does not insert these nodes any more: the one graph contract (dllm_trt/contract.py)
selects the top-1 token and its confidence in standard ops, and the runtime writes the cache in
place (runtime/backends/cuda_device.py). The ops stay here as tested building blocks for engines
that want them fused (TensorRT plugins).

This package imports numpy only; onnx, torch, triton and TensorRT are imported where used.
"""
from __future__ import annotations

DOMAIN = "dllm_trt"  # ONNX domain of the custom nodes, and the TensorRT plugin namespace
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
THRESHOLD_UNMASK = "ThresholdUnmask"
SUBBLOCK_CACHE_ATTENTION = "SubBlockCacheAttention"

from .subblock_cache import cache_attention_bias, cache_write_positions, subblock_cache_attention  # noqa: E402
from .threshold_unmask import threshold_unmask  # noqa: E402

__all__ = ["DOMAIN", "DOMAIN_VERSION", "PLUGIN_VERSION", "THRESHOLD_UNMASK", "SUBBLOCK_CACHE_ATTENTION",
           "threshold_unmask", "subblock_cache_attention", "cache_attention_bias", "cache_write_positions"]
