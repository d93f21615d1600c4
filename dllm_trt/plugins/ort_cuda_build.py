"""Build ``libdllm_ort_cuda.so``: the project's CUDA ops for ONNX Runtime (plugins/ort_cuda_ops.cu).

An ``--ops ort-cuda`` export needs it at run time (``contract.cuda_ops_library`` finds it). Building needs
nvcc and ONNX Runtime's C/C++ API headers (``onnxruntime_cxx_api.h``: ORT's release archives, Debian's
``libonnxruntime-dev``, or a source checkout's ``include/onnxruntime/core/session``); pip wheels of
onnxruntime carry no headers. The headers fix only the C API version the library asks for (their
``ORT_API_VERSION``), so headers of an older ONNX Runtime than the one installed work.

    python -m dllm_trt.plugins.ort_cuda_build --out EXPORT_DIR/libdllm_ort_cuda.so [--ort-include DIR] [--arch sm_90]

The library is written to a temporary name and renamed, so a failed build leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import DllmError

SOURCE = Path(__file__).with_name("ort_cuda_ops.cu")
HEADER = "onnxruntime_cxx_api.h"
INCLUDE_ENV = "ORT_INCLUDE_DIR"
SEARCH = ("/usr/include/onnxruntime", "/usr/local/include/onnxruntime", "/usr/include/onnxruntime/core/session",
          "/usr/local/include/onnxruntime/core/session")


def find_headers(ort_include: str | None = None) -> Path:
    """The folder holding ``onnxruntime_cxx_api.h``: --ort-include, $ORT_INCLUDE_DIR, then the usual places."""
    tried = [ort_include] if ort_include else ([os.environ[INCLUDE_ENV]] if os.environ.get(INCLUDE_ENV) else [])
    tried = tried or list(SEARCH)
    for d in tried:
        if (Path(d) / HEADER).is_file():
            return Path(d)
    raise DllmError(f"ONNX Runtime's C/C++ headers ({HEADER}) are not in {', '.join(map(str, tried))}; pass "
                    f"--ort-include DIR (or set {INCLUDE_ENV}) to a folder holding them: the include/ folder of an "
                    "onnxruntime release archive, or Debian's libonnxruntime-dev (/usr/include/onnxruntime)")


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc") or next((str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.is_file()), None)
    if nvcc is None:
        raise DllmError("nvcc (the CUDA compiler) is not on PATH; install the CUDA toolkit (12.x or 13.x) to build "
                        "the CUDA ops")
    return nvcc


def gpu_arch() -> str:
    """sm_XY of GPU 0 (nvidia-smi), else sm_90."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        return "sm_" + out[0].replace(".", "")
    except (OSError, subprocess.SubprocessError, IndexError):
        return "sm_90"


def build_command(out: Path, include: Path, arch: str, nvcc: str) -> list[str]:
    # bf16 WMMA needs sm_80 or newer; the CUDA runtime is linked statically (no libcudart version to match)
    return [nvcc, "-O3", "-std=c++17", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", "-I", str(include),
            "-o", str(out), str(SOURCE)]


def build(out: str | Path, ort_include: str | None = None, arch: str | None = None, log=print) -> Path:
    """Compile the library to ``out`` (atomically); returns its path."""
    out = Path(out)
    include, nvcc = find_headers(ort_include), find_nvcc()
    arch = arch or gpu_arch()
    if not arch.startswith("sm_") or not arch[3:].isdigit() or int(arch[3:]) < 80:
        raise DllmError(f"--arch {arch}: the CUDA ops use bf16 tensor cores, which need sm_80 or newer (e.g. sm_90)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.building")
    cmd = build_command(tmp, include, arch, nvcc)
    log(" ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DllmError(f"nvcc failed ({result.returncode}):\n{result.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dllm_trt.plugins.ort_cuda_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="library to write (e.g. EXPORT_DIR/libdllm_ort_cuda.so)")
    p.add_argument("--ort-include", default=None, help=f"folder holding {HEADER} (default ${INCLUDE_ENV}, "
                                                        "/usr/include/onnxruntime, ...)")
    p.add_argument("--arch", default=None, help="GPU architecture, e.g. sm_90 (default: GPU 0's, else sm_90)")
    args = p.parse_args(argv)
    try:
        path = build(args.out, args.ort_include, args.arch)
    except DllmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
