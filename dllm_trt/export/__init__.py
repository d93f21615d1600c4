"""Checkpoint folder -> ONNX artefact folder (``dllm-trt export``). Needs torch, onnx and onnxruntime.

Imported lazily: ``dllm_trt.export.cli`` registers the command without importing torch, so the
main CLI stays usable where only the runtime is installed.
"""
from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(name)
