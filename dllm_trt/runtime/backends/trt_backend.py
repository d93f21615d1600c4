"""The TensorRT backend: drives a ``dllm-trt build`` folder (TensorRT or TensorRT-RTX engine) on the GPU.

Same semantics as the ONNX Runtime backend (``ort_backend.py``): ``forward`` passes the cache's
first ``P`` positions as the past and writes the presents of the tokens in ``write_mask`` into the
cache at their positions. Only numpy is imported at import time; TensorRT (or TensorRT-RTX) and
cuda-python (``cuda.bindings``, no torch) when a backend is opened.

Device memory
  cache      per layer (key, value) [B, Hkv, T, D] in the engine's K/V dtype, allocated once for
             the profile maximum (B = max batch, T = max past + max query length) at the first
             ``allocate_cache`` and zeroed (not freed) by later ones: one request at a time, as the
             decode loop runs them. Zeroed, never uninitialised: stale positions are masked by the
             bias, but NaN garbage would survive the mask.
  past       the engine wants each past input contiguous [B, Hkv, P, D]; ``cache[:, :, :P]`` is
             strided (row pitch T), so one 2-D device copy per layer and K/V gathers it into a
             staging buffer (the same copy ORT's ``cache_read`` graph makes). An in-engine KV-cache
             update (TensorRT's IKVCacheUpdateLayer, or the plugins work) would remove it.
  presents   the engine writes [B, Hkv, L, D] into output buffers; the tokens in ``write_mask`` are
             copied into the cache at their positions with one 2-D copy per run of consecutive
             tokens (and positions) per sequence, layer and K/V: Hkv rows of n*D elements.
  I/O        ids, positions and the bias go up, the logits come down; buffers grow on demand.
  Everything runs on one non-blocking stream; ``execute_async_v3``; one synchronisation per forward.

Past length 0: the profile's past-length minimum is 0 (TensorRT-RTX 1.7 builds it), and the
prefill binds a 0-length past (with a valid address). Should an engine be built with a minimum
past length m > 0 (``--shapes P=1:...``), a forward with P < m gets m - P zeroed, masked (-1e9)
dummy slots in front of its past, so the decode loop still works.

Before loading, ``preflight`` checks what to rebuild: the TensorRT(-RTX) version that built the
engine, the GPU (TensorRT: the building GPU's compute capability; TensorRT-RTX: the targets and
``get_engine_validity``), the file size.

TODO: CUDA graph capture of ``execute_async_v3`` where shapes repeat (every step of a block has
the same B, L, P in the sub-block / dual-cache modes); the TensorRT-RTX runtime cache
(IRuntimeCache) to keep JIT-compiled kernels between processes.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ModelConfig
from ...errors import DllmError
from . import check_forward_args
from .ort_backend import (CONFIG_FILE, config_from_artifact, input_names, output_names, past_names, present_names,
                          read_artifact_config)

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "fp8": 1,
            "bool": 1}
MASKED = -1e9  # the runtime's masked bias value (layout.attention_bias)
_UNTIMED = nullcontext()


def _import_cuda():
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        try:
            from cuda import cuda as cu  # cuda-python before 12.6 (same driver API)
        except ImportError as e:
            raise DllmError("the trt backend needs cuda-python for device memory: pip install cuda-bindings "
                            "(or: pip install -e \".[trt]\")") from e
    return cu


class CudaDevice:
    """The few driver-API calls the backend makes, checked, on one stream of one device (primary context)."""

    def __init__(self, device_id: int = 0):
        cu = self.cu = _import_cuda()
        try:
            self._check(cu.cuInit(0), "cuInit")
        except DllmError:
            raise
        except Exception as e:  # cuda.bindings raises when libcuda is absent
            raise DllmError(f"no CUDA driver here ({e}); the trt backend needs an NVIDIA GPU and its driver") from e
        self.device_id = device_id
        self.dev = self._check(cu.cuDeviceGet(device_id), f"cuDeviceGet({device_id})")
        self.ctx = self._check(cu.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self.make_current()
        self.stream = self._check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING.value), "cuStreamCreate")
        self.stream_handle = int(self.stream)
        self._live: set[int] = set()

    def _check(self, result: Any, what: str) -> Any:
        cu = self.cu
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != cu.CUresult.CUDA_SUCCESS:
            _, msg = cu.cuGetErrorString(err)
            msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
            raise DllmError(f"CUDA {what} failed: {getattr(err, 'name', err)} ({msg})")
        return rest[0] if len(rest) == 1 else rest

    def make_current(self) -> None:
        self._check(self.cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cu.cuMemAlloc(max(int(nbytes), 256)), f"cuMemAlloc({nbytes} bytes)"))
        self._live.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr in self._live:
            self._live.discard(ptr)
            self._check(self.cu.cuMemFree(ptr), "cuMemFree")

    def htod(self, ptr: int, array: np.ndarray) -> None:
        self._check(self.cu.cuMemcpyHtoDAsync(ptr, array.ctypes.data, array.nbytes, self.stream), "cuMemcpyHtoDAsync")

    def dtoh(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.cu.cuMemcpyDtoHAsync(array.ctypes.data, ptr, array.nbytes, self.stream), "cuMemcpyDtoHAsync")

    def copy2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        cu = self.cu
        p = cu.CUDA_MEMCPY2D()
        p.srcMemoryType = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE
        p.srcDevice = src
        p.srcPitch = src_pitch
        p.dstMemoryType = cu.CUmemorytype.CU_MEMORYTYPE_DEVICE
        p.dstDevice = dst
        p.dstPitch = dst_pitch
        p.WidthInBytes = width
        p.Height = height
        self._check(cu.cuMemcpy2DAsync(p, self.stream), "cuMemcpy2DAsync")

    def zero2d(self, ptr: int, pitch: int, width: int, height: int) -> None:
        self._check(self.cu.cuMemsetD2D8Async(ptr, pitch, 0, width, height, self.stream), "cuMemsetD2D8Async")

    def zero(self, ptr: int, nbytes: int) -> None:
        self._check(self.cu.cuMemsetD8Async(ptr, 0, nbytes, self.stream), "cuMemsetD8Async")

    def sync(self) -> None:
        self._check(self.cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self) -> None:
        cu = self.cu
        try:
            self.sync()
            for ptr in list(self._live):
                self.free(ptr)
            cu.cuStreamDestroy(self.stream)
            cu.cuDevicePrimaryCtxRelease(self.dev)
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass


class _Buffer:
    """A device buffer that grows (to the next power of two) when a forward needs more."""

    def __init__(self, device: Any, nbytes: int = 256):
        self.device, self.nbytes = device, max(int(nbytes), 256)
        self.ptr = device.alloc(self.nbytes)

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.device.sync()  # the old buffer may still be in use by queued work
            self.device.free(self.ptr)
            self.nbytes = 1 << (int(nbytes) - 1).bit_length()
            self.ptr = self.device.alloc(self.nbytes)
        return self.ptr


class TrtCache:
    """Per-layer (key, value) device pointers to [B, Hkv, pitch, D] storage; ``capacity`` <= ``pitch`` positions."""

    def __init__(self, layers: list[list[int]], batch: int, capacity: int, pitch: int):
        self.layers, self.batch, self.capacity, self.pitch = layers, batch, capacity, pitch

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def write_runs(write_mask: np.ndarray, pos: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(b, l0, p0, n): runs of consecutive written tokens whose positions are consecutive too."""
    runs = []
    for b in range(write_mask.shape[0]):
        ls = np.flatnonzero(write_mask[b])
        if ls.size == 0:
            continue
        ps = pos[b, ls]
        breaks = np.flatnonzero((np.diff(ls) != 1) | (np.diff(ps) != 1)) + 1
        for seg_l, seg_p in zip(np.split(ls, breaks), np.split(ps, breaks)):
            runs.append((b, int(seg_l[0]), int(seg_p[0]), int(seg_l.size)))
    return runs


