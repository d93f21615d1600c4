"""``sampler.onnx``: sampling at temperature > 0 on the device, from the logits the step left there.

The model graph picks the top-1 token of each read row itself; sampling needs the whole row, so
without this graph the rows' logits (B x R x vocabulary floats) would cross to the host every step.
This small graph takes those logits where the step wrote them (the bound ``logits`` output of the
model graph) and returns per row what the decode loop reads, so only B x R numbers leave the device.

It computes exactly what ``dllm_trt.runtime.sampling.propose`` and the loop's logits paths compute in
numpy, in float64, with the same operations in the same order (only reduction order differs, which
moves results by an ulp): the mask token's logit at -inf, division by the temperature, the top-k filter
(``z < k-th largest`` -> -inf), softmax, the top-p filter (keep the smallest prefix of the probabilities
sorted high to low, ties to the lower token id, whose mass reaches ``top_p``; renormalise), and the
inverse CDF at the row's uniform (``runtime.sampling.counter_uniform``, computed on the host: one number
per row, the random stream every backend shares). Besides the sampled token and its probability it
returns the statistics the loop ranks by when sampling: Dream's top-1 minus top-2 probability and
sum p log(p + 1e-10) of the tempered, unfiltered distribution, and SchED's top-1 minus top-2 *logit*.

Switches are inputs, not graph variants: ``top_k`` is the K of a TopK (1 when top-k is off, so the off
case costs a top-1), ``top_p_k`` the K of the sort for top-p (the vocabulary when on, else 1). Only
standard opset-17 ops, and no shape arithmetic, so ONNX Runtime's CUDA provider runs every node.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract import SAMPLER_INPUTS, SAMPLER_OUTPUTS

SAMPLER_OPSET = 17
ENTROPY_EPS = 1e-10  # Dream's entropy: sum p log(p + eps), as runtime.decode computes it from logits


def build_sampler(vocab_size: int, mask_token_id: int) -> onnx.ModelProto:
    """The sampler graph for a vocabulary of ``vocab_size`` whose mask token (never proposed) is ``mask_token_id``."""
    D, I64, B = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str | list[str], **attrs) -> str:
        outs = [out] if isinstance(out, str) else out
        nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{len(nodes)}", **attrs))
        return outs[0]

    last = const("axes_last", np.array([-1], np.int64))
    two = const("k_two", np.array([2], np.int64))
    neg_inf = const("neg_inf", np.array(-np.inf, np.float64))
    zero = const("zero", np.array(0.0, np.float64))
    eps = const("entropy_eps", np.array(ENTROPY_EPS, np.float64))
    top_id = const("last_token", np.array(vocab_size - 1, np.int64))

    def softmax(x: str, tag: str) -> str:  # numpy's softmax64: subtract the max, exp, divide by the sum
        m = node("ReduceMax", [x], f"{tag}_max", axes=[-1], keepdims=1)
        e = node("Exp", [node("Sub", [x, m], f"{tag}_shifted")], f"{tag}_exp")
        return node("Div", [e, node("ReduceSum", [e, last], f"{tag}_sum", keepdims=1)], f"{tag}_p")

    def top2_gap(x: str, tag: str) -> str:  # sorted top-1 minus top-2 along the vocabulary
        v = node("TopK", [x, two], [f"{tag}_top2", f"{tag}_top2_idx"], axis=-1, largest=1, sorted=1)
        hi = node("ReduceMax", [v], f"{tag}_top1", axes=[-1], keepdims=0)
        lo = node("ReduceMin", [v], f"{tag}_second", axes=[-1], keepdims=0)
        return node("Sub", [hi, lo], tag)

    logits, uniform, temperature, top_k, top_k_on, top_p, top_p_k, top_p_on = SAMPLER_INPUTS
    tokens, confidence, margin, neg_entropy, logit_gap = SAMPLER_OUTPUTS
    z = node("Cast", [logits], "z", to=D)
    if 0 <= mask_token_id < vocab_size:  # the mask token is never proposed (models.layers.select_top1)
        is_mask = np.zeros(vocab_size, bool)
        is_mask[mask_token_id] = True
        z = node("Where", [const("is_mask_token", is_mask), neg_inf, z], "z_masked")
    node("Identity", [top2_gap(z, "logit_gap_raw")], logit_gap)
    zt = node("Div", [z, temperature], "z_tempered")
    # Dream's statistics: of the tempered distribution before any filter
    p_full = softmax(zt, "full")
    node("Identity", [top2_gap(p_full, "margin_raw")], margin)
    plogp = node("Mul", [p_full, node("Log", [node("Add", [p_full, eps], "p_eps")], "log_p")], "p_log_p")
    node("ReduceSum", [plogp, last], neg_entropy, keepdims=0)
    # top-k: below the k-th largest -> -inf (the k-th largest is the smallest of the top k)
    vk = node("TopK", [zt, top_k], ["top_k_values", "top_k_idx"], axis=-1, largest=1, sorted=1)
    kth = node("ReduceMin", [vk], "kth", axes=[-1], keepdims=1)
    drop_k = node("And", [top_k_on, node("Less", [zt, kth], "below_kth")], "drop_k")
    zk = node("Where", [drop_k, neg_inf, zt], "z_top_k")
    p = softmax(zk, "filtered")
    # top-p: sort high to low (ties: lower id first), drop where the mass before an entry reaches top_p
    sp, order = node("TopK", [p, top_p_k], ["sorted_p", "order"], axis=-1, largest=1, sorted=1), "order"
    before = node("Sub", [node("CumSum", [sp, const("axis_last", np.array(-1, np.int64))], "cum_p"), sp], "mass_before")
    drop_sorted = node("Cast", [node("GreaterOrEqual", [before, top_p], "drop_sorted_b")], "drop_sorted", to=D)
    dropped = node("ScatterElements", [node("Mul", [p, zero], "zeros"), order, drop_sorted], "dropped", axis=-1)
    kept = node("Where", [node("Greater", [dropped, const("half", np.array(0.5))], "is_dropped"), zero, p], "p_kept")
    renorm = node("Div", [kept, node("ReduceSum", [kept, last], "kept_sum", keepdims=1)], "p_renorm")
    pf = node("Where", [top_p_on, renorm, p], "p_final")
    # inverse CDF: the first id whose cumulative mass exceeds u * total
    cdf = node("CumSum", [pf, "axis_last"], "cdf")
    total = node("ReduceMax", [cdf], "cdf_total", axes=[-1], keepdims=1)
    target = node("Mul", [node("Unsqueeze", [uniform, last], "u_col"), total], "u_target")
    below = node("Cast", [node("LessOrEqual", [cdf, target], "cdf_below")], "cdf_below_f", to=D)
    count = node("Cast", [node("ReduceSum", [below, last], "count_f", keepdims=0)], "count", to=I64)
    tok = node("Min", [count, top_id], tokens)
    picked = node("GatherElements", [pf, node("Unsqueeze", [tok, last], "token_col")], "picked_p", axis=-1)
    node("ReduceMax", [picked], confidence, axes=[-1], keepdims=0)

    vec = lambda name, t: helper.make_tensor_value_info(name, t, [1])  # noqa: E731
    inputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", "rows", vocab_size]),
              helper.make_tensor_value_info(uniform, D, ["batch", "rows"]),
              vec(temperature, D), vec(top_k, I64), vec(top_k_on, B), vec(top_p, D), vec(top_p_k, I64), vec(top_p_on, B)]
    outputs = [helper.make_tensor_value_info(tokens, I64, ["batch", "rows"])] + \
        [helper.make_tensor_value_info(n, D, ["batch", "rows"]) for n in (confidence, margin, neg_entropy, logit_gap)]
    graph = helper.make_graph(nodes, "dllm_trt_sampler", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SAMPLER_OPSET)],
                              producer_name="dllm-trt")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
