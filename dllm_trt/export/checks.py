"""Write the graph (inline or with external weights) and prove it is well formed.

Checks run on the file, not the in-memory proto, so they cover exactly what ships and work
past protobuf's 2 GB limit: ``onnx.checker.check_model(path, full_check=True)`` (which
includes strict shape inference) and ``onnx.shape_inference.infer_shapes_path`` with type
checking and data propagation, whose inferred output shapes must match the contract. And
``check_device_resident``: no value computed from a tensor's shape feeds the data path (only shape
inputs: Reshape, Expand, Slice, ...), since ONNX Runtime runs shape arithmetic on the CPU and
would copy such a value to the GPU inside every step, which also rules out capturing the step
as a CUDA graph.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..errors import DllmError


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights held in the proto (raw_data, or typed fields for small constants)."""
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += len(t.SerializeToString())
    return total


def save_graph(model: onnx.ModelProto, path: Path, external_data: str | None) -> None:
    """Save ``model`` to ``path``; with ``external_data`` every weight goes to that file beside it."""
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external_data, size_threshold=0, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))


def check_graph(path: Path, expected_outputs: dict[str, list[int | str]], strict: bool = True) -> None:
    """checker + full shape inference on the saved file; expected_outputs maps name -> dims.
    ``strict=False`` (graphs with com.microsoft ops, which onnx has no schemas for): the checker
    only, without shape inference; ONNX Runtime's validation run then checks the outputs."""
    try:
        onnx.checker.check_model(str(path), full_check=strict)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise DllmError(f"onnx.checker rejected {path}: {e}") from e
    if not strict:
        return
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        inferred_path = Path(tmp) / "inferred.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path), check_type=True, strict_mode=True,
                                                   data_prop=True)
        except Exception as e:
            raise DllmError(f"ONNX shape inference failed on {path}: {e}") from e
        inferred = onnx.load(str(inferred_path), load_external_data=False)
    got = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output}
    for name, dims in expected_outputs.items():
        if got.get(name) != dims:
            raise DllmError(f"{path}: shape inference gives {name} {got.get(name)}, the contract says {dims}")


# (op, input index) pairs that read a host-side shape value on GPU providers
_SHAPE_INPUTS = {("Reshape", 1), ("Expand", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4),
                 ("ConstantOfShape", 0), ("Unsqueeze", 1), ("Squeeze", 1), ("Tile", 1), ("Range", 0), ("Range", 1),
                 ("Range", 2), ("TopK", 1)}


def shape_values_on_data_path(model: onnx.ModelProto) -> list[str]:
    """Nodes that take a shape-derived value as a data input (see the module docstring)."""
    g = model.graph
    const = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    shape: set[str] = set()
    bad = []
    for n in g.node:
        if n.op_type == "Shape":
            shape.update(n.output)
            continue
        dynamic = [i for i in n.input if i and i not in const]
        if dynamic and all(i in shape for i in dynamic) and n.op_type != "Expand":
            shape.update(n.output)  # still shape arithmetic
            continue
        bad += [f"{n.op_type} {n.name} (input {k})" for k, i in enumerate(n.input)
                if i in shape and (n.op_type, k) not in _SHAPE_INPUTS]
    return bad


def check_device_resident(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    bad = shape_values_on_data_path(model)
    if bad:
        raise DllmError(f"{path}: shape arithmetic feeds the data path at {', '.join(bad[:3])}"
                        f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; on a GPU each step would copy it "
                        "from the host (and no CUDA graph could be captured). Use Python constants for sizes in the model.")
