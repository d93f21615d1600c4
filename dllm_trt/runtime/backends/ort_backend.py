"""The ONNX Runtime backend: drives an exported artefact folder with no model code and no torch.

The artefact (written by ``dllm-trt export``) is ``model.onnx`` (+ ``model.onnx.data``),
``dllm_config.json`` and the tokenizer files. This module also owns the artefact *contract*
(format version, file and tensor names) so that the exporter writes exactly what the runtime
reads; it imports only numpy and the standard library at import time, and onnxruntime when a
backend is opened.

Graph contract (one graph for the prefill and every cached step of every cache mode)::

    inputs   input_ids [B, L] int64, position_ids [B, L] int64,
             attention_bias [B, 1, L, P + L] float32 (0 = attend, -1e9 = masked),
             past_key_values.{i}.key / .value [B, Hkv, P, D]  (model dtype; P may be 0)
    outputs  logits [B, L, V] float32,
             present.{i}.key / .value [B, Hkv, L, D]  (model dtype)

Unlike Optimum, ``present`` holds only the *current* tokens' keys/values, not past + current:
the runtime owns a preallocated, position-indexed cache [B, Hkv, capacity, D] per layer and
writes the presents into it in place, at the tokens' positions. That keeps every forward's
output small and lets one graph serve the prefix, dual, block and sub-block caches.

Cache storage:
  host path (CPU EP)   numpy arrays; the past is ``cache[:, :, :P]`` made contiguous (one copy
                       of P positions per layer per forward, the same work the graph's Concat does);
  device path (CUDA)   OrtValues that stay on the GPU between steps, with IO binding. Two tiny
                       graphs written by the exporter do the cache work on the device:
                       ``cache_read.onnx`` slices [:P] (a device copy of the past) and
                       ``cache_write.onnx`` scatters the presents at their positions (ScatterND
                       returns a new cache tensor: one device copy of the cache per writing step).
                       Only token ids, positions, the bias and the logits cross to/from the host.

Plugin artefacts (``dllm-trt export --plugins fallback``; contract in dllm_trt/plugins/contract.py)
keep the caches in the graph: each forward passes the caches and gets them back written, with
the bias turned into a bias over cache positions (plugins/subblock_cache.py), and the graph also
runs ThresholdUnmask (``forward_threshold``), so the threshold rule never needs the logits on the
host. A forward without a cache (cache mode ``none``) writes into a scratch cache.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ModelConfig
from ...errors import DllmError
from . import UnmaskResult, check_forward_args

FORMAT_VERSION = 1  # bump when the graph contract or dllm_config.json changes incompatibly
CONFIG_FILE = "dllm_config.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
CACHE_READ_FILE = "cache_read.onnx"
CACHE_WRITE_FILE = "cache_write.onnx"
CACHE_LAYOUT = "per-layer K/V [B, Hkv, T, D], position-indexed; present = current tokens"

# dllm_config.json "dtype" -> ONNX element type name of the keys/values
KV_TYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16}
_ONNX_ELEMENT_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16}  # onnx.TensorProto values
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_UNTIMED = nullcontext()


# ---------------------------------------------------------------------- the contract
def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "position_ids", "attention_bias"] + past_names(num_layers)


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + present_names(num_layers)


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """Tensor names of the device cache graphs: ``{prefix}.{i}.key`` / ``.value``."""
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def read_artifact_config(artifact_dir: str | Path) -> dict[str, Any]:
    """Parse and check ``dllm_config.json``; raises DllmError that says how to fix the folder."""
    d = Path(artifact_dir)
    if not d.is_dir():
        raise DllmError(f"artefact folder {d} does not exist; make one with `dllm-trt export --model CKPT --out {d}`")
    path = d / CONFIG_FILE
    if not path.is_file():
        hint = (" (it holds config.json: that is a checkpoint folder; export it first with "
                f"`dllm-trt export --model {d} --out OUT`)") if (d / "config.json").is_file() else ""
        raise DllmError(f"{path} is missing: {d} is not a dllm-trt export{hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON ({e}); re-export the model with `dllm-trt export`") from e
    from ... import __version__

    fmt = meta.get("format_version") if isinstance(meta, dict) else None
    if fmt != FORMAT_VERSION:
        made_by = meta.get("dllm_trt_version", "an unknown version") if isinstance(meta, dict) else "an unknown version"
        raise DllmError(f"{d} was exported by dllm-trt {made_by} in artefact format {fmt!r}; this dllm-trt "
                        f"{__version__} reads format {FORMAT_VERSION}. Re-export the checkpoint with this version "
                        "(`dllm-trt export --model CKPT --out DIR`) or use the dllm-trt that made it.")
    for key in ("hf_config", "dtype", "inputs", "outputs"):
        if key not in meta:
            raise DllmError(f"{path} lacks {key!r}; re-export the model with `dllm-trt export`")
    return meta


def config_from_artifact(meta: dict[str, Any], source: str = CONFIG_FILE) -> ModelConfig:
    """Rebuild the ModelConfig from the stored upstream config and check it against the stored fields."""
    cfg = ModelConfig.from_dict(meta["hf_config"], source=source)
    stored = meta.get("model_config") or {}
    for name, value in stored.items():
        mine = getattr(cfg, name, None)
        if isinstance(mine, tuple):
            mine = list(mine)
        if name != "extra" and mine != value:
            raise DllmError(f"{source}: model_config.{name} is {value!r} but hf_config gives {mine!r}; "
                            "the artefact is inconsistent, re-export it")
    return cfg


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise DllmError("the ort backend needs ONNX Runtime: pip install onnxruntime "
                        "(or onnxruntime-gpu for provider='cuda')") from e
    return ort


# ---------------------------------------------------------------------- the backend
class OrtCache:
    """Per-layer (key, value) storage [B, Hkv, capacity, D]: numpy arrays, or OrtValues on the device."""

    def __init__(self, layers: list[list[Any]], batch: int, capacity: int):
        self.layers = layers
        self.batch = batch
        self.capacity = capacity

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


class OrtBackend:
    """One ONNX Runtime session over ``model.onnx``, implementing the runtime's Backend protocol.

    ``timer`` (None unless profiling; dllm_trt.profiling.StepTimer) times the cache reads and
    writes inside a forward. Every run here is synchronous (``run`` and ``run_with_iobinding``
    return when the device work is done), so wall-clock sections need no extra synchronisation.
    """

    timer = None

    def _timed(self, section: str):
        return _UNTIMED if self.timer is None else self.timer.section(section)

    def __init__(self, artifact_dir: str | Path, meta: dict[str, Any], config: ModelConfig, session: Any,
                 device_type: str, device_id: int, io_binding: bool, read_session: Any = None,
                 write_session: Any = None):
        self.artifact_dir = Path(artifact_dir)
        self.meta, self.config, self.session = meta, config, session
        self.device_type, self.device_id, self.io_binding = device_type, device_id, io_binding
        self.read_session, self.write_session = read_session, write_session
        self.kv_type = KV_TYPES[meta["dtype"]]
        self.kv_onnx_type = _ONNX_ELEMENT_TYPES[self.kv_type]
        self.kv_numpy = _NUMPY_TYPES.get(self.kv_type)
        ranges = meta.get("shape_ranges") or {}
        self.max_positions = int(ranges.get("max_positions") or config.max_position_embeddings)
        # The decode loop keeps one spare block (+1) of room for block diffusion's last block.
        self.max_cache = self.max_positions + ((config.block_size or 0) + 1 if config.block_size else 0)
        n = config.num_layers
        self._inputs, self._outputs = input_names(n), output_names(n)
        self._past, self._present = past_names(n), present_names(n)
        self._empty: dict[int, list[Any]] = {}
        self.plugins = meta.get("plugins")  # None, or the plugin graph's record (mode fallback)
        self.fused_unmask = self.plugins is not None
        self._scratch: OrtCache | None = None

    @classmethod
    def from_pretrained(cls, artifact_dir: str | Path, provider: str = "cpu", device_id: int = 0,
                        intra_op_threads: int | None = None, io_binding: bool | None = None,
                        provider_options: dict[str, Any] | None = None) -> "OrtBackend":
        """Open an export folder. ``provider``: ``cpu`` or ``cuda`` (or a full ORT provider name).

        ``io_binding`` defaults to True on CUDA (caches stay on the GPU) and False on CPU (plain
        numpy caches); forcing it on CPU runs the device path on host memory, which tests use.
        """
        meta = read_artifact_config(artifact_dir)
        config = config_from_artifact(meta, source=str(Path(artifact_dir) / CONFIG_FILE))
        plugins = meta.get("plugins")
        if plugins and plugins.get("mode") != "fallback":
            raise DllmError(f"{artifact_dir} was exported with --plugins {plugins.get('mode')}: its graph holds "
                            f"{plugins.get('domain', 'dllm_trt')} custom nodes for TensorRT plugins, which ONNX Runtime "
                            "cannot run; re-export with --plugins fallback (standard ops) for ONNX Runtime, or build a "
                            "TensorRT engine from it")
        ort = _import_ort()
        # ORT's process-wide logger otherwise warns at every session start (e.g. that ScatterND
        # needs unique indices, which the cache writes are); errors still print.
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
        if not model_path.is_file():
            raise DllmError(f"{model_path} is missing; the export is incomplete, re-export the model")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        options = dict(provider_options or {})
        if on_device and ep == "CUDAExecutionProvider":
            options.setdefault("device_id", device_id)
        providers = [(ep, options)] + ([] if ep == "CPUExecutionProvider" else ["CPUExecutionProvider"])

        def open_session(path: Path):
            try:
                s = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as e:  # ORT raises its own exception types
                raise DllmError(f"ONNX Runtime could not load {path} with {ep}: {e}") from e
            if ep not in s.get_providers():
                raise DllmError(f"ONNX Runtime fell back from {ep} to {s.get_providers()} when loading {path}; "
                                "check that the CUDA/cuDNN libraries onnxruntime-gpu needs are installed")
            return s

        session = open_session(model_path)
        io_binding = on_device if io_binding is None else bool(io_binding)
        device_type = "cuda" if ep == "CUDAExecutionProvider" else "cpu"
        read_s = write_s = None
        if io_binding and not plugins:  # a plugin graph does its cache work itself
            cache_ops = meta.get("cache", {}).get("device_ops") or {}
            paths = [Path(artifact_dir) / cache_ops.get("read", CACHE_READ_FILE),
                     Path(artifact_dir) / cache_ops.get("write", CACHE_WRITE_FILE)]
            for p in paths:
                if not p.is_file():
                    raise DllmError(f"{p} is missing: the device cache path needs the cache graphs the exporter writes; "
                                    "re-export the model")
            read_s, write_s = (open_session(p) for p in paths)
        return cls(artifact_dir, meta, config, session, device_type, device_id, io_binding, read_s, write_s)

    # ------------------------------------------------------------------ cache
    def _check_len(self, needed: int, what: str) -> None:
        if needed > self.max_cache:
            raise DllmError(f"{what} needs {needed} positions, but {self.artifact_dir} was exported for at most "
                            f"{self.max_positions} positions (max_position_embeddings of the model); "
                            "shorten the prompt or gen_length")

    def allocate_cache(self, batch: int, capacity: int) -> OrtCache:
        self._check_len(capacity, "a prompt plus gen_length")
        c = self.config
        shape = (batch, c.num_kv_heads, capacity, c.head_dim)
        if not self.io_binding:
            layers = [[np.zeros(shape, self.kv_numpy), np.zeros(shape, self.kv_numpy)] for _ in range(c.num_layers)]
        else:
            # Zero-filled, never uninitialised: stale positions are masked by the bias, but NaN garbage
            # would survive the mask (NaN + -1e9 is NaN).
            layers = [[self._device_zeros(shape), self._device_zeros(shape)] for _ in range(c.num_layers)]
        return OrtCache(layers, batch, capacity)

    def _host_value(self, array: np.ndarray):
        """An OrtValue on the host with the cache's element type (bf16 travels as uint16 bits)."""
        ort = _import_ort()
        if self.kv_numpy is None:
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), self.kv_onnx_type)
        return ort.OrtValue.ortvalue_from_numpy(array)

    def _device_zeros(self, shape: tuple[int, ...]):
        ort = _import_ort()
        host = np.zeros(shape, self.kv_numpy or np.uint16)
        if self.device_type == "cpu":
            return self._host_value(host)
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), self.kv_onnx_type, self.device_type, self.device_id)
        value.update_inplace(self._host_value(host))
        return value

    def _empty_past(self, batch: int) -> list[Any]:
        if batch not in self._empty:
            c = self.config
            shape = (batch, c.num_kv_heads, 0, c.head_dim)
            arr = np.zeros(shape, self.kv_numpy or np.uint16)
            self._empty[batch] = [arr if not self.io_binding else self._host_value(arr)] * (2 * c.num_layers)
        return self._empty[batch]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None) -> np.ndarray:
        b, l = input_ids.shape
        check_forward_args(input_ids, attention_bias, cache, past_len, write_mask)
        self._check_len(past_len + l, "this forward (past + query)")
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        bias = np.ascontiguousarray(attention_bias, dtype=np.float32)
        if self.plugins:
            return self._forward_plugin(ids, pos, bias, cache, past_len, None)[0]
        if self.io_binding:
            return self._forward_bound(ids, pos, bias, cache, past_len, write_mask)
        return self._forward_host(ids, pos, bias, cache, past_len, write_mask)

    def forward_threshold(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray,
                          cache: Any, past_len: int, write_mask: np.ndarray | None, tokens: np.ndarray,
                          candidates: np.ndarray, threshold: float) -> UnmaskResult:
        """The forward and ThresholdUnmask on its logits, in the graph (plugin artefacts only)."""
        if not self.plugins:
            raise DllmError(f"{self.artifact_dir} has no in-graph unmasking; export it with --plugins")
        b, l = input_ids.shape
        if attention_bias.shape != (b, 1, l, past_len + l):
            raise DllmError(f"attention_bias has shape {attention_bias.shape}, expected {(b, 1, l, past_len + l)}")
        if tokens.shape != (b, l) or candidates.shape != (b, l):
            raise DllmError(f"tokens {tokens.shape} and candidates {candidates.shape} must be {(b, l)}")
        if past_len > 0 and cache is None:
            raise DllmError("a forward with past keys/values needs a cache from allocate_cache()")
        self._check_len(past_len + l, "this forward (past + query)")
        unmask = (np.ascontiguousarray(tokens, dtype=np.int64), np.ascontiguousarray(candidates, dtype=bool),
                  np.array([threshold], np.float32))
        _, result = self._forward_plugin(np.ascontiguousarray(input_ids, dtype=np.int64),
                                         np.ascontiguousarray(position_ids, dtype=np.int64),
                                         np.ascontiguousarray(attention_bias, dtype=np.float32), cache, past_len, unmask)
        return result

    def _plugin_cache(self, cache: OrtCache | None, batch: int, needed: int) -> OrtCache:
        """The cache the plugin graph writes: the decode loop's, or (no cache) a reused scratch one."""
        if cache is not None:
            if needed > cache.capacity:
                raise DllmError(f"this forward reaches cache position {needed - 1}, beyond the capacity {cache.capacity}")
            return cache
        s = self._scratch
        if s is None or s.batch != batch or s.capacity < needed:
            self._scratch = s = self.allocate_cache(batch, needed)
        return s

    def _forward_plugin(self, ids, pos, bias, cache, past_len, unmask) -> tuple[np.ndarray | None, UnmaskResult | None]:
        """One run of the plugin graph: (logits or None when only the unmask outputs are wanted, unmask outputs)."""
        from ...plugins.contract import UNMASK_INPUTS, UNMASK_OUTPUTS, cache_in_names, cache_out_names
        from ...plugins.subblock_cache import cache_attention_bias, cache_write_positions

        b, l = ids.shape
        cp = cache_write_positions(bias, pos, past_len)
        cb = cache_attention_bias(bias, past_len, cp)
        cache = self._plugin_cache(cache, b, cb.shape[-1])
        if unmask is None:
            unmask = (np.zeros((b, l), np.int64), np.zeros((b, l), bool), np.array([1.0], np.float32))
        n = self.config.num_layers
        host_in = dict(zip(("input_ids", "position_ids", "attention_bias", "cache_position") + UNMASK_INPUTS,
                           (ids, pos, cb, cp) + tuple(unmask)))
        fused = unmask[1].any()
        cache_out = cache_out_names(n)
        if not self.io_binding:
            feeds = dict(host_in)
            feeds.update(zip(cache_in_names(n), (t for layer in cache for t in layer)))
            out = self.session.run(["logits"] + cache_out + list(UNMASK_OUTPUTS), feeds)
            new = out[1: 1 + 2 * n]
            logits, result = out[0], UnmaskResult(*out[1 + 2 * n:])
        else:
            io = self.session.io_binding()
            for name, value in host_in.items():
                io.bind_cpu_input(name, value)
            for name, value in zip(cache_in_names(n), (t for layer in cache for t in layer)):
                io.bind_ortvalue_input(name, value)
            # With the fused rule the logits stay on the device: only the unmask outputs come back.
            io.bind_output("logits", *((self.device_type, self.device_id) if fused else ("cpu", 0)))
            for name in cache_out:
                io.bind_output(name, self.device_type, self.device_id)
            for name in UNMASK_OUTPUTS:
                io.bind_output(name, "cpu")
            self.session.run_with_iobinding(io)
            out = io.get_outputs()
            new = out[1: 1 + 2 * n]
            logits = None if fused else out[0].numpy()
            result = UnmaskResult(*(v.numpy() for v in out[1 + 2 * n:]))
        for j in range(n):
            cache.layers[j] = [new[2 * j], new[2 * j + 1]]
        return logits, result

    def _forward_host(self, ids, pos, bias, cache, past_len, write_mask) -> np.ndarray:
        feeds = {"input_ids": ids, "position_ids": pos, "attention_bias": bias}
        if past_len > 0:
            with self._timed("cache_read"):
                past = [np.ascontiguousarray(t[:, :, :past_len]) for layer in cache for t in layer]
        else:
            past = self._empty_past(ids.shape[0])
        feeds.update(zip(self._past, past))
        out = self.session.run(self._outputs, feeds)
        logits, presents = out[0], out[1:]
        if write_mask is not None and write_mask.any():
            with self._timed("cache_write"):
                bi, li = np.nonzero(write_mask)
                pi = pos[bi, li]
                for j, layer in enumerate(cache.layers):
                    for kv in (0, 1):
                        layer[kv][bi, :, pi] = presents[2 * j + kv][bi, :, li]
        return logits

    def _forward_bound(self, ids, pos, bias, cache, past_len, write_mask) -> np.ndarray:
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("position_ids", pos)
        io.bind_cpu_input("attention_bias", bias)
        if past_len > 0:
            with self._timed("cache_read"):
                past = self._read_past(cache, past_len)
        else:
            past = self._empty_past(ids.shape[0])
        for name, value in zip(self._past, past):
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in self._present:
            io.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        logits = out[0].numpy()
        if write_mask is not None and write_mask.any():
            with self._timed("cache_write"):
                self._write(cache, out[1:], pos, write_mask)
        return logits

    def _read_past(self, cache: OrtCache, past_len: int) -> list[Any]:
        """cache[:, :, :P] of every layer, as device OrtValues (one device copy)."""
        io = self.read_session.io_binding()
        n = self.config.num_layers
        for name, value in zip(cache_names(n, "cache"), (t for layer in cache for t in layer)):
            io.bind_ortvalue_input(name, value)
        io.bind_cpu_input("past_len", np.array([past_len], np.int64))
        for name in cache_names(n, "past"):
            io.bind_output(name, self.device_type, self.device_id)
        self.read_session.run_with_iobinding(io)
        return list(io.get_outputs())

    def _write(self, cache: OrtCache, presents: list[Any], pos: np.ndarray, write_mask: np.ndarray) -> None:
        """Scatter the presents of the written tokens into the cache at their positions, on the device."""
        h, l = self.config.num_kv_heads, write_mask.shape[1]
        bi, li = np.nonzero(write_mask)
        pi = pos[bi, li]
        b_rows, h_rows = np.repeat(bi, h), np.tile(np.arange(h), bi.size)
        # One row per (token, head): source row (b * Hkv + h) * L + l of the flattened present,
        # destination (b, h, position) in the cache.
        src = ((b_rows * h + h_rows) * l + np.repeat(li, h)).astype(np.int64)
        dst = np.stack([b_rows, h_rows, np.repeat(pi, h)], axis=1).astype(np.int64)
        io = self.write_session.io_binding()
        n = self.config.num_layers
        for name, value in zip(cache_names(n, "cache"), (t for layer in cache for t in layer)):
            io.bind_ortvalue_input(name, value)
        for name, value in zip(cache_names(n, "present"), presents):
            io.bind_ortvalue_input(name, value)
        io.bind_cpu_input("src_index", src)
        io.bind_cpu_input("dst_index", dst)
        for name in cache_names(n, "cache_out"):
            io.bind_output(name, self.device_type, self.device_id)
        self.write_session.run_with_iobinding(io)
        new = io.get_outputs()
        for j in range(n):
            cache.layers[j] = [new[2 * j], new[2 * j + 1]]
