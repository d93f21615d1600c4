"""What GPU is here, without torch: cuda-python's driver API, else ``nvidia-smi``; None when there is none."""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=8)
def gpu_info(device_id: int = 0) -> dict[str, Any] | None:
    """``{"name", "compute_capability": "8.9", "source"}`` of GPU ``device_id``, or None (no GPU / no driver)."""
    info = _from_cuda_bindings(device_id)
    if info is None:
        info = _from_nvidia_smi(device_id)
    return info


def no_gpu_reason() -> str:
    try:
        from cuda.bindings import driver
    except ImportError:
        how = "cuda-python (cuda.bindings) is not installed"
    else:
        try:
            (err,) = driver.cuInit(0)
            how = f"cuInit: {getattr(err, 'name', err)}" if err != driver.CUresult.CUDA_SUCCESS else "no CUDA device"
        except Exception:  # libcuda.so is not there
            how = "no NVIDIA driver (libcuda) is installed"
    smi = "nvidia-smi not found" if shutil.which("nvidia-smi") is None else "nvidia-smi lists no GPU"
    return f"no CUDA GPU here ({how}; {smi})"


def _from_cuda_bindings(device_id: int) -> dict[str, Any] | None:
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        return None
    try:  # cuInit raises (not returns) when libcuda is absent
        (err,) = cu.cuInit(0)
        if err != cu.CUresult.CUDA_SUCCESS:
            return None
        err, n = cu.cuDeviceGetCount()
        if err != cu.CUresult.CUDA_SUCCESS or device_id >= n:
            return None
        err, dev = cu.cuDeviceGet(device_id)
        attr = cu.CUdevice_attribute
        _, major = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        _, minor = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        _, name = cu.cuDeviceGetName(256, dev)
        _, driver = cu.cuDriverGetVersion()
    except Exception:
        return None
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return {"name": name, "compute_capability": f"{major}.{minor}", "cuda_driver": f"{driver // 1000}.{driver % 1000 // 10}",
            "source": "cuda.bindings"}


def _from_nvidia_smi(device_id: int) -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device_id}"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or "," not in out.stdout:
        return None
    name, cc = (s.strip() for s in out.stdout.strip().splitlines()[0].rsplit(",", 1))
    return {"name": name, "compute_capability": cc, "source": "nvidia-smi"}


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)
