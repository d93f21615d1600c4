"""Peak memory: the host process's peak RSS, and device memory where the backend runs on a GPU."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys


def host_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``resource.getrusage``), in MiB."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _device_of(backend) -> tuple[str, int]:
    """("cuda", index) or ("cpu", 0) for the torch, ORT and TensorRT backends."""
    if getattr(backend, "engine_record", None) is not None:  # TensorRT: always on its GPU
        return "cuda", int(getattr(getattr(backend, "device", None), "device_id", 0) or 0)
    dev = getattr(backend, "device_type", None)  # ORT
    if dev is not None:
        return dev, int(getattr(backend, "device_id", 0) or 0)
    dev = str(getattr(backend, "device", "cpu"))  # torch
    if dev.startswith("cuda"):
        return "cuda", int(dev.split(":")[1]) if ":" in dev else 0
    return "cpu", 0


def reset_device_peak(backend) -> None:
    """Start a new peak window where the framework keeps one (torch's caching allocator)."""
    kind, index = _device_of(backend)
    if kind == "cuda" and type(backend).__name__ == "TorchBackend":
        import torch

        torch.cuda.reset_peak_memory_stats(index)


def _nvidia_smi(args: list[str]) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_memory(backend) -> dict:
    """Device memory of this process, or {"device": "cpu"} for host backends.

    torch: ``torch.cuda.max_memory_allocated`` since :func:`reset_device_peak` (exact peak of
    tensors) and ``max_memory_reserved``. ONNX Runtime: its CUDA arena grows and is not given back,
    so this process's GPU memory after the run (nvidia-smi, per process) is its peak; where the
    process is not listed (containers with their own process ids) the whole device's used memory.
    """
    kind, index = _device_of(backend)
    if kind != "cuda":
        return {"device": "cpu", "peak_mb": None, "source": None}
    if type(backend).__name__ == "TorchBackend":
        import torch

        return {"device": f"cuda:{index} {torch.cuda.get_device_name(index)}",
                "peak_mb": torch.cuda.max_memory_allocated(index) / 2**20,
                "reserved_peak_mb": torch.cuda.max_memory_reserved(index) / 2**20,
                "source": "torch.cuda.max_memory_allocated"}
    name = (_nvidia_smi(["--query-gpu=name", "--format=csv,noheader", f"--id={index}"]) or ["cuda"])[0]
    rows = _nvidia_smi(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits", f"--id={index}"])
    pid = os.getpid()
    for row in rows or []:
        parts = [p.strip() for p in row.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return {"device": f"cuda:{index} {name}", "peak_mb": float(parts[1]),
                    "source": "nvidia-smi process memory after the run (ORT arena, not shrunk: its peak)"}
    used = _nvidia_smi(["--query-gpu=memory.used", "--format=csv,noheader,nounits", f"--id={index}"])
    if used and used[0].isdigit():
        return {"device": f"cuda:{index} {name}", "peak_mb": float(used[0]),
                "source": "nvidia-smi memory.used of the whole device after the run (process not listed)"}
    return {"device": f"cuda:{index} {name}", "peak_mb": None, "source": "unavailable (no nvidia-smi)"}


def host_description() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) ... (2 cores)'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"