class TrtBackend:
    """A TensorRT / TensorRT-RTX engine implementing the runtime's Backend protocol.

    ``timer`` (None unless profiling) times the cache reads and writes; with it set the stream is
    synchronised at the end of each section so that the wall-clock sections are real.
    """

    timer = None

    def _timed(self, section: str):
        if self.timer is None:
            return _UNTIMED
        return self._synced(self.timer.section(section))

    @contextmanager
    def _synced(self, section):
        with section:
            yield
            self.device.sync()

    def __init__(self, folder: str | Path, meta: dict[str, Any], config: ModelConfig, device: Any, engine: Any,
                 context: Any, dtype_of: Any, keepalive: tuple = ()):
        self.folder, self.meta, self.config = Path(folder), meta, config
        self.engine_record = meta.get("engine") or {}
        self.device, self.engine, self.context = device, engine, context
        self._keepalive = keepalive  # runtime, logger, plugin handles: must outlive the engine
        n = config.num_layers
        self._inputs, self._outputs = input_names(n), output_names(n)
        self._past, self._present = past_names(n), present_names(n)
        self.kv_type = dtype_of(self._past[0])
        for name, want in (("input_ids", "int64"), ("position_ids", "int64"), ("attention_bias", "float32"),
                           ("logits", "float32")):
            got = dtype_of(name)
            if got != want:
                raise DllmError(f"the engine's {name} is {got}, the graph contract says {want}; rebuild the engine")
        self.kv_size = ITEMSIZE[self.kv_type]
        ids_prof = [tuple(d) for d in engine.get_tensor_profile_shape("input_ids", 0)]
        past_prof = [tuple(d) for d in engine.get_tensor_profile_shape(self._past[0], 0)]
        self.batch_range = (ids_prof[0][0], ids_prof[2][0])
        self.query_range = (ids_prof[0][1], ids_prof[2][1])
        self.past_range = (past_prof[0][2], past_prof[2][2])
        self.max_cache = self.past_range[1] + self.query_range[1]
        ranges = meta.get("shape_ranges") or {}
        self.max_positions = int(ranges.get("max_positions") or config.max_position_embeddings)
        self._pool: list[list[int]] | None = None
        dev = device
        self._ids, self._pos, self._bias, self._logits = (_Buffer(dev) for _ in range(4))
        self._staging = [_Buffer(dev) for _ in self._past]
        self._presents = [_Buffer(dev) for _ in self._present]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device_id: int = 0, verify_sha256: bool = False) -> "TrtBackend":
        """Open a ``dllm-trt build`` folder on GPU ``device_id`` after ``preflight``."""
        folder = Path(folder)
        meta, config, api, gpu = preflight(folder, device_id, verify_sha256)
        rec = meta["engine"]
        device = CudaDevice(device_id)
        logger = api.logger()
        plugins = _register_plugins(api, logger, rec.get("plugins") or [], folder)
        runtime = api.mod.Runtime(logger)
        data = (folder / rec["file"]).read_bytes()
        engine = runtime.deserialize_cuda_engine(data)
        del data
        if engine is None:
            raise DllmError(f"{api.display} {api.version} could not deserialize {folder / rec['file']} on "
                            f"{gpu['name']}: {'; '.join(logger.errors[-3:]) or 'no error logged'}; rebuild it here: "
                            f"{rebuild_hint(folder, rec)}")
        context = engine.create_execution_context()
        if context is None:
            raise DllmError(f"could not create an execution context for {folder / rec['file']}: "
                            f"{'; '.join(logger.errors[-3:])} (out of GPU memory?)")

        def dtype_of(name: str) -> str:
            return api.dtype_name(engine.get_tensor_dtype(name))

        return cls(folder, meta, config, device, engine, context, dtype_of, keepalive=(runtime, logger, plugins, api))

    def close(self) -> None:
        """Release the context, the engine and the device memory (also at garbage collection)."""
        self.context = None
        self.engine = None
        if self.device is not None and hasattr(self.device, "close"):
            self.device.close()
        self.device = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ cache
    def _rebuild(self, what: str) -> str:
        return f"{what}; rebuild the engine with a larger --shapes range ({rebuild_hint(self.folder, self.engine_record)})"

    def allocate_cache(self, batch: int, capacity: int) -> TrtCache:
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise DllmError(self._rebuild(f"batch {batch} is outside the engine's batch range {lo}..{hi}"))
        if capacity > self.max_cache:
            raise DllmError(self._rebuild(f"the cache needs {capacity} positions but the engine's profile allows at "
                                          f"most {self.max_cache} (max past {self.past_range[1]} + max query "
                                          f"{self.query_range[1]})"))
        c = self.config
        row = self.max_cache * c.head_dim * self.kv_size
        if self._pool is None:  # once, for the profile maximum
            per = self.batch_range[1] * c.num_kv_heads * row
            self._pool = [[self.device.alloc(per), self.device.alloc(per)] for _ in range(c.num_layers)]
        for layer in self._pool:
            for ptr in layer:
                self.device.zero(ptr, batch * c.num_kv_heads * row)
        return TrtCache(self._pool, batch, capacity, self.max_cache)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None) -> np.ndarray:
        b, l = input_ids.shape
        check_forward_args(input_ids, attention_bias, cache, past_len, write_mask)
        limit = self.max_positions + ((self.config.block_size or 0) + 1 if self.config.block_size else 0)
        if past_len + l > limit:
            raise DllmError(f"this forward (past + query) needs {past_len + l} positions, but {self.folder} was exported "
                            f"for at most {self.max_positions} positions; shorten the prompt or gen_length")
        for what, v, (lo, hi) in (("batch", b, self.batch_range), ("query length", l, self.query_range)):
            if not lo <= v <= hi:
                raise DllmError(self._rebuild(f"{what} {v} is outside the engine's range {lo}..{hi}"))
        pad = max(0, self.past_range[0] - past_len)  # dummy masked slots when the profile's min past > P
        p_eff = past_len + pad
        if p_eff > self.past_range[1]:
            raise DllmError(self._rebuild(f"past length {past_len} is beyond the engine's maximum {self.past_range[1]}"))
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        bias = np.ascontiguousarray(attention_bias, dtype=np.float32)
        if pad:
            bias = np.ascontiguousarray(np.concatenate([np.full((b, 1, l, pad), MASKED, np.float32), bias], axis=3))
        dev, ctx = self.device, self.context
        if hasattr(dev, "make_current"):
            dev.make_current()
        c = self.config
        h, d, es = c.num_kv_heads, c.head_dim, self.kv_size

        dev.htod(self._ids.ensure(ids.nbytes), ids)
        dev.htod(self._pos.ensure(pos.nbytes), pos)
        dev.htod(self._bias.ensure(bias.nbytes), bias)
        with self._timed("cache_read"):
            past_ptrs = []
            for j, name in enumerate(self._past):
                buf = self._staging[j].ensure(b * h * p_eff * d * es)
                if pad:
                    dev.zero2d(buf, p_eff * d * es, pad * d * es, b * h)
                if past_len:
                    src = cache.layers[j // 2][j % 2]
                    dev.copy2d(buf + pad * d * es, p_eff * d * es, src, cache.pitch * d * es, past_len * d * es, b * h)
                past_ptrs.append(buf)
        shapes = {"input_ids": (b, l), "position_ids": (b, l), "attention_bias": (b, 1, l, p_eff + l)}
        addrs = {"input_ids": self._ids.ptr, "position_ids": self._pos.ptr, "attention_bias": self._bias.ptr}
        for name, ptr in zip(self._past, past_ptrs):
            shapes[name] = (b, h, p_eff, d)
            addrs[name] = ptr
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise DllmError(f"the engine rejected input {name} with shape {shape}")
        addrs["logits"] = self._logits.ensure(b * l * c.vocab_size * 4)
        for name, buf in zip(self._present, self._presents):
            addrs[name] = buf.ensure(b * h * l * d * es)
        for name, ptr in addrs.items():
            if not ctx.set_tensor_address(name, ptr):
                raise DllmError(f"the engine rejected the address of {name}")
        if not ctx.execute_async_v3(dev.stream_handle):
            raise DllmError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        logits = np.empty((b, l, c.vocab_size), np.float32)
        dev.dtoh(logits, self._logits.ptr)
        if write_mask is not None and write_mask.any():
            with self._timed("cache_write"):
                self._write(cache, pos, write_mask, l)
        dev.sync()
        return logits

    def _write(self, cache: TrtCache, pos: np.ndarray, write_mask: np.ndarray, l: int) -> None:
        c = self.config
        h, d, es = c.num_kv_heads, c.head_dim, self.kv_size
        runs = write_runs(np.asarray(write_mask, bool), pos)
        for _, _, p0, n in runs:
            if p0 < 0 or p0 + n > cache.capacity:
                raise DllmError(f"write positions {p0}..{p0 + n - 1} are outside the cache (capacity {cache.capacity})")
        for j, buf in enumerate(self._presents):
            dst_base = cache.layers[j // 2][j % 2]
            for bi, l0, p0, n in runs:
                src = buf.ptr + ((bi * h) * l + l0) * d * es
                dst = dst_base + ((bi * h) * cache.pitch + p0) * d * es
                self.device.copy2d(dst, cache.pitch * d * es, src, l * d * es, n * d * es, h)


# ---------------------------------------------------------------------- checks before loading
def rebuild_hint(folder: Path, rec: dict[str, Any]) -> str:
    src = rec.get("source_onnx", "ONNX_DIR")
    targets = rec.get("compute_capabilities")
    cc = f" --compute-capability {','.join(targets)}" if rec.get("backend") == "trt-rtx" and targets and \
        rec.get("compute_capability_source") == "--compute-capability" else ""
    return f"`dllm-trt build --onnx {src} --out {folder} --backend {rec.get('backend', 'trt')}" \
           f"{' --precision ' + rec['precision'] if rec.get('precision') else ''}{cc}`"


def preflight(folder: Path, device_id: int = 0, verify_sha256: bool = False):
    """Check that the engine can load here and say what to rebuild if not; returns (meta, config, api, gpu)."""
    from ...engine import api as api_mod
    from ...engine.check import file_sha256
    from ...engine.gpu import cc_tuple, gpu_info, no_gpu_reason

    meta = read_artifact_config(folder)
    rec = meta.get("engine")
    if not isinstance(rec, dict):
        raise DllmError(f"{folder / CONFIG_FILE} has no engine record: {folder} is not a `dllm-trt build` folder; "
                        f"build one with `dllm-trt build --onnx {folder} --out ENGINE_DIR` (or run it with --backend ort)")
    config = config_from_artifact(meta, source=str(folder / CONFIG_FILE))
    if rec.get("plugin_graph") or meta.get("plugins"):
        raise DllmError(f"{folder} is an engine of a `dllm-trt export --plugins` graph (caches in and out, in-graph "
                        "unmasking; dllm_trt/plugins/contract.py): this backend drives the past/present contract only "
                        "and does not run it yet; build an engine from a plain export for `dllm-trt run --backend trt`")
    path = folder / rec.get("file", "model.engine")
    if not path.is_file():
        raise DllmError(f"{path} is missing; rebuild it: {rebuild_hint(folder, rec)}")
    if path.stat().st_size != rec.get("bytes"):
        raise DllmError(f"{path} has {path.stat().st_size} bytes, the record says {rec.get('bytes')}: the engine is "
                        f"truncated or was replaced; rebuild it: {rebuild_hint(folder, rec)}")
    if verify_sha256 and file_sha256(path) != rec.get("sha256"):
        raise DllmError(f"{path} does not match its recorded SHA-256 (corrupted); rebuild it: {rebuild_hint(folder, rec)}")
    api = api_mod.load(rec.get("backend", "trt"))
    built, here = str(rec.get("backend_version")), api.version
    if built.split(".")[:4] != here.split(".")[:4]:
        raise DllmError(f"{path} was built by {api.display} {built}; this is {api.display} {here}, which cannot load "
                        f"engines of another version. Rebuild it with this version: {rebuild_hint(folder, rec)} "
                        f"(or install {api.display} {built})")
    gpu = gpu_info(device_id)
    if gpu is None:
        raise DllmError(f"the trt backend needs an NVIDIA GPU: {no_gpu_reason()}")
    cc = gpu["compute_capability"]
    if api.rtx:
        if cc not in api_mod.RTX_TARGETS:
            raise DllmError(f"this GPU ({gpu['name']}, compute capability {cc}) is not a TensorRT-RTX target "
                            f"(targets: {', '.join(api_mod.RTX_TARGETS)}); build a TensorRT engine here instead: "
                            f"`dllm-trt build --onnx {rec.get('source_onnx', 'ONNX_DIR')} --out DIR --backend trt`")
        explicit = rec.get("compute_capability_source") != "TensorRT-RTX default (from the engine header)"
        targets = [t for t in rec.get("compute_capabilities") or [] if not str(t).startswith("bit")]
        if explicit and targets and cc not in targets:
            raise DllmError(f"{path} was built for compute capability {', '.join(targets)}; this GPU ({gpu['name']}) is "
                            f"{cc}. Rebuild it for this GPU (or add {cc} to the list): "
                            f"`dllm-trt build --onnx {rec.get('source_onnx', 'ONNX_DIR')} --out {folder} --backend trt-rtx "
                            f"--precision {rec.get('precision')} --compute-capability {','.join(targets + [cc])}`")
        logger = api.logger()
        v = api.engine_validity(api.mod.Runtime(logger), path.read_bytes())
        if v is not None and v[0] == "INVALID":
            raise DllmError(f"{api.display} says {path} is not valid on {gpu['name']} (compute capability {cc}): "
                            f"{', '.join(v[1]) or 'no diagnostic'}; rebuild it: {rebuild_hint(folder, rec)}")
    else:
        built_gpu = rec.get("gpu") or {}
        if built_gpu.get("compute_capability") and built_gpu["compute_capability"] != cc:
            raise DllmError(f"{path} was built on {built_gpu.get('name', '?')} (compute capability "
                            f"{built_gpu['compute_capability']}); this GPU is {gpu['name']} ({cc}). TensorRT engines "
                            f"run on the GPU model they were built for: rebuild it here: {rebuild_hint(folder, rec)}")
    need = api.min_cc(rec.get("precision", ""))
    if need and cc_tuple(cc) < need:
        raise DllmError(f"{path} is {rec['precision']}, which needs compute capability {need[0]}.{need[1]}+; "
                        f"this GPU ({gpu['name']}) is {cc}")
    return meta, config, api, gpu


def _register_plugins(api: Any, logger: Any, plugins: list[str], folder: Path) -> list[str]:
    if not plugins:
        return []
    from ...engine.builder import python_plugin_hook

    libs = [p for p in plugins if p != "dllm_trt.plugins.trt_plugins"]
    missing = [p for p in libs if not Path(p).is_file()]
    if missing:
        raise DllmError(f"the engine in {folder} uses plugin libraries that are missing here: {', '.join(missing)}")
    done = api.load_plugins(logger, libs) if libs else []
    if "dllm_trt.plugins.trt_plugins" in plugins:
        hook = python_plugin_hook()
        if hook is None:
            raise DllmError(f"the engine in {folder} was built with dllm-trt's Python TensorRT plugins, which are not "
                            "available here (dllm_trt.plugins.trt_plugins.register_plugins)")
        hook(api.mod)
        done.append("dllm_trt.plugins.trt_plugins")
    return done
