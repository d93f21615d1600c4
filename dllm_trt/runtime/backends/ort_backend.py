"""The ONNX Runtime backend: drives an exported artefact folder with no model code and no torch.

The artefact (written by ``dllm-trt export``) is ``model.onnx`` (+ ``model.onnx.data``),
``dllm_config.json`` and the tokenizer files; the graph contract is dllm_trt/contract.py. This
module imports only numpy at import time, onnxruntime when a backend is opened, and cuda-python
on the CUDA path.

Two paths, one contract:
  host    (CPU provider) numpy caches [B, Hkv, C, D] passed whole as the past (ORT reads the
          numpy memory, no copy); the presents of written tokens are stored into them in place.
  bound   (CUDA provider; ``io_binding=True`` runs it on the CPU too, which the tests use) every
          tensor lives in preallocated memory: per shape bucket (B, L, P, R) the inputs, the
          outputs and one IO binding made once. A step's ids, positions, row index and write
          positions are bound by address in one block (one upload), its ``B x R`` row statistics
          in another (one download); the bias is uploaded only when it changed (once per block in
          the dual/sub-block modes). The caches are pooled per (B, C) and bound as the past
          directly (a view of the first rows by address, for the serving engine's busy slots); the
          written presents go into them with one device kernel (cuda_device.scatter_kv). With
          ``cuda_graph`` (default on CUDA) each bucket is captured once as a CUDA graph (ORT
          ``enable_cuda_graph``, one ``gpu_graph_id`` per bucket) and replayed. The session runs on
          the backend's CUDA stream (``user_compute_stream``, runs not synchronised by ORT), so a
          step is: upload, graph, cache write and download queued on one stream, one sync.
Sampling at temperature > 0 runs on the device too, on the bound path: the export's sampler graph
(``sampler.onnx``, and ``sampler_dream.onnx`` for Dream; export/sampler.py) reads the logits the step
left in its bucket (:meth:`OrtBackend.sample`). Logits leave the device only when the loop asks for
them (an export without a sampler, or the settings the sampler does not cover).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ModelConfig
from ... import contract
from ...contract import (CDF_CHUNK_KEY, CONFIG_FILE, DREAM_SAMPLER_FILE, KV_TYPES, MODEL_FILE,
                         NUCLEUS_SETTLED, RAW_CONFIDENCE, ROW_STATS, SAMPLER_FILE, SAMPLER_OUTPUTS, config_from_artifact,
                         cuda_ops_library, input_names, output_names, padded_vocab, past_names, present_names,
                         read_artifact_config)
from ...errors import DllmError
from ..sampling import NUCLEUS_PREFIX
from .base import StepOutput, check_forward_args

_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 travels as raw bits
_ONNX_ELEMENT_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16, "int64": 7}  # onnx.TensorProto values
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CAPACITY_ROUND = 64  # pooled device caches are rounded up to this many positions (fewer CUDA graphs)
_UNTIMED = nullcontext()


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise DllmError("the ort backend needs ONNX Runtime: pip install onnxruntime "
                        "(or onnxruntime-gpu for provider='cuda')") from e
    return ort


# ---------------------------------------------------------------------- memory of the bound path
class _Tensor:
    """One preallocated tensor: an OrtValue, its numpy mirror on the host path, its address on the GPU."""

    def __init__(self, value: Any, host: np.ndarray | None, ptr: int, shape: tuple[int, ...], dtype: Any):
        self.value, self.host, self.ptr, self.shape, self.dtype = value, host, ptr, shape, dtype


class _HostMemory:
    """The bound path on the CPU provider: OrtValues that share numpy memory (tests run the device path here)."""

    name = "cpu"

    def empty(self, shape: tuple[int, ...], elem: str) -> _Tensor:
        ort = _import_ort()
        arr = np.zeros(shape, _NUMPY_TYPES.get(elem, np.int64 if elem == "int64" else None))
        if elem == "bfloat16":
            value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr, _ONNX_ELEMENT_TYPES[elem])
        else:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
        return _Tensor(value, arr, value.data_ptr(), shape, arr.dtype)

    def upload(self, t: _Tensor, array: np.ndarray) -> None:
        t.host[...] = array

    def download(self, t: _Tensor) -> np.ndarray:
        return t.host.copy()

    def block(self, nbytes: int) -> "_Block":
        host = np.zeros(nbytes, np.uint8)  # the bound memory itself: staging and device are one
        return _Block(host, host.ctypes.data)

    def upload_block(self, blk: "_Block", nbytes: int) -> None:
        pass

    def download_block(self, blk: "_Block", nbytes: int) -> np.ndarray:
        return blk.host[:nbytes].copy()

    def scatter(self, presents: list[_Tensor], caches: list[_Tensor], pos: np.ndarray, pos_ptr: int) -> None:
        bi, li = np.nonzero(pos >= 0)
        pi = pos[bi, li]
        for src, dst in zip(presents, caches):
            dst.host[bi, :, pi] = src.host[bi, :, li]


class _CudaMemory:
    """The bound path on the CUDA provider: ORT allocates, cuda-python copies and runs the cache write kernel."""

    name = "cuda"

    def __init__(self, device_id: int, shares_stream: bool = False):
        from .cuda_device import CudaDevice

        self.device_id = device_id
        self.device = CudaDevice(device_id)
        # True when the session runs on this device's stream (user_compute_stream): runs are then not
        # synchronised by ONNX Runtime, and the step's download is what waits for them
        self.shares_stream = shares_stream
        self._tables: dict[tuple[int, ...], tuple[int, int]] = {}

    def empty(self, shape: tuple[int, ...], elem: str) -> _Tensor:
        ort = _import_ort()
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), _ONNX_ELEMENT_TYPES[elem] if elem == "bfloat16"
                                                          else np.dtype(_NUMPY_TYPES.get(elem, np.int64)),
                                                          "cuda", self.device_id)
        t = _Tensor(value, None, int(value.data_ptr()), shape, np.dtype(_NUMPY_TYPES.get(elem, np.int64)))
        # Zero-filled, never uninitialised: masked cache positions must not hold NaN (NaN * 0 is NaN).
        nbytes = int(np.prod(shape)) * t.dtype.itemsize
        if nbytes:
            self.device.zero(t.ptr, nbytes)
            self.device.sync()
        return t

    def upload(self, t: _Tensor, array: np.ndarray) -> None:
        self.device.htod_sync(t.ptr, np.ascontiguousarray(array, t.dtype))

    def download(self, t: _Tensor) -> np.ndarray:
        out = np.empty(t.shape, t.dtype)
        self.device.dtoh_sync(out, t.ptr)
        return out

    def block(self, nbytes: int) -> "_Block":
        ptr = self.device.alloc(nbytes)
        self.device.zero(ptr, nbytes)
        host = self.device.pinned(nbytes)[:nbytes]
        host[...] = 0
        self.device.sync()
        return _Block(host, ptr)

    def upload_block(self, blk: "_Block", nbytes: int) -> None:
        """Queued on the stream the session runs on (the host copy is not touched until the step's sync)."""
        self.device.htod(blk.ptr, blk.host[:nbytes])

    def download_block(self, blk: "_Block", nbytes: int) -> np.ndarray:
        """Queued behind everything on the stream, then the step's one sync."""
        self.device.dtoh(blk.host[:nbytes], blk.ptr)
        self.device.sync()
        return blk.host[:nbytes].copy()

    def scatter(self, presents: list[_Tensor], caches: list[_Tensor], pos: np.ndarray, pos_ptr: int) -> None:
        key = tuple(t.ptr for t in presents) + tuple(t.ptr for t in caches)
        if key not in self._tables:  # pointer tables: made once per (bucket, cache) pair
            src = np.array([t.ptr for t in presents], np.uint64)
            dst = np.array([t.ptr for t in caches], np.uint64)
            ptrs = (self.device.alloc(src.nbytes), self.device.alloc(dst.nbytes))
            self.device.htod_sync(ptrs[0], src)
            self.device.htod_sync(ptrs[1], dst)
            self._tables[key] = ptrs
        src_table, dst_table = self._tables[key]
        b, l = pos.shape  # pos_ptr: the positions, already on the device (uploaded with the step's inputs)
        _, heads, length, d = presents[0].shape
        capacity = caches[0].shape[2]
        self.device.scatter_kv(src_table, dst_table, len(presents), pos_ptr, b, heads, length, capacity,
                               d * presents[0].dtype.itemsize)  # queued: the step's download syncs


class _Block:
    """Small tensors that travel together: one upload (a step's ids, positions, row index and write
    positions) or one download (a step's row statistics) instead of one per tensor. ``host`` is the
    staging copy (on the CPU provider it is the bound memory itself), ``ptr`` the bound address."""

    def __init__(self, host: np.ndarray, ptr: int):
        self.host, self.ptr = host, ptr

    def view(self, offset: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.host[offset: offset + n].view(dtype).reshape(shape)


def _layout(parts: list[tuple[str, tuple[int, ...], Any]]) -> tuple[dict[str, tuple[int, tuple, Any]], int]:
    """Offsets of named tensors packed back to back (each 8-byte aligned); returns (name -> spec, total bytes)."""
    out, off = {}, 0
    for name, shape, dtype in parts:
        out[name] = (off, shape, np.dtype(dtype))
        off += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 8) * 8
    return out, off


def _unpack(raw: np.ndarray, layout: dict[str, tuple[int, tuple, Any]]) -> dict[str, np.ndarray]:
    """The named tensors of a downloaded block (views of ``raw``, laid out by _layout)."""
    return {name: raw[off: off + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
            for name, (off, shape, dtype) in layout.items()}


# ---------------------------------------------------------------------- caches and buckets
class OrtCache:
    """Per-layer (key, value) storage [B, Hkv, capacity, D]: numpy arrays (host path) or _Tensors (bound path)."""

    def __init__(self, layers: list[list[Any]], batch: int, capacity: int):
        self.layers = layers
        self.batch = batch
        self.capacity = capacity

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def flat(self) -> list[Any]:
        return [t for layer in self.layers for t in layer]


@dataclass
class _Bucket:
    """Everything one (B, L, P, R, cache) shape needs on the bound path, made once."""

    binding: Any
    graph_id: int  # gpu_graph_id of its CUDA graph (-1: none)
    run_options: Any  # ORT RunOptions naming that graph (None without CUDA graphs)
    bias: _Tensor
    logits: _Tensor  # [B, R, V]: written every step, downloaded only when asked, read by the sampler in place
    presents: list[_Tensor]
    in_block: _Block
    in_layout: dict[str, tuple[int, tuple, Any]]
    in_bytes: int
    out_block: _Block
    out_layout: dict[str, tuple[int, tuple, Any]]
    out_bytes: int
    last_bias: np.ndarray | None = None
    runs: int = 0
    sampler: Any = None  # per flavour (dream or not): [IO binding, uniform block, output block, layout, bytes, switches]


class OrtBackend:
    """One ONNX Runtime session over ``model.onnx``, implementing the runtime's Backend protocol.

    ``timer`` (None unless profiling; dllm_trt.profiling.StepTimer) times the in-place cache
    writes. ``forward`` returns when the device work is done: on the CUDA bound path the session
    runs on the backend's own stream and the step's upload, graph, cache write and row download
    queue there behind one sync (the cache-write section then times the launch only).
    """

    timer = None

    def _timed(self, section: str):
        return _UNTIMED if self.timer is None else self.timer.section(section)

    def __init__(self, artifact_dir: str | Path, meta: dict[str, Any], config: ModelConfig, session: Any,
                 device_type: str, device_id: int, io_binding: bool, cuda_graph: bool = False,
                 memory: Any = None):
        self.artifact_dir = Path(artifact_dir)
        self.meta, self.config, self.session = meta, config, session
        self.device_type, self.device_id, self.io_binding = device_type, device_id, io_binding
        self.cuda_graph = cuda_graph
        self.kv_type = KV_TYPES[meta["dtype"]]
        ranges = meta.get("shape_ranges") or {}
        self.max_positions = int(ranges.get("max_positions") or config.max_position_embeddings)
        # The decode loop keeps one spare block (+1) of room for block diffusion's last block.
        self.max_cache = self.max_positions + ((config.block_size or 0) + 1 if config.block_size else 0)
        n = config.num_layers
        self._inputs, self._outputs = input_names(n), output_names(n)
        self._past, self._present = past_names(n), present_names(n)
        self._memory: Any = memory
        if io_binding and memory is None:
            self._memory = _CudaMemory(device_id) if device_type == "cuda" else _HostMemory()
        self._buckets: dict[tuple, _Bucket] = {}
        self._caches: dict[tuple[int, int], OrtCache] = {}
        self._empty: dict[int, list[Any]] = {}
        self._last: _Bucket | None = None  # the bucket of the latest forward (its logits are what sample() reads)
        self.sampler = None  # the session of sampler.onnx (export/sampler.py) on the bound path, if the export has one
        self.dream_sampler = None  # sampler_dream.onnx: Dream's sample_tokens (filtered statistics, temperature 0 too)
        self.sampler_error: str | None = None  # why an export's sampler could not be opened (then: host sampling)

    @property
    def samples_on_device(self) -> bool:
        """Sampling at temperature > 0 runs on the device (:meth:`sample`): only B x R numbers come back."""
        return self.sampler is not None

    @property
    def samples_untempered(self) -> bool:
        """The sampler also returns LLaDA's confidence (raw_confidence; exports before it: host sampling)."""
        return self.sampler is not None and RAW_CONFIDENCE in {o.name for o in self.sampler.get_outputs()}

    @property
    def samples_dream_on_device(self) -> bool:
        """Dream's top-p / top-k sampling (and its filtered statistics at temperature 0) runs on the device."""
        return self.dream_sampler is not None

    @classmethod
    def from_pretrained(cls, artifact_dir: str | Path, provider: str = "cpu", device_id: int = 0,
                        intra_op_threads: int | None = None, io_binding: bool | None = None,
                        cuda_graph: bool | None = None,
                        provider_options: dict[str, Any] | None = None) -> "OrtBackend":
        """Open an export folder. ``provider``: ``cpu`` or ``cuda`` (or a full ORT provider name).

        ``io_binding`` defaults to True on CUDA (everything stays on the GPU) and False on CPU (plain
        numpy); forcing it on CPU runs the bound path on host memory, which tests use.
        ``cuda_graph`` (CUDA only, default True) captures each shape bucket once and replays it.
        """
        meta = read_artifact_config(artifact_dir)
        config = config_from_artifact(meta, source=str(Path(artifact_dir) / CONFIG_FILE))
        ort = _import_ort()
        # ORT's process-wide logger otherwise warns at every session start; errors still print.
        ort.set_default_logger_severity(3)
        ep = PROVIDERS.get(provider.lower(), provider)
        available = ort.get_available_providers()
        if ep not in available:
            if ep in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                how = "install the GPU build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
            else:
                how = f"install an onnxruntime build that includes {ep}"
            raise DllmError(f"ONNX Runtime {ort.__version__} here has no {ep} "
                            f"(available: {', '.join(available)}); {how}")
        on_device = ep != "CPUExecutionProvider"
        if meta["dtype"] == "bf16" and not on_device:
            raise DllmError(f"{artifact_dir} holds a bf16 graph and ONNX Runtime's CPU provider has no bf16 kernels; "
                            "run it with provider='cuda' (pip install onnxruntime-gpu), or export with --dtype fp32/fp16 for CPU")
        model_path = Path(artifact_dir) / meta.get("model_file", MODEL_FILE)
        if not model_path.is_file() and "engine" in meta:
            raise DllmError(f"{artifact_dir} is an engine folder (dllm-trt build): run it with --backend trt; "
                            "ONNX Runtime runs the export folder it was built from")
        if not model_path.is_file():
            raise DllmError(f"{model_path} is missing; the export is incomplete, re-export the model")
        io_binding = on_device if io_binding is None else bool(io_binding)
        device_type = "cuda" if ep == "CUDAExecutionProvider" else "cpu"
        if cuda_graph is None:
            cuda_graph = device_type == "cuda" and io_binding
        if cuda_graph and not (device_type == "cuda" and io_binding):
            raise DllmError("cuda_graph needs provider='cuda' with io_binding")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        if (meta.get("onnx") or {}).get("ops") == "ort-cuda":  # the project's CUDA ops (plugins/ort_cuda_ops.cu)
            if ep != "CUDAExecutionProvider":
                raise DllmError(f"{artifact_dir} was exported with --ops ort-cuda: its attention and MLP are the "
                                f"project's CUDA ops, which run only on ONNX Runtime's CUDA provider (not {ep}); "
                                "run it with provider='cuda' (--provider cuda), or export with --ops ort or standard")
            opts.register_custom_ops_library(str(cuda_ops_library(artifact_dir)))
        options = dict(provider_options or {})
        memory = None
        if ep == "CUDAExecutionProvider":
            options.setdefault("device_id", device_id)
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            if io_binding and "user_compute_stream" not in options:
                # The session runs on the backend's stream: a step's upload, graph, cache write and download
                # queue there behind one sync (runs are then not synchronised by ONNX Runtime itself).
                memory = _CudaMemory(device_id, shares_stream=True)
                options["user_compute_stream"] = str(memory.device.stream_handle)
        providers = [(ep, options)] + ([] if ep == "CPUExecutionProvider" else ["CPUExecutionProvider"])
        try:
            session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types
            hint = ""
            if (meta.get("onnx") or {}).get("ops") == "ort-cuda" and "dllm_trt.cuda" in str(e):
                hint = (f"; {cuda_ops_library(artifact_dir)} may predate an op of this export: rebuild it with "
                        "python -m dllm_trt.plugins.ort_cuda_build")
            raise DllmError(f"ONNX Runtime could not load {model_path} with {ep}"
                            f"{' and CUDA graphs (try cuda_graph=False)' if cuda_graph else ''}: {e}{hint}") from e
        if ep not in session.get_providers():
            raise DllmError(f"ONNX Runtime fell back from {ep} to {session.get_providers()} when loading {model_path}; "
                            "check that the CUDA/cuDNN libraries onnxruntime-gpu needs are installed")
        names = [i.name for i in session.get_inputs()]
        if names != input_names(config.num_layers):
            raise DllmError(f"{model_path} does not have the inputs of artefact format 2 ({names[:4]}...); re-export it")
        backend = cls(artifact_dir, meta, config, session, device_type, device_id, io_binding, cuda_graph, memory)
        for attr, name in (("sampler", SAMPLER_FILE), ("dream_sampler", DREAM_SAMPLER_FILE)):
            path = Path(artifact_dir) / name
            if not (io_binding and path.is_file()):
                continue
            sopts = ort.SessionOptions()
            sopts.log_severity_level = 3
            if intra_op_threads:
                sopts.intra_op_num_threads = int(intra_op_threads)
            if ep != "CPUExecutionProvider":  # every node on the device, or no sampler (a vocabulary-sized copy otherwise)
                sopts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            sampler_options = {k: v for k, v in options.items() if k != "enable_cuda_graph"}
            try:
                sampler = ort.InferenceSession(str(path), sess_options=sopts, providers=[(ep, sampler_options)])
                chunk = sampler.get_modelmeta().custom_metadata_map.get(CDF_CHUNK_KEY)
                if chunk != str(contract.CDF_CHUNK):  # its cumulated sums would not be runtime.sampling's
                    raise DllmError(f"made for other cumulated sums (CDF chunk {chunk}, this runtime's "
                                    f"{contract.CDF_CHUNK}); re-export to sample on the device")
                setattr(backend, attr, sampler)
            except Exception as e:  # e.g. a provider without float64 kernels for a node: sample on the host
                backend.sampler_error = f"{name} not usable with {ep}: {e}"
                warnings.warn(f"{backend.sampler_error}; sampling at temperature > 0 downloads the rows' logits "
                              "and samples on the host", RuntimeWarning, stacklevel=2)
        return backend

    # ------------------------------------------------------------------ cache
    def _check_len(self, needed: int, what: str) -> None:
        if needed > self.max_cache:
            raise DllmError(f"{what} needs {needed} positions, but {self.artifact_dir} was exported for at most "
                            f"{self.max_positions} positions (max_position_embeddings of the model); "
                            "shorten the prompt or gen_length")

    def allocate_cache(self, batch: int, capacity: int) -> OrtCache:
        self._check_len(capacity, "a prompt plus gen_length")
        c = self.config
        if not self.io_binding:
            shape = (batch, c.num_kv_heads, capacity, c.head_dim)
            kv = _NUMPY_TYPES[self.kv_type]
            return OrtCache([[np.zeros(shape, kv), np.zeros(shape, kv)] for _ in range(c.num_layers)], batch, capacity)
        # Bound path: pooled per (B, rounded C), so buckets (and their CUDA graphs) are reused across requests.
        # A pooled cache is not cleared: every position a step may see was written earlier in the same
        # request, and the rest is masked by the bias (the values stay finite: zeros or real keys/values).
        rounded = min(-(-capacity // CAPACITY_ROUND) * CAPACITY_ROUND, max(capacity, self.max_cache))
        key = (batch, rounded)
        if key not in self._caches:
            shape = (batch, c.num_kv_heads, rounded, c.head_dim)
            layers = [[self._memory.empty(shape, self.kv_type), self._memory.empty(shape, self.kv_type)]
                      for _ in range(c.num_layers)]
            self._caches[key] = OrtCache(layers, batch, rounded)
        return self._caches[key]

    def _empty_past(self, batch: int) -> list[Any]:
        if batch not in self._empty:
            c = self.config
            arr = np.zeros((batch, c.num_kv_heads, 0, c.head_dim), _NUMPY_TYPES[self.kv_type])
            if self.kv_type == "bfloat16":
                value = _import_ort().OrtValue.ortvalue_from_numpy_with_onnx_type(arr, _ONNX_ELEMENT_TYPES["bfloat16"])
                self._empty[batch] = [value] * (2 * c.num_layers)
            else:
                self._empty[batch] = [arr] * (2 * c.num_layers)
        return self._empty[batch]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None, logits_index: np.ndarray,
                want_logits: bool = False) -> StepOutput:
        b, l = input_ids.shape
        check_forward_args(input_ids, attention_bias, cache, past_len, write_mask, logits_index)
        self._check_len(past_len + l if past_len == 0 else past_len, "this forward (past + query)")
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        bias = np.ascontiguousarray(attention_bias, dtype=np.float32)
        index = np.ascontiguousarray(logits_index, dtype=np.int64)
        write_pos = None
        if write_mask is not None and write_mask.any():
            write_pos = np.where(write_mask, pos, -1)
            if write_pos.max() >= cache.capacity:
                raise DllmError(f"this forward writes cache position {int(write_pos.max())}, beyond the capacity "
                                f"{cache.capacity}")
        if self.io_binding:
            return self._forward_bound(ids, pos, bias, cache, past_len, write_pos, index, want_logits)
        return self._forward_host(ids, pos, bias, cache, past_len, write_pos, index, want_logits)

    def _forward_host(self, ids, pos, bias, cache, past_len, write_pos, index, want_logits) -> StepOutput:
        feeds = {"input_ids": ids, "position_ids": pos, "attention_bias": bias, "logits_index": index}
        past = cache.flat() if past_len > 0 else self._empty_past(ids.shape[0])
        feeds.update(zip(self._past, past))
        wanted = list(ROW_STATS) + (["logits"] if want_logits else []) + \
            (self._present if write_pos is not None else [])
        out = dict(zip(wanted, self.session.run(wanted, feeds)))
        if write_pos is not None:
            with self._timed("cache_write"):
                bi, li = np.nonzero(write_pos >= 0)
                pi = write_pos[bi, li]
                for name, dst in zip(self._present, cache.flat()):
                    dst[bi, :, pi] = out[name][bi, :, li]
        return StepOutput(out["tokens"], out["confidence"], out.get("logits"), out["margin"], out["neg_entropy"])

    def _bucket(self, b: int, l: int, p: int, r: int, cache: OrtCache | None) -> _Bucket:
        # a view of a pooled cache's first rows (the serving engine's, fewer busy slots) shares its tensors: the
        # bucket is keyed by those, and binds the view's rows by address
        key = (b, l, p, r, id(cache.layers) if p else None)
        bucket = self._buckets.get(key)
        if bucket is not None:
            return bucket
        c, mem = self.config, self._memory
        # the step's small inputs in one block (one upload), its row statistics in another (one download)
        in_layout, in_bytes = _layout([("input_ids", (b, l), np.int64), ("position_ids", (b, l), np.int64),
                                       ("logits_index", (b, r), np.int64), ("write_pos", (b, l), np.int64)])
        out_layout, out_bytes = _layout([("tokens", (b, r), np.int64), ("confidence", (b, r), np.float32),
                                         ("margin", (b, r), np.float32), ("neg_entropy", (b, r), np.float32)])
        in_block, out_block = mem.block(in_bytes), mem.block(out_bytes)
        bias = mem.empty((b, 1, l, p + l), "float32")
        logits = mem.empty((b, r, c.vocab_size), "float32")
        presents = [mem.empty((b, c.num_kv_heads, l, c.head_dim), self.kv_type) for _ in self._present]
        io = self.session.io_binding()
        where = (mem.name, self.device_id if mem.name == "cuda" else 0)
        for name in ("input_ids", "position_ids", "logits_index"):
            off, shape, dtype = in_layout[name]
            io.bind_input(name, *where, dtype, list(shape), in_block.ptr + off)
        io.bind_ortvalue_input("attention_bias", bias.value)
        if p:
            for name, t in zip(self._past, cache.flat()):
                if b == t.shape[0]:
                    io.bind_ortvalue_input(name, t.value)
                else:  # batch is the leading dimension: rows 0..b-1 start at the tensor's address
                    io.bind_input(name, *where, _ONNX_ELEMENT_TYPES[self.kv_type] if self.kv_type == "bfloat16"
                                  else t.dtype, [b] + list(t.shape[1:]), t.ptr)
        else:
            for name, value in zip(self._past, self._empty_past_bound(b)):
                io.bind_ortvalue_input(name, value)
        for name, (off, shape, dtype) in out_layout.items():
            io.bind_output(name, *where, dtype, list(shape), out_block.ptr + off)
        io.bind_ortvalue_output("logits", logits.value)
        for name, t in zip(self._present, presents):
            io.bind_ortvalue_output(name, t.value)
        graph_id = len(self._buckets) if self.cuda_graph else -1
        run_options = None
        if mem.name == "cuda":
            run_options = _import_ort().RunOptions()
            if graph_id >= 0:  # which CUDA graph this bucket captures and replays
                run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
            if mem.shares_stream:  # the step's download waits for the run on the same stream
                run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        bucket = _Bucket(io, graph_id, run_options, bias, logits, presents, in_block, in_layout, in_bytes,
                         out_block, out_layout, out_bytes)
        self._buckets[key] = bucket
        return bucket

    def _empty_past_bound(self, batch: int) -> list[Any]:
        key = -batch
        if key not in self._empty:
            c = self.config
            t = self._memory.empty((batch, c.num_kv_heads, 0, c.head_dim), self.kv_type)
            self._empty[key] = [t.value] * (2 * c.num_layers)
        return self._empty[key]

    def _forward_bound(self, ids, pos, bias, cache, past_len, write_pos, index, want_logits) -> StepOutput:
        mem = self._memory
        if mem.name == "cuda":  # any thread may drive the backend (the serving engine's): the context must be its
            mem.device.make_current()
        b, l = ids.shape
        bucket = self._bucket(b, l, past_len, index.shape[1], cache)
        staged = {"input_ids": ids, "position_ids": pos, "logits_index": index}
        if write_pos is not None:
            staged["write_pos"] = write_pos
        for name, a in staged.items():
            off, shape, dtype = bucket.in_layout[name]
            bucket.in_block.view(off, shape, dtype)[...] = a
        # one upload: ids, positions, rows (and the write positions the cache kernel reads)
        mem.upload_block(bucket.in_block, bucket.in_bytes if write_pos is not None else bucket.in_layout["write_pos"][0])
        if bucket.last_bias is not bias and (bucket.last_bias is None or not np.array_equal(bucket.last_bias, bias)):
            mem.upload(bucket.bias, bias)  # once per block in the dual / sub-block modes
            bucket.last_bias = bias
        self.session.run_with_iobinding(bucket.binding, bucket.run_options)
        bucket.runs += 1
        self._last = bucket
        if write_pos is not None:  # queued behind the graph on the device: no sync of its own
            with self._timed("cache_write"):
                off = bucket.in_layout["write_pos"][0]
                mem.scatter(bucket.presents, cache.flat(), write_pos, bucket.in_block.ptr + off)
        # one download (the B x R row statistics) and the step's one sync
        rows = _unpack(mem.download_block(bucket.out_block, bucket.out_bytes), bucket.out_layout)
        return StepOutput(rows["tokens"], rows["confidence"], mem.download(bucket.logits) if want_logits else None,
                          rows["margin"], rows["neg_entropy"])

    # ------------------------------------------------------------------ sampling on the device
    def sample(self, temperature: float, top_k: int, top_p: float, uniform: np.ndarray, dream: bool = False) \
            -> StepOutput:
        """Sample every read row of the latest forward from its logits, where that forward left them (the
        sampler graph, export/sampler.py: runtime.sampling.propose's arithmetic, or with ``dream`` Dream's
        sample_tokens, runtime.sampling.dream_probs, where temperature 0 takes the filtered argmax).
        ``uniform`` [B, R]: one draw per row from the shared counter stream. Returns the tokens and their
        probabilities, the margin and sum p log p the loop ranks by, and the top-1 minus top-2 logit, [B, R]."""
        session = self.dream_sampler if dream else self.sampler
        if session is None or self._last is None:
            raise DllmError("sample() needs the bound path, an export with its sampler graph, and a forward before it")
        bucket, mem, v = self._last, self._memory, self.config.vocab_size
        if mem.name == "cuda":
            mem.device.make_current()
        b, r = bucket.logits.shape[:2]
        if uniform.shape != (b, r):
            raise DllmError(f"uniform has shape {uniform.shape}, expected {(b, r)}")
        if bucket.sampler is None:
            bucket.sampler = {}
        if dream not in bucket.sampler:
            outputs = {o.name for o in session.get_outputs()}  # older exports: no prefix sort, no raw confidence
            layout, nbytes = _layout([(SAMPLER_OUTPUTS[0], (b, r), np.int64)] +
                                     [(n, (b, r), np.float64) for n in SAMPLER_OUTPUTS[1:]] +
                                     ([(NUCLEUS_SETTLED, (b, r), np.bool_)] if NUCLEUS_SETTLED in outputs else []) +
                                     ([(RAW_CONFIDENCE, (b, r), np.float64)] if RAW_CONFIDENCE in outputs else []))
            u_block, out_block = mem.block(b * r * 8), mem.block(nbytes)
            io = session.io_binding()
            where = (mem.name, self.device_id if mem.name == "cuda" else 0)
            io.bind_ortvalue_input("logits", bucket.logits.value)
            io.bind_input("uniform", *where, np.float64, [b, r], u_block.ptr)
            for name, (off, shape, dtype) in layout.items():
                io.bind_output(name, *where, dtype, list(shape), out_block.ptr + off)
            bucket.sampler[dream] = [io, u_block, out_block, layout, nbytes, None, None]
        io, u_block, out_block, layout, nbytes, params, sort_k = bucket.sampler[dream]
        key = (float(temperature), int(top_k), float(top_p))
        p_on = top_p < 1.0
        if params != key:  # the switches: host inputs, bound once per setting
            k_on = 0 < top_k < v
            values = [("temperature", np.array([temperature if temperature > 0 else 1.0], np.float64)),
                      ("top_k", np.array([top_k if k_on else 1], np.int64)), ("top_k_on", np.array([k_on])),
                      ("top_p", np.array([top_p], np.float64)), ("top_p_on", np.array([p_on]))]
            if dream:
                values.append(("draw_on", np.array([temperature > 0])))
            for name, value in values:
                io.bind_cpu_input(name, value)
            bucket.sampler[dream][5] = key
        u_block.view(0, (b, r), np.float64)[...] = uniform
        mem.upload_block(u_block, b * r * 8)
        # top-p sorts NUCLEUS_PREFIX entries first; the whole (padded) vocabulary only for rows that prefix does not
        # settle; off, one chunk (the graph's sort and cumulated sums run on whole chunks)
        whole = padded_vocab(v)
        if not p_on:
            sorts = (contract.CDF_CHUNK,)
        elif NUCLEUS_PREFIX < whole:
            sorts = (NUCLEUS_PREFIX, whole)
        else:
            sorts = (whole,)
        for i, k in enumerate(sorts):
            if sort_k != k:
                io.bind_cpu_input("top_p_k", np.array([k], np.int64))
                sort_k = bucket.sampler[dream][6] = k
            session.run_with_iobinding(io)
            rows = _unpack(mem.download_block(out_block, nbytes), layout)
            if i == len(sorts) - 1 or rows[NUCLEUS_SETTLED].all():
                break
        return StepOutput(rows["tokens"], rows["confidence"], None, rows["margin"], rows["neg_entropy"],
                          rows["logit_gap"], rows.get(RAW_CONFIDENCE))
