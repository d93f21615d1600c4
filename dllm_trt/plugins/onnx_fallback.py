"""The ONNX faces of the two ops: standard-op fallback subgraphs, and the custom ``dllm_trt`` nodes.

Fallback subgraphs use standard ops only (Reduce*, Exp, Where, Equal, Range, ScatterND, MatMul,
Softmax, ...), so a graph that holds them runs on any ONNX runtime and any TensorRT, without
plugins. Custom nodes (``--plugins custom``) are single nodes in domain ``dllm_trt`` with the
attributes TensorRT's ONNX parser needs to find the plugins (``plugin_namespace``,
``plugin_version``); ``expand_custom_nodes`` turns them into the fallback subgraphs, which is how
the exporter validates a custom graph on ONNX Runtime.

``ThresholdUnmask`` fallback (see threshold_unmask.py for why this equals the reference):

    z     = Where(column == mask_id, -inf, float(logits))                    [B, L, V]
    m     = ReduceMax(z)                                                       [B, L, 1]
    a     = ReduceMin(Where(z == m, column, BIG))        first argmax          [B, L, 1]
    rest  = ReduceSum(Where(column == a, 0, Exp(z - m)))                      [B, L]
    over  = rest < (1 - tau) / tau                       (tau <= 0: always)
    first = lowest candidate row with the smallest max(rest, 2**-53)
    chosen = candidates & (over | row == first)

three fused passes over the logits and no softmax tensor; indices are carried as float32 (exact
below 2**24) so that every reduction is a float reduction.

``SubBlockCacheAttention`` fallback: the caches get one spare slot (Concat) so that rows that are
not written (cache_position -1) have somewhere to go, ScatterND writes the current keys/values,
Slice drops the spare slot; attention reshapes the queries to [B, Hkv, G*L, D] (no key/value
expansion for grouped heads), MatMul * scale, float32 Softmax with the bias, MatMul. It copies
the caches (ScatterND returns a new tensor); the plugins write in place.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import DOMAIN, DOMAIN_VERSION, PLUGIN_VERSION, SUBBLOCK_CACHE_ATTENTION, THRESHOLD_UNMASK

BIG = float(2**30)  # "no index": larger than any vocabulary or window, exact in float32
SATURATION = 2.0 ** -53

UNMASK_INPUTS = ("logits", "tokens", "candidates", "threshold")
UNMASK_OUTPUTS = ("new_tokens", "num_unmasked", "confidence")
CACHE_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "cache_position", "bias")
CACHE_OUTPUTS = ("output", "key_cache_out", "value_cache_out")


def _onnx():
    import onnx

    return onnx


class _Builder:
    """Appends nodes and initializers under a unique name prefix."""

    def __init__(self, prefix: str, opset: int):
        self.prefix, self.opset = prefix, opset
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: list[str] | None = None,
           n_out: int = 1, **attrs: Any):
        helper = _onnx().helper
        outs = outputs or [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype, hint: str = "const") -> str:
        onnx = _onnx()
        arr = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        self.inits.append(onnx.numpy_helper.from_array(arr, name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int, hint: str | None = None,
               output: str | None = None) -> str:
        """Reduce* with axes as an attribute (opset < 18; ReduceSum < 13) or as an input."""
        outs = [output] if output else None
        if (op_type == "ReduceSum" and self.opset >= 13) or self.opset >= 18:
            return self.op(op_type, [x, self.const(axes, np.int64, "axes")], hint, outs, keepdims=keepdims)
        return self.op(op_type, [x], hint, outs, axes=axes, keepdims=keepdims)

    def dim(self, x: str, i: int, hint: str = "dim") -> str:
        """Dimension i of x as a [1] int64 tensor."""
        shape = self.op("Shape", [x], "shape")
        return self.op("Gather", [shape, self.const([i], np.int64, "idx")], hint, axis=0)


# ---------------------------------------------------------------------- ThresholdUnmask
def threshold_unmask_nodes(b: _Builder, logits: str, tokens: str, candidates: str, threshold: str,
                           outputs: tuple[str, str, str], mask_id: int, logits_elem: int | None = None) -> None:
    """Standard-op subgraph of ThresholdUnmask appended to ``b`` (outputs: new_tokens, num_unmasked, confidence)."""
    onnx = _onnx()
    f32 = onnx.TensorProto.FLOAT
    new_tokens, num_unmasked, confidence = outputs
    z = logits if logits_elem == f32 else b.op("Cast", [logits], "logits_f32", to=f32)
    zero_i, one_i = b.const(0, np.int64, "zero_i"), b.const(1, np.int64, "one_i")
    v = b.op("Squeeze", [b.dim(z, 2, "vocab"), b.const([0], np.int64, "ax0")], "vocab_scalar")
    col = b.op("Range", [zero_i, v, one_i], "col")  # [V] int64
    col_f = b.op("Cast", [col], "col_f", to=f32)
    if mask_id >= 0:
        is_mask = b.op("Equal", [col, b.const(mask_id, np.int64, "mask_id")], "is_mask")
        z = b.op("Where", [is_mask, b.const(-np.inf, np.float32, "neg_inf"), z], "z")
    m = b.reduce("ReduceMax", z, [-1], 1, "row_max")  # [B, L, 1]
    big = b.const(BIG, np.float32, "big")
    at_max = b.op("Where", [b.op("Equal", [z, m], "at_max"), col_f, big], "at_max_col")
    a = b.reduce("ReduceMin", at_max, [-1], 1, "argmax_f")  # [B, L, 1] first column reaching the max
    e = b.op("Exp", [b.op("Sub", [z, m], "centred")], "e")
    e = b.op("Where", [b.op("Equal", [col_f, a], "is_top"), b.const(0.0, np.float32, "zero_f"), e], "e_rest")
    rest = b.reduce("ReduceSum", e, [-1], 0, "rest")  # [B, L]
    top = b.op("Cast", [b.op("Squeeze", [a, b.const([-1], np.int64, "ax_last")], "argmax_sq")], "top", to=onnx.TensorProto.INT64)

    tau = b.op("ReduceMax", [threshold], "tau", keepdims=0)  # [] or [1] -> scalar (no axes: all of them)
    one_f = b.const(1.0, np.float32, "one_f")
    cutoff = b.op("Div", [b.op("Sub", [one_f, tau], "one_minus_tau"), tau], "cutoff_raw")
    cutoff = b.op("Where", [b.op("Greater", [tau, b.const(0.0, np.float32, "zero_tau")], "tau_pos"),
                            cutoff, b.const(np.inf, np.float32, "inf")], "cutoff")
    over = b.op("Less", [rest, cutoff], "over")
    key = b.op("Max", [rest, b.const(SATURATION, np.float32, "saturation")], "key")
    key_c = b.op("Where", [candidates, key, b.const(np.inf, np.float32, "inf_k")], "key_c")
    kmin = b.reduce("ReduceMin", key_c, [1], 1, "key_min")  # [B, 1]
    l_len = b.op("Squeeze", [b.dim(tokens, 1, "rows"), b.const([0], np.int64, "ax0r")], "rows_scalar")
    row_f = b.op("Cast", [b.op("Range", [zero_i, l_len, one_i], "row")], "row_f", to=f32)
    best = b.op("And", [candidates, b.op("Equal", [key_c, kmin], "is_min")], "best")
    first = b.reduce("ReduceMin", b.op("Where", [best, row_f, big], "best_row"), [1], 1, "first")  # [B, 1]
    forced = b.op("Equal", [row_f, first], "forced")
    chosen = b.op("And", [candidates, b.op("Or", [over, forced], "over_or_forced")], "chosen")
    b.op("Where", [chosen, top, tokens], outputs=[new_tokens])
    count = b.reduce("ReduceSum", b.op("Cast", [chosen], "chosen_f", to=f32), [1], 0, "count_f")
    b.op("Cast", [count], outputs=[num_unmasked], to=onnx.TensorProto.INT64)
    conf = b.op("Reciprocal", [b.op("Add", [one_f, rest], "one_plus_rest")], "conf_all")
    b.op("Where", [candidates, conf, b.const(0.0, np.float32, "zero_c")], outputs=[confidence])


# ---------------------------------------------------------------------- SubBlockCacheAttention
def subblock_cache_attention_nodes(b: _Builder, inputs: tuple[str, ...], outputs: tuple[str, str, str],
                                   scale: float, elem: int) -> None:
    """Standard-op subgraph of SubBlockCacheAttention (``elem``: ONNX element type of q/k/v/caches)."""
    onnx = _onnx()
    q, k, v, kc, vc, pos, bias = inputs
    output, kc_out, vc_out = outputs
    f32 = onnx.TensorProto.FLOAT
    ax0, ax_last = b.const([0], np.int64, "ax0"), b.const([-1], np.int64, "ax_last")
    zero_i, one_i = b.const(0, np.int64, "zero_i"), b.const(1, np.int64, "one_i")
    # -- write: one spare slot at T for the rows that are not written
    batch, hkv, cap, hd = (b.dim(kc, i, n) for i, n in enumerate(("batch", "hkv", "cap", "head_dim")))
    slot_shape = b.op("Concat", [batch, hkv, b.const([1], np.int64, "one_slot"), hd], "slot_shape", axis=0)
    zero_el = b.op("Cast", [b.const([0.0], np.float32, "zero_el")], "zero_el_t", to=elem)
    slot = b.op("Expand", [zero_el, slot_shape], "slot")
    target = b.op("Where", [b.op("Less", [pos, zero_i], "not_written"), b.op("Squeeze", [cap, ax0], "cap_s"), pos],
                  "target")  # [B, L]
    rows = b.dim(pos, 1, "rows")
    grid = b.op("Concat", [batch, hkv, rows], "grid", axis=0)  # [B, Hkv, L]
    bi = b.op("Reshape", [b.op("Range", [zero_i, b.op("Squeeze", [batch, ax0], "b_s"), one_i], "b_range"),
                          b.const([-1, 1, 1], np.int64, "b_shape")], "b_col")
    hi = b.op("Reshape", [b.op("Range", [zero_i, b.op("Squeeze", [hkv, ax0], "h_s"), one_i], "h_range"),
                          b.const([1, -1, 1], np.int64, "h_shape")], "h_col")
    ti = b.op("Unsqueeze", [target, b.const([1], np.int64, "ax1")], "t_col")
    parts = [b.op("Unsqueeze", [b.op("Expand", [x, grid], "grid_x"), ax_last], "idx_part") for x in (bi, hi, ti)]
    index = b.op("Concat", parts, "scatter_index", axis=-1)  # [B, Hkv, L, 3]
    start, end2 = b.const([0], np.int64, "start"), b.const([2], np.int64, "axis2")
    for cache, cur, out in ((kc, k, kc_out), (vc, v, vc_out)):
        padded = b.op("Concat", [cache, slot], "padded", axis=2)
        scattered = b.op("ScatterND", [padded, index, cur], "scattered")
        b.op("Slice", [scattered, start, cap, end2], outputs=[out])
    # -- attention over cache positions 0..S-1 (S = the bias's last dimension)
    s_len = b.dim(bias, 3, "keys")
    keys = b.op("Slice", [kc_out, start, s_len, end2], "keys")
    vals = b.op("Slice", [vc_out, start, s_len, end2], "vals")
    grouped = b.op("Concat", [batch, hkv, b.const([-1], np.int64, "minus1"), hd], "grouped_shape", axis=0)
    qg = b.op("Reshape", [q, grouped], "q_grouped")  # [B, Hkv, G*L, D]: head h = hkv * G + g
    scores = b.op("MatMul", [qg, b.op("Transpose", [keys], "keys_t", perm=[0, 1, 3, 2])], "scores")
    scale_c = b.op("Cast", [b.const(scale, np.float32, "scale")], "scale_t", to=elem)
    scores = b.op("Mul", [scores, scale_c], "scaled")
    heads, qlen = b.dim(q, 1, "heads"), b.dim(q, 2, "qlen")
    scores = b.op("Reshape", [scores, b.op("Concat", [batch, heads, qlen, s_len], "score_shape", axis=0)], "scores4")
    if elem != f32:
        scores = b.op("Cast", [scores], "scores_f32", to=f32)
    probs = b.op("Softmax", [b.op("Add", [scores, bias], "biased")], "probs", axis=-1)
    if elem != f32:
        probs = b.op("Cast", [probs], "probs_el", to=elem)
    probs = b.op("Reshape", [probs, b.op("Concat", [batch, hkv, b.const([-1], np.int64, "minus1b"), s_len],
                                         "pg_shape", axis=0)], "probs_grouped")
    o = b.op("MatMul", [probs, vals], "attn")
    b.op("Reshape", [o, b.op("Shape", [q], "q_shape")], outputs=[output])


# ---------------------------------------------------------------------- custom nodes
def threshold_unmask_custom_node(inputs: tuple[str, str, str, str], outputs: tuple[str, str, str], mask_id: int,
                                 name: str = "threshold_unmask"):
    return _onnx().helper.make_node(THRESHOLD_UNMASK, list(inputs), list(outputs), name=name, domain=DOMAIN,
                                    mask_id=int(mask_id), plugin_namespace=DOMAIN, plugin_version=PLUGIN_VERSION)


def subblock_cache_attention_custom_node(inputs: tuple[str, ...], outputs: tuple[str, str, str], scale: float,
                                         name: str = "subblock_cache_attention"):
    return _onnx().helper.make_node(SUBBLOCK_CACHE_ATTENTION, list(inputs), list(outputs), name=name, domain=DOMAIN,
                                    scale=float(scale), plugin_namespace=DOMAIN, plugin_version=PLUGIN_VERSION)


def _attr(node, name: str, default=None):
    helper = _onnx().helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _elem_types(model) -> dict[str, int]:
    """Element types of every named value of the graph (inputs, outputs, value_info, initializers)."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def expand_custom_nodes(model, opset: int | None = None) -> int:
    """Replace every ``dllm_trt`` node of ``model`` (in place) by its fallback subgraph; returns how many.

    The element type of a SubBlockCacheAttention is read from its key_cache input (graph input
    or shape-inferred); ThresholdUnmask casts its logits to float32 unless they are already."""
    onnx = _onnx()
    g = model.graph
    if opset is None:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    custom = [n for n in g.node if n.domain == DOMAIN]
    if not custom:
        return 0
    types = _elem_types(model)
    needed = [n.input[3] if n.op_type == SUBBLOCK_CACHE_ATTENTION else n.input[0] for n in custom]
    if any(x not in types for x in needed):  # not a graph input/output: infer (small graphs only)
        types = _elem_types(onnx.shape_inference.infer_shapes(model))
    nodes, count = [], 0
    for node in g.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        count += 1
        b = _Builder(node.name or f"{node.op_type}_{count}", opset)
        if node.op_type == THRESHOLD_UNMASK:
            threshold_unmask_nodes(b, *node.input, outputs=tuple(node.output), mask_id=int(_attr(node, "mask_id", -1)),
                                   logits_elem=types.get(node.input[0]))
        elif node.op_type == SUBBLOCK_CACHE_ATTENTION:
            elem = types.get(node.input[3]) or types.get(node.input[0]) or onnx.TensorProto.FLOAT
            subblock_cache_attention_nodes(b, tuple(node.input), tuple(node.output), float(_attr(node, "scale")), elem)
        else:
            raise ValueError(f"unknown {DOMAIN} op {node.op_type}")
        nodes.extend(b.nodes)
        g.initializer.extend(b.inits)
    del g.node[:]
    g.node.extend(nodes)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return count


