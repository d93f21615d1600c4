"""Is a built engine intact and loadable here?  ``dllm-trt check-engine``, and the runtime's pre-load check.

Without a GPU neither API can deserialize an engine, and ``Runtime.get_engine_validity``
(TensorRT-RTX) answers only "malformed or not" there: it checks the magic, then needs the GPU's
properties for the rest (measured with TensorRT-RTX 1.7.1 on a CPU-only machine: a good engine
reads ``INVALID`` with no diagnostic bit and a fatal log line "Error reading CUDA GPU
properties"; a file with a wrong magic reads ``INVALID, MALFORMED_ENGINE``). So on CI the check is:

  record     dllm_config.json's ``engine`` record is there and names the file
  size       the file has the recorded size (catches truncation)
  sha256     the file has the recorded SHA-256 (catches any corruption)
  header     TensorRT-RTX only: magic ``vtrt``, the plan size in the header equals the file size,
             the TensorRT-RTX version in the header, and the compute-capability mask (layout
             observed in TensorRT-RTX 1.7 engines, not a documented format: bytes 0-3 magic,
             16-23 plan size (u64 LE), 24-27 version major.minor.patch.build, 32-35 target mask)
  version    the installed TensorRT(-RTX) is the one that built the engine
  validity   ``get_engine_validity``: malformed or not (no GPU); VALID / SUBOPTIMAL / INVALID with its
             diagnostics (GPU)
  load       with a GPU: deserialize the engine and list its I/O tensors
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from ..contract import file_sha256  # noqa: F401  (re-exported: the builder and tests use it from here)
from ..errors import DllmError

ENGINE_FILE = "model.engine"
BUILD_LOG = "build.log"
RTX_CC_BITS = ["7.5", "8.0", "8.6", "8.9", "12.0", "12.1"]  # bit i of the header's target mask (observed)




def parse_rtx_header(head: bytes) -> dict[str, Any] | None:
    """The fields of a TensorRT-RTX plan header (observed layout, see the module docstring); None if no magic."""
    if len(head) < 36 or head[:4] != b"vtrt":
        return None
    (size,) = struct.unpack_from("<Q", head, 16)
    version = ".".join(str(b) for b in head[24:28])
    (mask,) = struct.unpack_from("<I", head, 32)
    targets = [cc for i, cc in enumerate(RTX_CC_BITS) if mask >> i & 1]
    other = mask >> len(RTX_CC_BITS)
    # TensorRT-RTX 1.7's default target set has bit 6 too: a target its Python enum does not name. It is
    # kept apart: it is not a compute capability, and printing it as one ("bit6") misleads.
    unnamed = [len(RTX_CC_BITS) + i for i in range(other.bit_length()) if other >> i & 1]
    return {"magic": "vtrt", "plan_bytes": size, "version": version, "target_mask": mask, "targets": targets,
            "unnamed_target_bits": unnamed}


def describe_targets(header: dict[str, Any]) -> str:
    """``8.9, 12.0`` (+ a note on mask bits TensorRT-RTX does not name)."""
    text = ", ".join(header["targets"]) or "none named"
    bits = header.get("unnamed_target_bits") or []
    if bits:
        text += f" (and {len(bits)} target(s) TensorRT-RTX does not name: mask bit {', '.join(map(str, bits))})"
    return text


def _version4(v: str) -> str:
    return ".".join(v.split(".")[:4])


def check_engine(folder: str | Path, use_gpu: bool = True, device_id: int = 0,
                 raise_on_error: bool = True) -> dict[str, Any]:
    """Check the engine of a ``dllm-trt build`` folder; returns a report (and raises DllmError when a check fails)."""
    from ..contract import CONFIG_FILE, read_artifact_config
    from . import api as api_mod
    from .gpu import gpu_info, no_gpu_reason

    folder = Path(folder)
    meta = read_artifact_config(folder)
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    rec = meta.get("engine")
    if not isinstance(rec, dict):
        raise DllmError(f"{folder / CONFIG_FILE} has no engine record: {folder} is not a `dllm-trt build` folder "
                        f"(an export: build an engine from it with `dllm-trt build --onnx {folder} --out ENGINE_DIR`)")
    path = folder / rec.get("file", ENGINE_FILE)
    backend = rec.get("backend", "?")
    report: dict[str, Any] = {"folder": str(folder), "engine": str(path), "backend": backend,
                              "backend_version": rec.get("backend_version"), "checks": checks}
    if not path.is_file():
        add("record", False, f"{path.name} is missing")
    else:
        add("record", True, f"{path.name}, built by {backend} {rec.get('backend_version')}")
        size = path.stat().st_size
        report["bytes"] = size
        add("size", size == rec.get("bytes"), f"{size} bytes (recorded {rec.get('bytes')})")
        digest, want = file_sha256(path), rec.get("sha256")
        if not isinstance(want, str):  # nothing to compare with: the record itself was edited or cut short
            add("sha256", False, f"the engine record has no SHA-256 (it was edited); rebuild the folder with "
                                 "`dllm-trt build`")
        else:
            add("sha256", digest == want, "matches the record" if digest == want else
                f"{digest[:16]}... differs from the record {want[:16]}...: the file was changed or corrupted")
        with open(path, "rb") as f:
            head = f.read(64)
        if backend == "trt-rtx":
            h = parse_rtx_header(head)
            report["header"] = h
            if h is None:
                add("header", False, "no TensorRT-RTX magic 'vtrt' at the start: not a TensorRT-RTX engine, or corrupted")
            else:
                problems = []
                if h["plan_bytes"] != size:
                    problems.append(f"header says {h['plan_bytes']} bytes, file has {size} (truncated?)")
                if h["version"] != _version4(str(rec.get("backend_version"))):
                    problems.append(f"header version {h['version']} differs from the record {rec.get('backend_version')}")
                add("header", not problems, "; ".join(problems) or
                    f"vtrt, {h['plan_bytes']} bytes, TensorRT-RTX {h['version']}, targets {describe_targets(h)}")

    report["gpu"] = gpu = gpu_info(device_id) if use_gpu else None
    try:
        api = api_mod.load(backend)
    except DllmError as e:
        api = None
        add("version", None, f"not checked: {e}")
    if api is not None:
        same = _version4(api.version) == _version4(str(rec.get("backend_version")))
        add("version", same, f"{api.display} {api.version} installed" + (
            "" if same else f", engine built by {rec.get('backend_version')}: rebuild it with this version "
                            f"(`dllm-trt build --onnx {rec.get('source_onnx', 'ONNX_DIR')} --out {folder} --backend {backend}`)"))
        if path.is_file():
            logger = api.logger()
            runtime = api.mod.Runtime(logger)
            data = path.read_bytes()
            v = api.engine_validity(runtime, data)
            if v is None:
                add("validity", None, f"{api.display} {api.version} has no Runtime.get_engine_validity")
            else:
                validity, diag = v
                if gpu is None:
                    malformed = "MALFORMED_ENGINE" in diag
                    add("validity", False if malformed else None,
                        "MALFORMED_ENGINE" if malformed else
                        f"not malformed; the rest of get_engine_validity needs a GPU ({no_gpu_reason()})")
                else:
                    add("validity", validity in ("VALID", "SUBOPTIMAL"),
                        f"{validity}" + (f" ({', '.join(diag)})" if diag else "") + f" on {gpu['name']} (sm {gpu['compute_capability']})")
            if gpu is not None:
                engine = runtime.deserialize_cuda_engine(data)
                if engine is None:
                    add("load", False, "deserialize_cuda_engine failed: " + "; ".join(logger.errors[-3:]))
                else:
                    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
                    add("load", True, f"deserialized on {gpu['name']}: {len(names)} I/O tensors, "
                                      f"{engine.num_optimization_profiles} profile(s)")
                    del engine
            else:
                add("load", None, f"not run: deserializing needs a GPU ({no_gpu_reason()})")
    failed = [c for c in checks if c["ok"] is False]
    report["ok"] = not failed
    report["level"] = "gpu" if gpu is not None and api is not None else "file+header (no GPU)"
    if failed and raise_on_error:
        lines = "; ".join(f"{c['check']}: {c['detail']}" for c in failed)
        raise DllmError(f"engine check of {path} failed: {lines}")
    return report
