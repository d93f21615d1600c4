"""Write the graph (inline or with external weights) and prove it is well formed.

Checks run on the file, not the in-memory proto, so they cover exactly what ships and work
past protobuf's 2 GB limit: ``onnx.checker.check_model(path, full_check=True)`` (which
includes strict shape inference) and ``onnx.shape_inference.infer_shapes_path`` with type
checking and data propagation, whose inferred output shapes must match the contract.
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


def check_graph(path: Path, expected_outputs: dict[str, list[int | str]]) -> None:
    """checker + full shape inference on the saved file; expected_outputs maps name -> dims."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise DllmError(f"onnx.checker rejected {path}: {e}") from e
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
