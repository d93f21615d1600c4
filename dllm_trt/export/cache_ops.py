"""The two tiny graphs the runtime's device path uses to keep K/V caches on the GPU.

ONNX Runtime's Python API cannot slice or scatter a device tensor, and the runtime must not
need torch or onnx, so the exporter writes these next to ``model.onnx``:

``cache_read.onnx``   cache.{i}.key/value [B, Hkv, T, D], past_len [1]  ->  past.{i}.* = cache[:, :, :P]
``cache_write.onnx``  cache.{i}.*, present.{i}.* [B, Hkv, L, D], src_index [N] (flat row of the
                      present, (b * Hkv + h) * L + l), dst_index [N, 3] ((b, h, position))
                      ->  cache_out.{i}.* = the cache with those rows replaced (ScatterND)

Gather + ScatterND are plain copies that every ORT provider implements for all float types.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ..config import ModelConfig
from ..runtime.backends.ort_backend import cache_names


def _kv(name: str, elem: int, c: ModelConfig, length: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", c.num_kv_heads, length, c.head_dim])


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    # The lowest IR version the opset allows: onnx's default (its newest) is more than older
    # ONNX Runtime builds load.
    ops = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=ops, producer_name="dllm-trt",
                             ir_version=helper.find_min_ir_version_for(ops))


def read_graph(c: ModelConfig, elem: int, opset: int) -> onnx.ModelProto:
    n = c.num_layers
    inputs = [_kv(x, elem, c, "capacity") for x in cache_names(n, "cache")]
    inputs.append(helper.make_tensor_value_info("past_len", TensorProto.INT64, [1]))
    outputs = [_kv(x, elem, c, "past_len") for x in cache_names(n, "past")]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("axis2", TensorProto.INT64, [1], [2])]
    nodes = [helper.make_node("Slice", [src, "zero", "past_len", "axis2"], [dst], name=f"slice_{dst}")
             for src, dst in zip(cache_names(n, "cache"), cache_names(n, "past"))]
    graph = helper.make_graph(nodes, "dllm_cache_read", inputs, outputs, inits)
    return _model(graph, opset)


def write_graph(c: ModelConfig, elem: int, opset: int) -> onnx.ModelProto:
    n = c.num_layers
    inputs = [_kv(x, elem, c, "capacity") for x in cache_names(n, "cache")]
    inputs += [_kv(x, elem, c, "query_len") for x in cache_names(n, "present")]
    inputs += [helper.make_tensor_value_info("src_index", TensorProto.INT64, ["rows"]),
               helper.make_tensor_value_info("dst_index", TensorProto.INT64, ["rows", 3])]
    outputs = [_kv(x, elem, c, "capacity") for x in cache_names(n, "cache_out")]
    inits = [helper.make_tensor("rows_by_dim", TensorProto.INT64, [2], [-1, c.head_dim])]
    nodes = []
    for cache, present, out in zip(cache_names(n, "cache"), cache_names(n, "present"), cache_names(n, "cache_out")):
        nodes += [
            helper.make_node("Reshape", [present, "rows_by_dim"], [f"{present}.rows"], name=f"flat_{present}"),
            helper.make_node("Gather", [f"{present}.rows", "src_index"], [f"{present}.picked"], axis=0,
                             name=f"pick_{present}"),
            helper.make_node("ScatterND", [cache, "dst_index", f"{present}.picked"], [out], name=f"write_{out}"),
        ]
    graph = helper.make_graph(nodes, "dllm_cache_write", inputs, outputs, inits)
    return _model(graph, opset)


def save_cache_graphs(c: ModelConfig, elem: int, opset: int, read_path: Path, write_path: Path) -> None:
    for model, path in ((read_graph(c, elem, opset), read_path), (write_graph(c, elem, opset), write_path)):
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(path))
