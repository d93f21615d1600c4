"""The TensorRT backend: drives a ``dllm-trt build`` folder (TensorRT or TensorRT-RTX engine) on the GPU.

Same contract and semantics as the ONNX Runtime backend (dllm_trt/contract.py, ``ort_backend.py``):
the whole cache is the past, the graph returns the top-1 token and confidence of the rows in
``logits_index``, and the presents of the tokens in ``write_mask`` go into the cache in place.
Only numpy is imported at import time; TensorRT (or TensorRT-RTX) and cuda-python
(``cuda.bindings``, no torch) when a backend is opened.

Device memory
  cache      per layer (key, value) [B, Hkv, C, D] in the engine's K/V dtype, pooled per (B, C)
             (C rounded up to 64 positions) and bound directly as ``past_key_values.*``: no step
             copies or slices it. Zeroed when allocated, never uninitialised: stale positions are
             masked by the bias, but NaN garbage would survive the mask.
  presents   the engine writes [B, Hkv, L, D] into output buffers; the written tokens go into the
             cache at their positions with one kernel for all layers (cuda_device.scatter_kv).
  I/O        ids, positions, the row index and the bias go up (the bias only when it changed),
             B x R tokens and confidences come down; the rows' logits only when asked (sampling).
  Everything runs on one non-blocking stream; ``execute_async_v3``; one synchronisation per forward.

CUDA graphs (``cuda_graph``, default on; one context holding a graph per binding state, as TensorRT-Edge-LLM's
executor does): a step's shapes and tensor addresses are its bucket's key. The
first forward of a bucket runs ``execute_async_v3`` as is (TensorRT applies shape changes there); the
second captures it into a CUDA graph on the stream, and every later one replays that graph, without
setting shapes or addresses again. A bucket whose capture fails (an engine that synchronises inside its
enqueue, say) runs without a graph from then on, with one warning.

Past length 0: the profile's past-length minimum is 0 (TensorRT-RTX 1.7 builds it), and the
prefill binds a 0-length past (with a valid address). An engine whose profile's minimum past
length m > 0 (``--shapes P=1:...``) cannot run a prefill: the backend says to rebuild it.

Before loading, ``preflight`` checks what to rebuild: the TensorRT(-RTX) version that built the
engine, the GPU (TensorRT: the building GPU's compute capability; TensorRT-RTX: the targets and
``get_engine_validity``), the file size.

TODO: the TensorRT-RTX runtime cache (IRuntimeCache) to keep JIT-compiled kernels.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ModelConfig
from ...errors import DllmError
from ...contract import (CONFIG_FILE, config_from_artifact, input_names, output_names, past_names, present_names,
                         read_artifact_config)
from .base import StepOutput, check_forward_args
from .cuda_device import CudaDevice

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "fp8": 1,
            "bool": 1}
CAPACITY_ROUND = 64  # pooled caches are rounded up to this many positions
_UNTIMED = nullcontext()
_NO_GRAPH = object()  # a bucket whose capture failed: it runs without a graph


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
    """Per-layer (key, value) device pointers to [B, Hkv, capacity, D] storage."""

    def __init__(self, layers: list[list[int]], batch: int, capacity: int):
        self.layers, self.batch, self.capacity = layers, batch, capacity

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def flat(self) -> list[int]:
        return [p for layer in self.layers for p in layer]


class TrtBackend:
    """A TensorRT / TensorRT-RTX engine implementing the runtime's Backend protocol.

    ``timer`` (None unless profiling) times the cache writes; with it set the stream is
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
                 context: Any, dtype_of: Any, keepalive: tuple = (), cuda_graph: bool = True):
        self.folder, self.meta, self.config = Path(folder), meta, config
        self.engine_record = meta.get("engine") or {}
        self.device, self.engine, self.context = device, engine, context
        self._keepalive = keepalive  # runtime, logger, plugin handles: must outlive the engine
        n = config.num_layers
        self._inputs, self._outputs = input_names(n), output_names(n)
        self._past, self._present = past_names(n), present_names(n)
        self.kv_type = dtype_of(self._past[0])
        for name, want in (("input_ids", "int64"), ("position_ids", "int64"), ("attention_bias", "float32"),
                           ("logits_index", "int64"), ("tokens", "int64"), ("confidence", "float32"),
                           ("margin", "float32"), ("neg_entropy", "float32"), ("logits", "float32")):
            got = dtype_of(name)
            if got != want:
                raise DllmError(f"the engine's {name} is {got}, the graph contract says {want}; rebuild the engine")
        self.kv_size = ITEMSIZE[self.kv_type]
        ids_prof = [tuple(d) for d in engine.get_tensor_profile_shape("input_ids", 0)]
        past_prof = [tuple(d) for d in engine.get_tensor_profile_shape(self._past[0], 0)]
        self.batch_range = (ids_prof[0][0], ids_prof[2][0])
        self.query_range = (ids_prof[0][1], ids_prof[2][1])
        self.past_range = (past_prof[0][2], past_prof[2][2])
        ranges = meta.get("shape_ranges") or {}
        self.max_positions = int(ranges.get("max_positions") or config.max_position_embeddings)
        self._pool: dict[tuple[int, int], TrtCache] = {}
        dev = device
        self._ids, self._pos, self._bias, self._index, self._write_pos = (_Buffer(dev) for _ in range(5))
        self._tokens, self._confidence, self._logits = (_Buffer(dev) for _ in range(3))
        self._margin, self._neg_entropy = _Buffer(dev), _Buffer(dev)
        self._presents = [_Buffer(dev) for _ in self._present]
        self._last_bias: np.ndarray | None = None
        self._tables: dict[tuple[int, ...], tuple[int, int]] = {}
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, Any] = {}  # bucket key -> instantiated graph, None (seen once) or _NO_GRAPH
        self.graph_stats = {"captured": 0, "replayed": 0, "failed": 0}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device_id: int = 0, verify_sha256: bool = False,
                        cuda_graph: bool = True) -> "TrtBackend":
        """Open a ``dllm-trt build`` folder on GPU ``device_id`` after ``preflight``; ``cuda_graph``: capture each
        shape bucket's enqueue once and replay it."""
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

        return cls(folder, meta, config, device, engine, context, dtype_of, keepalive=(runtime, logger, plugins, api),
                   cuda_graph=cuda_graph)

    def close(self) -> None:
        """Release the context, the engine and the device memory (also at garbage collection)."""
        if self.device is not None:
            for graph in getattr(self, "_graphs", {}).values():
                if graph is not None and graph is not _NO_GRAPH:
                    self.device.destroy_graph(graph)
            self._graphs = {}
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
        top = self.past_range[1]
        if capacity > top:
            raise DllmError(self._rebuild(f"the cache needs {capacity} positions but the engine's profile allows a "
                                          f"past of at most {top}"))
        rounded = min(-(-capacity // CAPACITY_ROUND) * CAPACITY_ROUND, top)
        key = (batch, rounded)
        if key not in self._pool:
            c = self.config
            nbytes = batch * c.num_kv_heads * rounded * c.head_dim * self.kv_size
            layers = [[self.device.alloc(nbytes), self.device.alloc(nbytes)] for _ in range(c.num_layers)]
            for ptr in (p for layer in layers for p in layer):
                self.device.zero(ptr, nbytes)
            self._pool[key] = TrtCache(layers, batch, rounded)
        return self._pool[key]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None, logits_index: np.ndarray,
                want_logits: bool = False) -> StepOutput:
        b, l = input_ids.shape
        check_forward_args(input_ids, attention_bias, cache, past_len, write_mask, logits_index)
        r = logits_index.shape[1]
        for what, v, (lo, hi) in (("batch", b, self.batch_range), ("query length", l, self.query_range),
                                  ("past length", past_len, self.past_range)):
            if not lo <= v <= hi:
                raise DllmError(self._rebuild(f"{what} {v} is outside the engine's range {lo}..{hi}"))
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        bias = np.ascontiguousarray(attention_bias, dtype=np.float32)
        index = np.ascontiguousarray(logits_index, dtype=np.int64)
        dev, ctx = self.device, self.context
        if hasattr(dev, "make_current"):
            dev.make_current()
        c = self.config
        h, d, es = c.num_kv_heads, c.head_dim, self.kv_size

        dev.htod(self._ids.ensure(ids.nbytes), ids)
        dev.htod(self._pos.ensure(pos.nbytes), pos)
        dev.htod(self._index.ensure(index.nbytes), index)
        if self._last_bias is not bias and (self._last_bias is None or not np.array_equal(self._last_bias, bias)):
            dev.htod(self._bias.ensure(bias.nbytes), bias)  # once per block in the dual / sub-block modes
            self._last_bias = bias
        shapes = {"input_ids": (b, l), "position_ids": (b, l), "attention_bias": (b, 1, l, past_len + l),
                  "logits_index": (b, r)}
        addrs = {"input_ids": self._ids.ptr, "position_ids": self._pos.ptr, "attention_bias": self._bias.ptr,
                 "logits_index": self._index.ptr}
        past = cache.flat() if past_len else [self._ids.ptr] * len(self._past)  # a 0-length past needs an address
        for name, ptr in zip(self._past, past):
            shapes[name] = (b, h, past_len, d)
            addrs[name] = ptr
        addrs["tokens"] = self._tokens.ensure(b * r * 8)
        addrs["confidence"] = self._confidence.ensure(b * r * 4)
        addrs["margin"] = self._margin.ensure(b * r * 4)
        addrs["neg_entropy"] = self._neg_entropy.ensure(b * r * 4)
        addrs["logits"] = self._logits.ensure(b * r * c.vocab_size * 4)
        for name, buf in zip(self._present, self._presents):
            addrs[name] = buf.ensure(b * h * l * d * es)
        self._enqueue(shapes, addrs)
        tokens, confidence = np.empty((b, r), np.int64), np.empty((b, r), np.float32)
        dev.dtoh(tokens, self._tokens.ptr)
        dev.dtoh(confidence, self._confidence.ptr)
        margin, neg_entropy = np.empty((b, r), np.float32), np.empty((b, r), np.float32)
        dev.dtoh(margin, self._margin.ptr)
        dev.dtoh(neg_entropy, self._neg_entropy.ptr)
        logits = None
        if want_logits:
            logits = np.empty((b, r, c.vocab_size), np.float32)
            dev.dtoh(logits, self._logits.ptr)
        if write_mask is not None and write_mask.any():
            with self._timed("cache_write"):
                self._write(cache, np.where(write_mask, pos, -1), l)
        dev.sync()
        return StepOutput(tokens, confidence, logits, margin, neg_entropy)

    def _enqueue(self, shapes: dict[str, tuple], addrs: dict[str, int]) -> None:
        """The engine's work for these shapes and addresses, queued on the stream: a replayed CUDA graph when
        this bucket has one, else set every shape and address and ``execute_async_v3`` (capturing it the
        second time the bucket comes)."""
        dev, ctx = self.device, self.context
        key = (tuple(shapes.items()), tuple(addrs.items())) if self.cuda_graph else None
        graph = self._graphs.get(key) if key is not None else _NO_GRAPH
        if graph is not None and graph is not _NO_GRAPH:
            dev.launch_graph(graph)
            self.graph_stats["replayed"] += 1
            return
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise DllmError(f"the engine rejected input {name} with shape {shape}")
        for name, ptr in addrs.items():
            if not ctx.set_tensor_address(name, ptr):
                raise DllmError(f"the engine rejected the address of {name}")
        if key is not None and key in self._graphs:  # second time: capture (the first applied the shapes)
            graph = None
            try:
                capturable = getattr(ctx, "is_stream_capturable", None)  # TensorRT 10 / TensorRT-RTX's own answer
                if capturable is not None and not capturable(dev.stream_handle):
                    raise DllmError("the execution context says its enqueue cannot be stream-captured")
                dev.begin_capture()
                try:
                    ok = ctx.execute_async_v3(dev.stream_handle)
                finally:
                    graph = dev.end_capture()
                if not ok:
                    raise DllmError("execute_async_v3 failed while captured")
            except Exception as e:  # the engine cannot be captured: run it as is from now on
                if graph is not None:
                    dev.destroy_graph(graph)
                self._graphs[key] = _NO_GRAPH
                self.graph_stats["failed"] += 1
                if self.graph_stats["failed"] == 1:
                    warnings.warn(f"TensorRT: a CUDA graph of this step could not be captured ({e}); it runs "
                                  "without one", RuntimeWarning, stacklevel=3)
            else:
                self._graphs[key] = graph
                self.graph_stats["captured"] += 1
                dev.launch_graph(graph)
                return
        elif key is not None:
            self._graphs[key] = None
        if not ctx.execute_async_v3(dev.stream_handle):
            raise DllmError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _write(self, cache: TrtCache, write_pos: np.ndarray, l: int) -> None:
        """The written tokens' keys/values into the cache at their positions: one kernel, all layers."""
        if write_pos.max() >= cache.capacity:
            raise DllmError(f"this forward writes cache position {int(write_pos.max())}, beyond the capacity "
                            f"{cache.capacity}")
        c, dev = self.config, self.device
        src = [buf.ptr for buf in self._presents]
        dst = cache.flat()
        key = tuple(src) + tuple(dst)
        if key not in self._tables:
            tables = (dev.alloc(8 * len(src)), dev.alloc(8 * len(dst)))
            dev.htod(tables[0], np.array(src, np.uint64))
            dev.htod(tables[1], np.array(dst, np.uint64))
            dev.sync()
            self._tables[key] = tables
        dev.htod(self._write_pos.ensure(write_pos.nbytes), np.ascontiguousarray(write_pos, np.int64))
        b = write_pos.shape[0]
        dev.scatter_kv(*self._tables[key], len(src), self._write_pos.ptr, b, c.num_kv_heads, l, cache.capacity,
                       c.head_dim * self.kv_size)


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
    from ...contract import file_sha256
    from . import trt_api as api_mod
    from .gpu import cc_tuple, gpu_info, no_gpu_reason

    meta = read_artifact_config(folder)
    rec = meta.get("engine")
    if not isinstance(rec, dict):
        raise DllmError(f"{folder / CONFIG_FILE} has no engine record: {folder} is not a `dllm-trt build` folder; "
                        f"build one with `dllm-trt build --onnx {folder} --out ENGINE_DIR` (or run it with --backend ort)")
    config = config_from_artifact(meta, source=str(folder / CONFIG_FILE))
    if rec.get("plugin_graph") or meta.get("plugins"):
        raise DllmError(f"{folder} is an engine of a former `dllm-trt export --plugins` graph (caches in and out of "
                        "the graph), a contract this dllm-trt no longer has: re-export the checkpoint with "
                        "`dllm-trt export` and build the engine again")
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
    libs = [p for p in plugins if p != "dllm_trt.plugins.trt_plugins"]
    missing = [p for p in libs if not Path(p).is_file()]
    if missing:
        raise DllmError(f"the engine in {folder} uses plugin libraries that are missing here: {', '.join(missing)}")
    done = api.load_plugins(logger, libs) if libs else []
    if "dllm_trt.plugins.trt_plugins" in plugins:
        hook = _python_plugin_hook("dllm_trt.plugins.trt_plugins")
        if hook is None:
            raise DllmError(f"the engine in {folder} was built with dllm-trt's Python TensorRT plugins, which are not "
                            "available here (dllm_trt.plugins.trt_plugins.register_plugins)")
        hook(api.mod)
        done.append("dllm_trt.plugins.trt_plugins")
    return done


def _python_plugin_hook(module: str):
    """``register_plugins(trt_module)`` of the Python plugin module the engine record names, or None.
    Imported by name, at load time: the runtime has no static dependency on the plugins package."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, "register_plugins", None)
