"""``dllm-trt export --plugins``: trace the model with the plugin ops (contract in contract.py).

The model code is not changed: while tracing, ``models.layers.attend`` (the one function every
family's attention calls) is swapped for a ``torch.autograd.Function`` whose ``symbolic`` emits a
``dllm_trt::SubBlockCacheAttention`` node and whose forward is the torch version of the op. The
wrapper passes each layer the whole cache as its "past", and returns the written caches instead
of the presents. A ``dllm_trt::ThresholdUnmask`` node is then appended on the logits. With
``--plugins fallback`` every custom node is expanded into its standard-op subgraph
(onnx_fallback.py); with ``--plugins custom`` they stay for TensorRT's plugins, and validation
runs the expanded copy on ONNX Runtime.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DllmError
from ..export.graph import set_shape
from . import DOMAIN, DOMAIN_VERSION, PLUGIN_MODES, PLUGIN_VERSION, SUBBLOCK_CACHE_ATTENTION, THRESHOLD_UNMASK
from .contract import (CAPACITY, UNMASK_INPUTS, UNMASK_OUTPUTS, cache_in_names, cache_out_names, plugin_input_names,
                       plugin_output_names)
from .onnx_fallback import custom_opset_imports, expand_custom_nodes, threshold_unmask_custom_node
from .subblock_cache import cache_attention_bias, cache_write_positions

BATCH, QUERY, KEYS = "batch", "query_len", "key_len"


# ---------------------------------------------------------------------- torch face of the cache op
def torch_subblock_cache_attention(q, k, v, key_cache, value_cache, cache_position, bias, scale: float,
                                   inplace: bool = False):
    """SubBlockCacheAttention in torch (the math of ``models.layers.attend``): (out, key_cache, value_cache)."""
    kc = key_cache if inplace else key_cache.clone()
    vc = value_cache if inplace else value_cache.clone()
    bi, li = torch.nonzero(cache_position >= 0, as_tuple=True)
    ti = cache_position[bi, li]
    kc[bi, :, ti] = k[bi, :, li]
    vc[bi, :, ti] = v[bi, :, li]
    s = bias.shape[-1]
    keys, vals = kc[:, :, :s], vc[:, :, :s]
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        b, hkv, n, d = keys.shape
        keys = keys[:, :, None].expand(b, hkv, groups, n, d).reshape(b, hkv * groups, n, d)
        vals = vals[:, :, None].expand(b, hkv, groups, n, d).reshape(b, hkv * groups, n, d)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.float() + bias, dim=-1).to(vals.dtype)
    return torch.matmul(probs, vals), kc, vc


class SubBlockCacheAttentionFn(torch.autograd.Function):
    """Traces as one ``dllm_trt::SubBlockCacheAttention`` node (TorchScript exporter)."""

    @staticmethod
    def forward(ctx, q, k, v, key_cache, value_cache, cache_position, bias, scale: float):
        return torch_subblock_cache_attention(q, k, v, key_cache, value_cache, cache_position, bias, scale)

    @staticmethod
    def symbolic(g, q, k, v, key_cache, value_cache, cache_position, bias, scale: float):
        outs = g.op(f"{DOMAIN}::{SUBBLOCK_CACHE_ATTENTION}", q, k, v, key_cache, value_cache, cache_position, bias,
                    scale_f=float(scale), plugin_namespace_s=DOMAIN, plugin_version_s=PLUGIN_VERSION, outputs=3)
        for out, like in zip(outs, (q, key_cache, value_cache)):  # output types = input types (shape inference)
            out.setType(like.type())
        return outs


class PluginGraphWrapper(nn.Module):
    """(ids, positions, cache bias, cache_position, *caches) -> (logits fp32, *written caches)."""

    def __init__(self, model: nn.Module, head_dim: int):
        super().__init__()
        self.model = model
        self.scale = float(head_dim) ** -0.5  # a Python float: a traced q.shape[-1] would be a graph value

    def forward(self, input_ids, position_ids, attention_bias, cache_position, *caches):
        from ..models import layers

        written: list = []

        def attend(q, k, v, key_cache, value_cache, bias):
            out, kc, vc = SubBlockCacheAttentionFn.apply(q, k, v, key_cache, value_cache, cache_position, bias,
                                                         self.scale)
            written.extend((kc, vc))
            return out

        pkv = [(caches[i], caches[i + 1]) for i in range(0, len(caches), 2)]
        with _swapped(layers, "attend", attend):
            logits, _ = self.model(input_ids, position_ids, attention_bias, pkv)
        if len(written) != len(caches):
            raise DllmError(f"the model called attention {len(written) // 2} times for {len(caches) // 2} layers; "
                            "the plugin export expects one attention per layer")
        return (logits.float(), *written)


@contextmanager
def _swapped(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def example_inputs(config: ModelConfig, dtype: torch.dtype, batch: int = 2, query: int = 5, past: int = 3,
                   capacity: int = 11):
    """Trace-time inputs of the plugin contract (distinct sizes; the cache bias covers past + query)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, query), generator=g)
    pos = (torch.arange(query) + past).expand(batch, query).contiguous()
    bias = torch.zeros(batch, 1, query, past + query)
    caches = [torch.randn(batch, config.num_kv_heads, capacity, config.head_dim, generator=g).to(dtype)
              for _ in range(2 * config.num_layers)]
    return (ids, pos, bias, pos.clone(), *caches)