def custom_opset_imports(model) -> None:
    """Declare the ``dllm_trt`` domain on a model that holds custom nodes."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(_onnx().helper.make_opsetid(DOMAIN, DOMAIN_VERSION))


# ---------------------------------------------------------------------- standalone models (tests, benchmarks)
def _model(nodes, inits, inputs, outputs, opset: int, custom: bool, name: str):
    onnx = _onnx()
    helper = onnx.helper
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, producer_name="dllm-trt",
                              ir_version=helper.find_min_ir_version_for(ops))
    if custom:
        custom_opset_imports(model)
    return model


def threshold_unmask_model(mask_id: int, vocab: int | str = "vocab", logits_elem: int = 1, opset: int = 17,
                           custom: bool = False):
    """A model with only ThresholdUnmask: inputs logits/tokens/candidates/threshold, its three outputs."""
    onnx = _onnx()
    tp, helper = onnx.TensorProto, onnx.helper
    inputs = [helper.make_tensor_value_info("logits", logits_elem, ["batch", "rows", vocab]),
              helper.make_tensor_value_info("tokens", tp.INT64, ["batch", "rows"]),
              helper.make_tensor_value_info("candidates", tp.BOOL, ["batch", "rows"]),
              helper.make_tensor_value_info("threshold", tp.FLOAT, [1])]
    outputs = [helper.make_tensor_value_info("new_tokens", tp.INT64, ["batch", "rows"]),
               helper.make_tensor_value_info("num_unmasked", tp.INT64, ["batch"]),
               helper.make_tensor_value_info("confidence", tp.FLOAT, ["batch", "rows"])]
    if custom:
        nodes, inits = [threshold_unmask_custom_node(UNMASK_INPUTS, UNMASK_OUTPUTS, mask_id)], []
    else:
        b = _Builder("threshold_unmask", opset)
        threshold_unmask_nodes(b, *UNMASK_INPUTS, outputs=UNMASK_OUTPUTS, mask_id=mask_id, logits_elem=logits_elem)
        nodes, inits = b.nodes, b.inits
    return _model(nodes, inits, inputs, outputs, opset, custom, "dllm_threshold_unmask")


def subblock_cache_attention_model(heads: int, kv_heads: int, head_dim: int, elem: int = 1, scale: float | None = None,
                                   opset: int = 17, custom: bool = False):
    """A model with only SubBlockCacheAttention (inputs and outputs named as CACHE_INPUTS / CACHE_OUTPUTS)."""
    onnx = _onnx()
    tp, helper = onnx.TensorProto, onnx.helper
    sc = head_dim ** -0.5 if scale is None else scale
    kv = lambda n, length: helper.make_tensor_value_info(n, elem, ["batch", kv_heads, length, head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info("query", elem, ["batch", heads, "rows", head_dim]),
              kv("key", "rows"), kv("value", "rows"), kv("key_cache", "capacity"), kv("value_cache", "capacity"),
              helper.make_tensor_value_info("cache_position", tp.INT64, ["batch", "rows"]),
              helper.make_tensor_value_info("bias", tp.FLOAT, ["batch", 1, "rows", "keys"])]
    outputs = [helper.make_tensor_value_info("output", elem, ["batch", heads, "rows", head_dim]),
               kv("key_cache_out", "capacity"), kv("value_cache_out", "capacity")]
    if custom:
        nodes, inits = [subblock_cache_attention_custom_node(CACHE_INPUTS, CACHE_OUTPUTS, sc)], []
    else:
        b = _Builder("subblock_cache_attention", opset)
        subblock_cache_attention_nodes(b, CACHE_INPUTS, CACHE_OUTPUTS, sc, elem)
        nodes, inits = b.nodes, b.inits
    return _model(nodes, inits, inputs, outputs, opset, custom, "dllm_subblock_cache_attention")
