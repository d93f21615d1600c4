"""Trace a dLLM into the ONNX graph of the artefact contract (dllm_trt/contract.py).

The TorchScript exporter (``dynamo=False``) is used on purpose: it traces these stateless
models in well under a second, keeps B, L and P symbolic (P = 0 included: Concat with an
empty past is exact), and needs no guards on shapes. The trace is post-processed so that
every graph input and output carries the contract's named dimensions.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..config import ModelConfig
from ..contract import (BATCH, KEYS, PAST, QUERY, ROWS, input_names, output_names, past_names, present_names,
                        tensor_shapes)
from ..models.layers import RowSelection, mask_exclusion, select_rows


class GraphWrapper(nn.Module):
    """Flat tensor signature around a model:
    (ids, positions, bias, *past, logits_index) -> (tokens, confidence, margin, neg_entropy, logits fp32,
    *presents), in contract.SELECT_OUTPUTS order."""

    def __init__(self, model: nn.Module, mask_token_id: int):
        super().__init__()
        self.model = model
        self.mask_token_id = mask_token_id
        vocab = model.config.vocab_size
        exclude = mask_exclusion(vocab, mask_token_id)
        self.register_buffer("exclude", exclude if exclude is not None else torch.zeros(vocab), persistent=False)
        self.register_buffer("vocab_ids", torch.arange(vocab), persistent=False)

    def forward(self, input_ids, position_ids, attention_bias, *past_and_index):
        past, logits_index = past_and_index[:-1], past_and_index[-1]
        pkv = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        logits, presents = self.model(input_ids, position_ids, attention_bias, pkv, logits_index)
        logits = logits.float()  # logits leave the graph in fp32 whatever the model dtype
        if getattr(self.model, "cuda_ops", False):  # --ops ort-cuda: one kernel (export/fused.py SelectRows)
            from .fused import SelectRows

            sel = RowSelection(*SelectRows.apply(logits, self.exclude, self.vocab_ids, self.mask_token_id))
        else:
            sel = select_rows(logits, self.mask_token_id, self.exclude, self.vocab_ids)
        out = [sel.tokens, sel.confidence, sel.margin, sel.neg_entropy, logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


def example_inputs(config: ModelConfig, dtype: torch.dtype, batch: int = 2, query: int = 5, past: int = 3,
                   rows: int = 4):
    """Trace-time inputs; sizes differ from each other so no dimension can be mistaken for another."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, query), generator=g)
    pos = (torch.arange(query) + past).expand(batch, query).contiguous()
    bias = torch.zeros(batch, 1, query, past + query)
    kv = [torch.randn(batch, config.num_kv_heads, past, config.head_dim, generator=g).to(dtype)
          for _ in range(2 * config.num_layers)]
    index = torch.randint(0, query, (batch, rows), generator=g)
    return (ids, pos, bias, *kv, index)


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: BATCH, 1: QUERY},
        "position_ids": {0: BATCH, 1: QUERY},
        "attention_bias": {0: BATCH, 2: QUERY, 3: KEYS},
        "logits_index": {0: BATCH, 1: ROWS},
        "tokens": {0: BATCH, 1: ROWS},
        "confidence": {0: BATCH, 1: ROWS},
        "margin": {0: BATCH, 1: ROWS},
        "neg_entropy": {0: BATCH, 1: ROWS},
        "logits": {0: BATCH, 1: ROWS},
    }
    axes.update({n: {0: BATCH, 2: PAST} for n in past_names(num_layers)})
    axes.update({n: {0: BATCH, 2: QUERY} for n in present_names(num_layers)})
    return axes


def trace_to_onnx(model: nn.Module, config: ModelConfig, path: Path, opset: int, ops: str = "standard") -> None:
    """torch.onnx.export of the wrapped model into ``path`` (weights may land beside it when > 2 GB).
    ``ops="ort"`` / ``"ort-cuda"`` trace export/fused.py's FusedModel instead: its placeholders need
    ``lower_fused``."""
    from .fused import PLACEHOLDER_DOMAIN, FusedModel

    dtype = next(model.parameters()).dtype
    n = config.num_layers
    fused = ops in ("ort", "ort-cuda")
    if fused:
        model = FusedModel(model, cuda_ops=ops == "ort-cuda")
    with warnings.catch_warnings():
        # TracerWarnings about Python ints (head counts, vocab) are expected: those are constants.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(GraphWrapper(model, config.mask_token_id).eval(), example_inputs(config, dtype), str(path),
                              input_names=input_names(n), output_names=output_names(n),
                              dynamic_axes=dynamic_axes(n), opset_version=opset, do_constant_folding=True,
                              dynamo=False, custom_opsets={PLACEHOLDER_DOMAIN: 1} if fused else None)


def set_shape(value: onnx.ValueInfoProto, elem_type: int, dims: list[int | str]) -> None:
    t = value.type.tensor_type
    t.elem_type = elem_type
    del t.shape.dim[:]
    for d in dims:
        dim = t.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def fix_bf16_casts(model: onnx.ModelProto) -> int:
    """The TorchScript exporter writes ``Cast(to=15)`` for a Python scalar cast to bf16: it passes
    torch's ScalarType number (BFloat16 = 15) where ONNX means COMPLEX128. These models have no
    complex tensors, so every such cast is meant as BFLOAT16 (16). Returns the number fixed."""
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.COMPLEX128:
                    a.i = onnx.TensorProto.BFLOAT16
                    fixed += 1
    return fixed


def drop_repeated_casts(model: onnx.ModelProto) -> int:
    """Cast(Cast(x, to=T), to=T) -> Cast(x, to=T). The TorchScript exporter writes a second Cast for a value that
    is already of the type (``logits.float()`` of fp32 logits, which is also the graph's ``logits`` output: a
    copy of B x R x V floats every step; int64 positions); ONNX Runtime runs each. Returns the number dropped."""
    graph = model.graph
    to = {n.output[0]: next(a.i for a in n.attribute if a.name == "to")
          for n in graph.node if n.op_type == "Cast" and n.output}
    outputs = {o.name for o in graph.output}
    dropped = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or node.input[0] not in to:
            continue
        first, second = node.input[0], node.output[0]
        if to[first] != to[second] or first in outputs:
            continue
        if second in outputs:  # the first cast takes the output's name
            old, new = first, second
        else:
            old, new = second, first
        graph.node.remove(node)
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new
            for i, name in enumerate(n.output):
                if name == old:
                    n.output[i] = new
        for vi in [v for v in graph.value_info if v.name == old]:
            graph.value_info.remove(vi)
        to[new] = to.pop(old, to.get(new))
        dropped += 1
    return dropped


def apply_contract(model: onnx.ModelProto, config: ModelConfig, kv_elem_type: int, metadata: dict[str, str]) -> None:
    """Name every dimension of the graph inputs/outputs as the contract says, and stamp metadata."""
    elem = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}
    shapes = {name: (elem.get(t, kv_elem_type), dims) for name, (t, dims) in tensor_shapes(config, "kv").items()}
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in shapes:
            set_shape(v, *shapes[v.name])
    # Intermediate value_info from the trace may carry exporter-made dim names; shape inference redoes them.
    del model.graph.value_info[:]
    model.doc_string = ("dllm-trt graph (contract in dllm_trt/contract.py): tokens/confidence are the top-1 of "
                        "the rows in logits_index; present.* hold only the current tokens' keys/values "
                        "(not past + current as in Optimum); the runtime writes them into its cache in place.")
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