def trace_plugin_graph(model: nn.Module, config: ModelConfig, path: Path, opset: int) -> None:
    """torch.onnx.export of the plugin wrapper into ``path``, with custom SubBlockCacheAttention nodes."""
    dtype = next(model.parameters()).dtype
    n = config.num_layers
    names_in = ["input_ids", "position_ids", "attention_bias", "cache_position"] + cache_in_names(n)
    names_out = ["logits"] + cache_out_names(n)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: BATCH, 1: QUERY}, "position_ids": {0: BATCH, 1: QUERY},
                                       "attention_bias": {0: BATCH, 2: QUERY, 3: KEYS},
                                       "cache_position": {0: BATCH, 1: QUERY}, "logits": {0: BATCH, 1: QUERY}}
    axes.update({x: {0: BATCH, 2: CAPACITY} for x in cache_in_names(n) + cache_out_names(n)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(PluginGraphWrapper(model, config.head_dim).eval(), example_inputs(config, dtype), str(path),
                              input_names=names_in, output_names=names_out, dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, custom_opsets={DOMAIN: DOMAIN_VERSION}, dynamo=False)


# ---------------------------------------------------------------------- contract


def plugin_shapes(config: ModelConfig, kv_elem: int) -> dict[str, tuple[int, list]]:
    c, tp = config, onnx.TensorProto
    kv = [BATCH, c.num_kv_heads, CAPACITY, c.head_dim]
    shapes = {
        "input_ids": (tp.INT64, [BATCH, QUERY]), "position_ids": (tp.INT64, [BATCH, QUERY]),
        "attention_bias": (tp.FLOAT, [BATCH, 1, QUERY, KEYS]), "cache_position": (tp.INT64, [BATCH, QUERY]),
        "unmask_tokens": (tp.INT64, [BATCH, QUERY]), "unmask_candidates": (tp.BOOL, [BATCH, QUERY]),
        "unmask_threshold": (tp.FLOAT, [1]),
        "logits": (tp.FLOAT, [BATCH, QUERY, c.vocab_size]),
        "new_tokens": (tp.INT64, [BATCH, QUERY]), "num_unmasked": (tp.INT64, [BATCH]),
        "confidence": (tp.FLOAT, [BATCH, QUERY]),
    }
    shapes.update({x: (kv_elem, kv) for x in cache_in_names(c.num_layers) + cache_out_names(c.num_layers)})
    return shapes


def add_unmask_and_contract(model: onnx.ModelProto, config: ModelConfig, kv_elem: int, metadata: dict[str, str]) -> None:
    """Append the ThresholdUnmask node on the logits, name every I/O dimension, stamp metadata (in place)."""
    g = model.graph
    g.node.append(threshold_unmask_custom_node(("logits",) + UNMASK_INPUTS, UNMASK_OUTPUTS,
                                               config.mask_token_id))
    helper = onnx.helper
    g.input.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in UNMASK_INPUTS)
    g.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in UNMASK_OUTPUTS)
    shapes = plugin_shapes(config, kv_elem)
    for v in list(g.input) + list(g.output):
        if v.name in shapes:
            set_shape(v, *shapes[v.name])
    order_in, order_out = plugin_input_names(config.num_layers), plugin_output_names(config.num_layers)
    _reorder(g.input, order_in)
    _reorder(g.output, order_out)
    del g.value_info[:]
    custom_opset_imports(model)
    model.doc_string = ("dllm-trt plugin graph: the caches are inputs and outputs (written in place by "
                        "SubBlockCacheAttention), and ThresholdUnmask runs on the logits; see dllm_config.json plugins.")
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _reorder(values, order: list[str]) -> None:
    by_name = {v.name: v for v in values}
    if set(by_name) != set(order):
        raise DllmError(f"plugin graph I/O {sorted(by_name)} differ from the contract {sorted(order)}")
    items = [copy.deepcopy(by_name[x]) for x in order]
    del values[:]
    values.extend(items)


