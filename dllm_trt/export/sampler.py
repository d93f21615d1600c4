"""``sampler.onnx``: sampling at temperature > 0 on the device, from the logits the step left there.

The model graph picks the top-1 token of each read row itself; sampling needs the whole row, so
without this graph the rows' logits (B x R x vocabulary floats) would cross to the host every step.
This small graph takes those logits where the step wrote them (the bound ``logits`` output of the
model graph) and returns per row what the decode loop reads, so only B x R numbers leave the device.

It computes exactly what ``dllm_trt.runtime.sampling.propose`` and the loop's logits paths compute in
numpy, in float64, with the same operations in the same order (only reduction order differs, which
moves results by an ulp): the mask token's logit at -inf, division by the temperature, the top-k filter
(``z < k-th largest`` -> -inf), softmax, the top-p filter (the probabilities sorted high to low, ties to
the lower token id; an entry is dropped when the mass ranked before it exceeds ``top_p``, as SDAR and
Fast-dLLM v2 drop it; renormalise), and the
inverse CDF at the row's uniform (``runtime.sampling.counter_uniform``, computed on the host: one number
per row, the random stream every backend shares). Besides the sampled token and its probability it
returns the statistics the loop ranks by when sampling: Dream's top-1 minus top-2 probability and
sum p log(p + 1e-10) of the tempered, unfiltered distribution, SchED's top-1 minus top-2 *logit*, and
LLaDA's confidence (the token's probability under the softmax of the logits themselves, as its
``generate`` computes it after the Gumbel-max draw).

``flavour="dream"`` (``sampler_dream.onnx``) is Dream's ``sample_tokens`` as
``runtime.sampling.dream_probs`` computes it: the nucleus filter first (a token is dropped when the mass
of the tokens ranked before it *exceeds* ``top_p``), then the top-k filter, then the softmax; the token is
its argmax (``draw_on`` false: temperature 0) or drawn by the inverse CDF, and its probability, margin and
sum p log p are all read from that filtered distribution (Dream ranks by them at temperature 0 too).

Switches are inputs, not graph variants: ``top_k_on``, ``top_p_on`` and Dream's ``draw_on`` select If
branches (ONNX Runtime reads them on the host), so work a switch turns off is not done; ``top_k`` is the K
of a TopK, ``top_p_k`` the K of the sort for top-p. Sorting a whole row of 126k float64 probabilities per
read row cost ~186 ms a step on an H200 (2026-11-30), so the runtime first sorts only
``runtime.sampling.NUCLEUS_PREFIX`` entries and reads ``nucleus_settled`` [B, R]: where the prefix's mass
settles every later entry (runtime.sampling.nucleus_keep, the same test) the result is the whole sort's;
otherwise it runs again with the whole (padded) vocabulary. Cumulated sums follow
``runtime.sampling.chunked_cumsum`` (chunks of ``contract.CDF_CHUNK``, recorded in the graph's metadata):
ONNX Runtime's CUDA CumSum re-adds every prefix and its float64 ReduceMax goes through cuDNN: of a 127 ms
sampler step (32 rows of 126k, H200, 2026-11-30) CumSum took 69 ms and ReduceMax 52; maxima here are
ArgMax + GatherElements. Only
standard opset-17 ops, and no shape arithmetic, so ONNX Runtime's CUDA provider runs every node.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import contract
from ..contract import (CDF_CHUNK_KEY, DREAM_SAMPLER_INPUTS, NUCLEUS_SETTLED, RAW_CONFIDENCE, SAMPLER_INPUTS,
                        SAMPLER_OUTPUTS, padded_vocab)

SAMPLER_OPSET = 17
ENTROPY_EPS = 1e-10  # Dream's entropy: sum p log(p + eps), as runtime.decode computes it from logits


def build_sampler(vocab_size: int, mask_token_id: int, flavour: str = "generic") -> onnx.ModelProto:
    """The sampler graph for a vocabulary of ``vocab_size`` whose mask token (never proposed) is
    ``mask_token_id``; ``flavour``: ``generic`` (runtime.sampling.propose) or ``dream`` (dream_probs)."""
    if flavour not in ("generic", "dream"):
        raise ValueError(f"unknown sampler flavour {flavour!r}")
    D, I64, B = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
    scopes: list[list[onnx.NodeProto]] = [[]]  # the graph's nodes, then those of the If branch being built
    nodes = scopes[0]
    inits: list[onnx.TensorProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    counter = [0]

    def node(op: str, inputs: list[str], out: str | list[str], **attrs) -> str:
        outs = [out] if isinstance(out, str) else out
        counter[0] += 1
        scopes[-1].append(helper.make_node(op, inputs, outs, name=f"{op}_{counter[0]}", **attrs))
        return outs[0]

    def branch(cond: str, then_build, else_build, outs: list[tuple[str, int]]) -> list[str]:
        """If(cond) -> ``outs`` [(name, element type)]: each builder adds its branch's nodes and returns its
        values in that order. Work a switch turns off (a top-k or a sort over the vocabulary) is then not done
        (ONNX Runtime reads the switch on the host)."""
        graphs = []
        for which, build in (("then", then_build), ("else", else_build)):
            scopes.append([])
            values = build()
            names = [node("Identity", [v], f"{o}_{which}") for v, (o, _) in zip(values, outs)]
            graphs.append(helper.make_graph(scopes.pop(), f"{outs[0][0]}_{which}", [],
                                            [helper.make_tensor_value_info(n, t, None)
                                             for n, (_, t) in zip(names, outs)]))
        node("If", [cond], [o for o, _ in outs], then_branch=graphs[0], else_branch=graphs[1])
        return [o for o, _ in outs]

    last = const("axes_last", np.array([-1], np.int64))
    axis = const("axis_last", np.array(-1, np.int64))
    neg_inf = const("neg_inf", np.array(-np.inf, np.float64))
    zero = const("zero", np.array(0.0, np.float64))
    eps = const("entropy_eps", np.array(ENTROPY_EPS, np.float64))
    top_id = const("last_token", np.array(vocab_size - 1, np.int64))
    vocab_ids = const("vocab_ids", np.arange(vocab_size, dtype=np.int64))
    end = const("s_past", np.array([np.iinfo(np.int64).max], np.int64))
    chunk = contract.CDF_CHUNK
    padded = padded_vocab(vocab_size)

    # Vocabulary-wide reductions: ONNX Runtime's CUDA ReduceMax of float64 goes through cuDNN (~9 ms for 32 rows of
    # 126k on an H200, 2026-11-30) and its CumSum re-adds every prefix (~35 ms): maxima are ArgMax + Gather, and
    # cumulated sums runtime.sampling.chunked_cumsum's order.
    def row_max(x: str, tag: str) -> str:  # [B, R, 1]: the value at the (first) ArgMax
        i = node("ArgMax", [x], f"{tag}_argmax", axis=-1, keepdims=1, select_last_index=0)
        return node("GatherElements", [x, i], f"{tag}_max", axis=-1)

    def softmax(x: str, tag: str) -> str:  # numpy's softmax64: subtract the max, exp, divide by the sum
        e = node("Exp", [node("Sub", [x, row_max(x, tag)], f"{tag}_shifted")], f"{tag}_exp")
        return node("Div", [e, node("ReduceSum", [e, last], f"{tag}_sum", keepdims=1)], f"{tag}_p")

    def top2_gap(x: str, tag: str, out: str) -> str:  # top-1 minus top-2 along the vocabulary (a tie: 0)
        i = node("ArgMax", [x], f"{tag}_first", axis=-1, keepdims=1, select_last_index=0)
        hi = node("GatherElements", [x, i], f"{tag}_top1", axis=-1)
        rest = node("Where", [node("Equal", [vocab_ids, i], f"{tag}_is_first"), neg_inf, x], f"{tag}_rest")
        gap = node("Sub", [hi, row_max(rest, f"{tag}_second")], f"{tag}_gap")
        return node("Squeeze", [gap, last], out)

    def pad_row(x: str, tag: str, value: float) -> str:  # [B, R, V] -> [B, R, padded] (a whole number of chunks)
        if padded == vocab_size:
            return x
        return node("Pad", [x, const(f"{tag}_pads", np.array([0, 0, 0, 0, 0, padded - vocab_size], np.int64)),
                            const(f"{tag}_pad_value", np.array(value, np.float64))], f"{tag}_padded")

    def chunked_cumsum(x: str, tag: str) -> str:  # [B, R, K], K a multiple of CDF_CHUNK: runtime.sampling's order
        local = node("CumSum", [node("Reshape", [x, const(f"{tag}_chunk_shape", np.array([0, 0, -1, chunk],
                                                                                            np.int64))],
                                     f"{tag}_chunks"), axis], f"{tag}_local")
        totals = node("Squeeze", [node("Slice", [local, const(f"{tag}_s_last", np.array([-1], np.int64)), end, last],
                                       f"{tag}_chunk_last"), last], f"{tag}_chunk_totals")
        run = node("CumSum", [totals, axis], f"{tag}_running")
        before = node("Pad", [node("Slice", [run, const(f"{tag}_s0", np.array([0], np.int64)),
                                             const(f"{tag}_s_end", np.array([-1], np.int64)), last], f"{tag}_run_head"),
                              const(f"{tag}_pad_front", np.array([0, 0, 1, 0, 0, 0], np.int64)), zero],
                      f"{tag}_before")
        sums = node("Add", [node("Unsqueeze", [before, last], f"{tag}_before_col"), local], f"{tag}_sums")
        return node("Reshape", [sums, const(f"{tag}_flat_shape", np.array([0, 0, -1], np.int64))], f"{tag}_cum")

    def neg_entropy_of(p: str, out: str) -> str:  # sum p log(p + eps)
        plogp = node("Mul", [p, node("Log", [node("Add", [p, eps], f"{out}_p_eps")], f"{out}_log")], f"{out}_plogp")
        return node("ReduceSum", [plogp, last], out, keepdims=0)

    def top_k_filter(x: str, tag: str) -> str:  # below the k-th largest -> -inf (the smallest of the top k)
        def on() -> list[str]:
            vk = node("TopK", [x, top_k], [f"{tag}_values", f"{tag}_idx"], axis=-1, largest=1, sorted=1)
            kth = node("ReduceMin", [vk], f"{tag}_kth", axes=[-1], keepdims=1)
            return [node("Where", [node("Less", [x, kth], f"{tag}_below"), neg_inf, x], f"{tag}_filtered")]

        return branch(top_k_on, on, lambda: [x], [(f"{tag}_z", D)])[0]

    def sorted_probs(p: str, tag: str, key: str | None = None) -> tuple[str, str, str]:
        """The first top_p_k entries of p [B, R, padded] sorted high to low by key (default p; ties: lower id
        first), and their cumulated sum (top_p_k: a multiple of CDF_CHUNK)."""
        if key is None:
            sp = node("TopK", [p, top_p_k], [f"{tag}_sorted", f"{tag}_order"], axis=-1, largest=1, sorted=1)
        else:
            node("TopK", [key, top_p_k], [f"{tag}_sorted_key", f"{tag}_order"], axis=-1, largest=1, sorted=1)
            sp = node("GatherElements", [p, f"{tag}_order"], f"{tag}_sorted", axis=-1)
        return sp, f"{tag}_order", chunked_cumsum(sp, tag)

    def unsort(flags: str, like: str, order: str, tag: str) -> str:  # sorted-order flags back to vocabulary order
        zeros = node("Mul", [like, zero], f"{tag}_zeros")  # entries past the sorted prefix: false
        back = node("ScatterElements", [zeros, order, node("Cast", [flags], f"{tag}_flags_f", to=D)], f"{tag}_back",
                    axis=-1)
        return node("Greater", [back, const(f"{tag}_half", np.array(0.5))], f"{tag}_is")

    def nucleus(p: str, key: str | None = None) -> str:
        """Top-p in vocabulary order, [B, R, V] bool (runtime.sampling.nucleus_keep): sorted high to low by key,
        an entry stays unless the mass ranked before it exceeds top_p; entries past the sorted prefix
        (top_p_k < V) go, which is right where ``nucleus_settled`` (the prefix's mass exceeds top_p) holds. The
        rows are padded to whole chunks (p with 0, the key with -inf: sorted after every entry)."""
        p = pad_row(p, "top_p", 0.0)
        _, order, cum = sorted_probs(p, "top_p", None if key is None else pad_row(key, "top_p_key", -np.inf))
        before = node("Pad", [node("Slice", [cum, const("s0", np.array([0], np.int64)),
                                             const("s_end", np.array([-1], np.int64)), last], "cum_head"),
                              const("pad_front", np.array([0, 0, 1, 0, 0, 0], np.int64)), zero], "cum_before")
        last_cum = node("Squeeze", [node("Slice", [cum, const("s_last", np.array([-1], np.int64)), end, last],
                                         "cum_last"), last], "cum_last_row")
        settled = node("Greater", [last_cum, top_p], "prefix_settled")
        keep = unsort(node("LessOrEqual", [before, top_p], "keep_sorted"), p, order, "top_p")
        if padded != vocab_size:
            keep = node("Slice", [keep, const("s_vocab0", np.array([0], np.int64)),
                                  const("s_vocab", np.array([vocab_size], np.int64)), last], "top_p_keep")
        return keep, settled

    def all_rows() -> str:  # [B, R] true: with top-p off there is nothing for a longer sort to settle
        return node("GreaterOrEqual", [uniform, zero], "every_row")

    def inverse_cdf(p: str) -> str:  # the first id whose cumulated mass exceeds u * total (entries past V: total)
        cdf = chunked_cumsum(pad_row(p, "cdf", 0.0), "cdf")
        total = node("Slice", [cdf, const("cdf_total_start", np.array([-1], np.int64)), end, last], "cdf_total")
        target = node("Mul", [node("Unsqueeze", [uniform, last], "u_col"), total], "u_target")
        below = node("Cast", [node("LessOrEqual", [cdf, target], "cdf_below")], "cdf_below_f", to=D)
        count = node("Cast", [node("ReduceSum", [below, last], "count_f", keepdims=0)], "count", to=I64)
        return node("Min", [count, top_id], "drawn")

    names = DREAM_SAMPLER_INPUTS if flavour == "dream" else SAMPLER_INPUTS
    logits, uniform, temperature, top_k, top_k_on, top_p, top_p_k, top_p_on = names[:8]
    tokens, confidence, margin, neg_entropy, logit_gap = SAMPLER_OUTPUTS
    z = node("Cast", [logits], "z", to=D)
    if 0 <= mask_token_id < vocab_size:  # the mask token is never proposed (models.layers.select_top1)
        is_mask = np.zeros(vocab_size, bool)
        is_mask[mask_token_id] = True
        z = node("Where", [const("is_mask_token", is_mask), neg_inf, z], "z_masked")
    top2_gap(z, "raw", logit_gap)
    zt = node("Div", [z, temperature], "z_tempered")
    if flavour == "generic":
        # Dream's statistics without a filter: of the tempered distribution
        p_full = softmax(zt, "full")
        top2_gap(p_full, "full", margin)
        neg_entropy_of(p_full, neg_entropy)
        p = softmax(top_k_filter(zt, "top_k"), "filtered")

        def top_p_filter() -> list[str]:
            keep, settled = nucleus(p)
            kept = node("Where", [keep, p, zero], "p_kept")
            return [node("Div", [kept, node("ReduceSum", [kept, last], "kept_sum", keepdims=1)], "p_renorm"), settled]

        pf, _ = branch(top_p_on, top_p_filter, lambda: [p, all_rows()], [("p_final", D), (NUCLEUS_SETTLED, B)])
        tok = node("Identity", [inverse_cdf(pf)], tokens)
    else:
        draw_on = names[8]
        # nucleus first, on the tempered logits sorted as Dream sorts them
        def top_p_filter() -> list[str]:
            keep, settled = nucleus(softmax(zt, "nucleus"), key=zt)
            return [node("Where", [keep, zt, neg_inf], "z_kept"), settled]

        zp, _ = branch(top_p_on, top_p_filter, lambda: [zt, all_rows()], [("z_nucleus", D), (NUCLEUS_SETTLED, B)])
        pf = softmax(top_k_filter(zp, "top_k"), "final")
        top2_gap(pf, "final", margin)
        neg_entropy_of(pf, neg_entropy)
        tok = branch(draw_on, lambda: [inverse_cdf(pf)],
                     lambda: [node("ArgMax", [pf], "best", axis=-1, keepdims=0, select_last_index=0)],
                     [(tokens, I64)])[0]
    token_col = node("Unsqueeze", [tok, last], "token_col")
    picked = node("GatherElements", [pf, token_col], "picked_p", axis=-1)
    node("ReduceMax", [picked], confidence, axes=[-1], keepdims=0)
    # LLaDA's generate ranks a sampled token by softmax(logits)[token]: no temperature, no filter
    raw = node("GatherElements", [softmax(z, "raw"), token_col], "raw_picked", axis=-1)
    node("ReduceMax", [raw], RAW_CONFIDENCE, axes=[-1], keepdims=0)

    vec = lambda name, t: helper.make_tensor_value_info(name, t, [1])  # noqa: E731
    inputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", "rows", vocab_size]),
              helper.make_tensor_value_info(uniform, D, ["batch", "rows"]),
              vec(temperature, D), vec(top_k, I64), vec(top_k_on, B), vec(top_p, D), vec(top_p_k, I64), vec(top_p_on, B)]
    if flavour == "dream":
        inputs.append(vec(names[8], B))
    outputs = [helper.make_tensor_value_info(tokens, I64, ["batch", "rows"])] + \
        [helper.make_tensor_value_info(n, D, ["batch", "rows"]) for n in (confidence, margin, neg_entropy, logit_gap)] + \
        [helper.make_tensor_value_info(NUCLEUS_SETTLED, B, ["batch", "rows"]),
         helper.make_tensor_value_info(RAW_CONFIDENCE, D, ["batch", "rows"])]
    graph = helper.make_graph(nodes, f"dllm_trt_sampler_{flavour}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SAMPLER_OPSET)],
                              producer_name="dllm-trt")
    model.ir_version = 8
    helper.set_model_props(model, {CDF_CHUNK_KEY: str(chunk)})
    onnx.checker.check_model(model)
    return model
