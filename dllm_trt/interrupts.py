"""SIGTERM as an exception, and the one-line messages for interruptions and missing extras.

The staging folders of export / quantize / build are removed by ``except BaseException`` blocks;
a plain SIGTERM would kill the process without running them, so the CLI turns it into
:class:`Terminated` (a KeyboardInterrupt) for the duration of a command.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

# module imported -> (extra of pyproject.toml, what it is for)
EXTRAS = {
    "torch": ("export", "exporting, `generate`, `calibrate` and `demo` need PyTorch"),
    "onnx": ("export", "exporting and quantizing need the onnx package"),
    "onnxscript": ("export", "exporting needs onnxscript"),
    "onnxruntime": ("ort", "running an export needs ONNX Runtime"),
    "ml_dtypes": ("quant", "quantizing needs ml_dtypes"),
    "threadpoolctl": ("quant", "quantizing needs threadpoolctl"),
    "matplotlib": ("profile", "`profile --plots` needs matplotlib"),
    "tensorrt_rtx": ("trt-rtx", "TensorRT-RTX builds need its Python bindings"),
    "triton": ("plugins", "the Triton kernels need triton"),
    "fastapi": ("serve", "`dllm-trt serve` needs FastAPI"),
    "uvicorn": ("serve", "`dllm-trt serve` needs uvicorn"),
    "openai": ("serve", "`dllm-trt serve` needs the openai package (its response types)"),
    "prometheus_client": ("serve", "`dllm-trt serve` needs prometheus_client (/metrics)"),
    "ray": ("serve", "`dllm-trt serve` with replicas needs Ray Serve"),
}
CPU_TORCH = 'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu'


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the main thread is, so ``finally`` / ``except BaseException`` blocks run."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGHUP too (the terminal or the ssh session closed): its default also kills without cleanup, leaving
    # a hidden staging folder and a lock beside the output
    hups = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, *hups)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def missing_module_message(name: str | None) -> str | None:
    """The install line for a module one of dllm-trt's extras provides; None for anything else."""
    top = (name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, why = EXTRAS[top]
    line = f"{why}, and {top} is not installed: pip install 'dllm-trt[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
    if top == "torch":
        line += f"; on a CPU-only machine first: {CPU_TORCH}"
    return line
