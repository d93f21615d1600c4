"""Calibration and quantization for masked-diffusion LMs (``dllm-trt calibrate`` / ``dllm-trt quantize``).

- :func:`build_calibration` / :func:`save_calibration` / :func:`load_calibration`: calibration rows
  shaped like the runtime's forwards (prompt, partly masked answer, block layout of the strategy),
  stored as complete graph feeds in an ``.npz`` (numpy + tokenizers only; no torch).
- :func:`quantize`: an export folder -> INT4 weight-only (RTN or AWQ, ``MatMulNBits`` or blockwise
  QDQ), INT8 SmoothQuant QDQ, or FP8 QDQ (needs onnx and onnxruntime).

Imported lazily so that ``import dllm_trt.calibration`` costs nothing.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_calibration", "save_calibration", "load_calibration", "CalibrationSet", "quantize", "METHODS"]


def __getattr__(name: str) -> Any:
    if name in ("build_calibration", "save_calibration", "load_calibration", "CalibrationSet"):
        from . import data

        return getattr(data, name)
    if name in ("quantize", "METHODS"):
        from . import quantizer as q

        return getattr(q, name)
    raise AttributeError(name)