def count_custom_nodes(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def plugin_record(config: ModelConfig, mode: str, counts: dict[str, int]) -> dict[str, Any]:
    """The ``plugins`` entry of dllm_config.json."""
    if mode not in PLUGIN_MODES:
        raise DllmError(f"unknown --plugins mode {mode!r}; use one of {', '.join(PLUGIN_MODES)}")
    return {
        "mode": mode,
        "domain": DOMAIN,
        "domain_version": DOMAIN_VERSION,
        "plugin_version": PLUGIN_VERSION,
        "ops": {
            THRESHOLD_UNMASK: {"nodes": 1, "mask_id": config.mask_token_id,
                               "inputs": ["logits", *UNMASK_INPUTS], "outputs": list(UNMASK_OUTPUTS)},
            SUBBLOCK_CACHE_ATTENTION: {"nodes": config.num_layers, "scale": config.head_dim ** -0.5},
        },
        "custom_nodes": counts,
        "contract": "caches in and out of the graph (cache.{i}.* -> cache_out.{i}.*, written in place by the "
                    "plugin), attention_bias over cache positions after the write, cache_position per token; "
                    "see dllm_trt/plugins/contract.py",
        "runtimes": ("standard ONNX ops only: ONNX Runtime, TensorRT, TensorRT-RTX" if mode == "fallback" else
                     "TensorRT with dllm_trt.plugins.trt_plugins.register_plugins(tensorrt); "
                     "not ONNX Runtime (re-export with --plugins fallback)"),
    }


def plugin_tensor_specs(config: ModelConfig, dtype_name: str, kv_type: str) -> tuple[list[dict], list[dict]]:
    """dllm_config.json ``inputs`` / ``outputs`` of a plugin graph."""
    names = {onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool"}
    shapes = plugin_shapes(config, -1)
    n = config.num_layers

    def spec(x: str) -> dict:
        elem, dims = shapes[x]
        return {"name": x, "dtype": kv_type if elem == -1 else names[elem], "shape": dims}

    return [spec(x) for x in plugin_input_names(n)], [spec(x) for x in plugin_output_names(n)]


# ---------------------------------------------------------------------- validation
def validate_plugin_graph(model: nn.Module, config: ModelConfig, onnx_path: str, dtype: str,
                          log: Callable[[str], None] = print, seed: int = 0,
                          tolerance: float | None = None) -> dict[str, Any]:
    """ONNX Runtime on the (fallback) plugin graph vs PyTorch's standard forward, on the cases of
    ``export.validate``: logits, the written cache rows vs the presents, untouched cache rows
    bit-equal, and ThresholdUnmask's outputs vs the reference on ORT's own logits."""
    import onnxruntime as ort

    from ..export.validate import (KV_DTYPES, TOLERANCE, _ort_value, _rel, _to_float, open_session, pick_provider,
                                   validation_cases)
    from .threshold_unmask import threshold_unmask

    provider = pick_provider(dtype)
    tol = TOLERANCE[dtype] if tolerance is None else float(tolerance)
    kv_dtype = KV_DTYPES[dtype]
    model_dtype = next(model.parameters()).dtype
    session = open_session(onnx_path, provider, "exported plugin graph")
    n, c = config.num_layers, config
    rng = np.random.default_rng(seed)
    cases = [(name, ids, pos, bias, None if past is None else [(k.to(kv_dtype), v.to(kv_dtype)) for k, v in past])
             for name, ids, pos, bias, past in validation_cases(model, c, rng)]

    report, failures = [], []
    log(f"validation of the plugin graph on ONNX Runtime {provider} vs PyTorch ({dtype}, tolerance {tol:g} relative):")
    log(f"  {'case':8s} {'B':>2s} {'L':>3s} {'P':>3s}  {'logits rel':>11s} {'cache rel':>11s}  {'unmask':>8s}")
    for name, ids, pos, bias, past in cases:
        b, l = ids.shape
        plen = 0 if past is None else past[0][0].shape[2]
        with torch.no_grad():
            t_logits, t_pres = model(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(bias),
                                     [(k.to(model_dtype), v.to(model_dtype)) for k, v in past] if past else None)
        cap = plen + l + 2  # spare positions that must stay untouched
        caches = []
        for j in range(n):
            for kv in (0, 1):
                t = torch.randn(b, c.num_kv_heads, cap, c.head_dim, generator=torch.Generator().manual_seed(j)).to(kv_dtype)
                if past:
                    t[:, :, :plen] = past[j][kv]
                caches.append(t)
        cp = cache_write_positions(bias, pos, plen)
        cb = cache_attention_bias(bias, plen, cp)
        cand = rng.random((b, l)) < 0.7
        tokens = np.where(cand, c.mask_token_id, ids).astype(np.int64)
        feeds = [torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(cb), torch.from_numpy(cp), *caches,
                 torch.from_numpy(tokens), torch.from_numpy(cand), torch.tensor([0.5], dtype=torch.float32)]
        io = session.io_binding()
        for x, t in zip(plugin_input_names(n), feeds):
            io.bind_ortvalue_input(x, _ort_value(t))
        out_names = plugin_output_names(n)
        for x in out_names:
            io.bind_output(x, "cpu")
        session.run_with_iobinding(io)
        outs = dict(zip(out_names, io.get_outputs()))
        logits = _to_float(outs["logits"])
        _, lr = _rel(logits, t_logits.float().numpy())
        worst_cache, untouched_ok = 0.0, True
        bi, li = np.nonzero(cp >= 0)
        for j, x in enumerate(cache_out_names(n)):
            got = _to_float(outs[x])
            before = caches[j].float().numpy()
            want = t_pres[j // 2][j % 2].float().numpy()
            worst_cache = max(worst_cache, _rel(got[bi, :, cp[bi, li]], want[bi, :, li])[1])
            keep = np.ones(got.shape[::2], bool)  # [B, T]
            keep[bi, cp[bi, li]] = False
            untouched_ok &= bool(np.array_equal(got.transpose(0, 2, 1, 3)[keep], before.transpose(0, 2, 1, 3)[keep]))
        ref = threshold_unmask(logits, tokens, cand, c.mask_token_id, 0.5)
        unmask_ok = (np.array_equal(_to_float(outs["new_tokens"]).astype(np.int64), ref[0])
                     and np.array_equal(_to_float(outs["num_unmasked"]).astype(np.int64), ref[1])
                     and np.allclose(_to_float(outs["confidence"]), ref[2], rtol=1e-4, atol=1e-6))
        log(f"  {name:8s} {b:2d} {l:3d} {plen:3d}  {lr:11.3e} {worst_cache:11.3e}  {'equal' if unmask_ok else 'DIFFERS':>8s}")
        entry = {"case": name, "batch": int(b), "query_len": int(l), "past_len": int(plen), "logits_max_rel": lr,
                 "cache_written_max_rel": worst_cache, "cache_untouched_equal": untouched_ok,
                 "unmask_equals_reference": bool(unmask_ok)}
        report.append(entry)
        if not (lr <= tol and worst_cache <= tol and untouched_ok and unmask_ok):
            failures.append(entry)
    if failures:
        raise DllmError(f"validation of the plugin graph failed ({provider}, {dtype}, tolerance {tol:g}): {failures}. "
                        "The graph was not written; re-run with --no-validate to inspect it.")
    return {"status": "passed", "provider": provider, "onnxruntime_version": ort.__version__,
            "torch_version": torch.__version__, "tolerance_rel": tol, "graph": "plugin (standard-op fallback)",
            "measure": "max|ort - torch| / max|torch|", "cases": report}


def build_plugin_graph(model: nn.Module, config: ModelConfig, scratch: Path, opset: int, kv_elem: int,
                       metadata: dict[str, str], dtype_fix: Callable[[onnx.ModelProto], Any] | None = None
                       ) -> onnx.ModelProto:
    """Trace + unmask node + contract; the returned proto holds the custom nodes (expand for fallback)."""
    path = scratch / "plugin.onnx"
    trace_plugin_graph(model, config, path, opset)
    proto = onnx.load(str(path), load_external_data=True)
    if dtype_fix is not None:
        dtype_fix(proto)
    add_unmask_and_contract(proto, config, kv_elem, metadata)
    return proto


def expand_for_fallback(proto: onnx.ModelProto, opset: int) -> int:
    return expand_custom_nodes(proto, opset)
