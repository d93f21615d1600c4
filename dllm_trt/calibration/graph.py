"""ONNX graph plumbing for quantization: weight MatMuls, where their input scale can be folded,
and the activations they see on calibration data.

A *weight MatMul* is a ``MatMul`` whose second input is a 2-D initializer ``W [K, N]`` (the
linear layers; the attention score/value MatMuls have no constant operand and are left alone).
MatMuls that read the same activation tensor form a *group* (q/k/v share the attention norm,
gate/up share the MLP norm): an input-channel scale ``s`` must be the same for the whole group,
because it is applied once, to the shared activation. ``X W = (X / s) (diag(s) W)`` is exact,
and ``1 / s`` is folded where it costs nothing:

  norm     X = Mul(w, h) with w a [K] initializer used only there (RMSNorm's weight): w /= s
  matmul   X = Mul(a, Y) with Y the output of another weight MatMul (optionally + bias) used
           only there (the SwiGLU up projection feeding down_proj): W_up[:, j] /= s_j
  insert   anything else (the attention output feeding o_proj): a new Mul(X, 1 / s)

Shape-only consumers (``Shape``) of X are ignored: scaling does not change shapes.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import DllmError

SHAPE_ONLY = {"Shape", "Size"}
TWO_GB = 2 * 1024**3


@dataclass
class WeightMatMul:
    node: str  # node name
    weight: str  # initializer name of W [K, N]
    act: str  # activation input name
    output: str
    k: int
    n: int


@dataclass
class Group:
    act: str
    members: list[WeightMatMul]
    fold: str = "insert"  # norm | matmul | insert
    fold_target: str | None = None  # initializer (norm) or MatMul node name (matmul)
    fold_bias: str | None = None  # bias initializer to scale with a matmul fold
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.members[0].k


class GraphIndex:
    """Producers, consumers and initializers of one ModelProto (kept in sync by the editors below)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        g = self.model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.nodes = {n.name: n for n in g.node}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set_array(self, name: str, value: np.ndarray) -> None:
        old = self.inits[name]
        new = numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype, copy=False), name)
        old.CopyFrom(new)

    def real_consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [c for c in self.consumers.get(tensor, []) if c.op_type not in SHAPE_ONLY]


def weight_matmuls(index: GraphIndex, exclude: Iterable[str] = ()) -> list[WeightMatMul]:
    """Every MatMul with a 2-D constant weight, in graph order; ``exclude`` holds name substrings."""
    out = []
    excl = [e for e in exclude if e]
    for i, n in enumerate(index.model.graph.node):
        if n.op_type != "MatMul" or n.input[1] not in index.inits:
            continue
        if not n.name:
            n.name = f"MatMul_{i}"
        dims = list(index.inits[n.input[1]].dims)
        if len(dims) != 2 or any(e in n.name for e in excl):
            continue
        out.append(WeightMatMul(n.name, n.input[1], n.input[0], n.output[0], dims[0], dims[1]))
    index.refresh()
    return out


def _only_use(index: GraphIndex, tensor: str, node: onnx.NodeProto) -> bool:
    users = index.consumers.get(tensor, [])
    return tensor not in index.outputs and all(u is node or u.op_type in SHAPE_ONLY for u in users) and \
        any(u is node for u in users)


def groups(index: GraphIndex, mms: list[WeightMatMul]) -> list[Group]:
    """Weight MatMuls grouped by their activation, each with the cheapest place to fold 1/s."""
    by_act: dict[str, list[WeightMatMul]] = {}
    for m in mms:
        by_act.setdefault(m.act, []).append(m)
    names = {m.node for m in mms}
    out = []
    for act, members in by_act.items():
        g = Group(act, members)
        users = index.real_consumers(act)
        exclusive = act not in index.outputs and all(u.op_type == "MatMul" and u.name in names for u in users) \
            and len(users) == len(members)
        p = index.producer.get(act)
        if exclusive and p is not None and p.op_type == "Mul":
            for j, inp in enumerate(p.input):
                if inp in index.inits:
                    dims = list(index.inits[inp].dims)
                    if dims and dims[-1] == g.k and int(np.prod(dims)) == g.k and len(index.consumers.get(inp, [])) == 1:
                        g.fold, g.fold_target = "norm", inp
                        break
            if g.fold == "insert":
                for inp in p.input:
                    found = _matmul_source(index, inp, p, g.k)
                    if found is not None:
                        g.fold, g.fold_target, g.fold_bias = "matmul", found[0], found[1]
                        break
        out.append(g)
    return out


def _matmul_source(index: GraphIndex, tensor: str, user: onnx.NodeProto, k: int) -> tuple[str, str | None] | None:
    """(MatMul node, bias initializer or None) when ``tensor`` is a weight MatMul's output with N == k,
    optionally plus a [k] bias, used by ``user`` alone: scaling that MatMul's columns scales ``tensor``."""
    if not _only_use(index, tensor, user):
        return None
    src, bias = index.producer.get(tensor), None
    if src is not None and src.op_type == "Add":
        consts = [x for x in src.input if x in index.inits]
        rest = [x for x in src.input if x not in index.inits]
        if len(consts) != 1 or len(rest) != 1 or int(np.prod(index.inits[consts[0]].dims)) != k \
                or len(index.consumers.get(consts[0], [])) != 1 or not _only_use(index, rest[0], src):
            return None
        bias, src = consts[0], index.producer.get(rest[0])
    if src is None or src.op_type != "MatMul" or src.input[1] not in index.inits:
        return None
    dims = list(index.inits[src.input[1]].dims)
    if len(dims) != 2 or dims[1] != k or len(index.consumers.get(src.input[1], [])) != 1:
        return None
    return src.name, bias


def apply_input_scale(index: GraphIndex, g: Group, s: np.ndarray) -> None:
    """Make the group compute (X / s)(diag(s) W): scale the weights' rows, fold 1/s upstream."""
    s = s.astype(np.float64)
    for m in g.members:
        w = index.array(m.weight).astype(np.float64)
        index.set_array(m.weight, w * s[:, None])
    if g.fold == "norm":
        w = index.array(g.fold_target).astype(np.float64)
        index.set_array(g.fold_target, (w.reshape(-1) / s).reshape(w.shape))
    elif g.fold == "matmul":
        node = index.nodes[g.fold_target]
        w = index.array(node.input[1]).astype(np.float64)
        index.set_array(node.input[1], w / s[None, :])
        if g.fold_bias:
            b = index.array(g.fold_bias).astype(np.float64)
            index.set_array(g.fold_bias, (b.reshape(-1) / s).reshape(b.shape))
    else:
        dtype = _elem_numpy(index, g)
        inv = numpy_helper.from_array((1.0 / s).astype(dtype), f"{g.act}_inv_input_scale")
        out_name = f"{g.act}_input_scaled"
        mul = onnx.helper.make_node("Mul", [g.act, inv.name], [out_name], name=f"{g.members[0].node}_input_scale")
        graph = index.model.graph
        graph.initializer.append(inv)
        first = min(i for i, n in enumerate(graph.node) if n.name in {m.node for m in g.members})
        graph.node.insert(first, mul)
        for m in g.members:
            node = index.nodes[m.node]
            node.input[0] = out_name
            m.act = out_name
        index.refresh()


def _elem_numpy(index: GraphIndex, g: Group):
    return numpy_helper.to_array(index.inits[g.members[0].weight]).dtype


# ---------------------------------------------------------------------- running the graph
def save_for_session(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Save a (possibly > 2 GB) proto where ONNX Runtime can open it."""
    path = folder / name
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > TWO_GB - (64 << 20):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def session(path: Path, threads: int | None = None, prefer_gpu: bool = False):
    """An ONNX Runtime session on the CPU (or CUDA first when ``prefer_gpu`` and onnxruntime-gpu is installed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


@dataclass
class ActStats:
    k: int
    abs_sum: np.ndarray
    abs_max: np.ndarray
    count: int = 0
    rows: list[np.ndarray] = field(default_factory=list)

    @property
    def abs_mean(self) -> np.ndarray:
        return (self.abs_sum / max(self.count, 1)).astype(np.float32)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows, axis=0) if self.rows else np.zeros((0, self.k), np.float32)


def collect_activations(model: onnx.ModelProto, tensors: dict[str, int], calib, max_rows: int = 2048,
                        batch_size: int = 32, seed: int = 0, progress: bool = True, desc: str = "calibrate") -> dict[str, ActStats]:
    """Run ``calib`` through ``model`` with ``tensors`` (name -> K) exposed as outputs.

    Per tensor: mean and max of |x| per input channel over every calibration token, and a
    uniform sample of at most ``max_rows`` token rows (for the AWQ / clipping searches).
    """
    from tqdm import tqdm

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    for name in tensors:
        if name not in have:
            aug.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    names = list(tensors)
    total_tokens = int(calib.arrays["valid"].sum())
    keep = min(1.0, max_rows / max(total_tokens, 1))
    rng = np.random.default_rng(seed)
    stats = {n: ActStats(k, np.zeros(k, np.float64), np.zeros(k, np.float32)) for n, k in tensors.items()}
    with tempfile.TemporaryDirectory(prefix="dllm-trt-calib-") as tmp:
        sess = session(save_for_session(aug, Path(tmp)), prefer_gpu=True)
        types = {i.name: i.type for i in sess.get_inputs()}
        n_batches = sum(1 for _ in calib.batches(batch_size))
        for feeds, _ in tqdm(calib.batches(batch_size), total=n_batches, desc=desc, unit="batch", disable=not progress,
                             leave=False):
            feeds = cast_feeds(feeds, types)
            outs = sess.run(names, feeds)
            rows = None
            for name, x in zip(names, outs):
                k = tensors[name]
                if x.shape[-1] != k:
                    raise DllmError(f"activation {name} has {x.shape[-1]} channels, expected {k}")
                x = x.reshape(-1, k).astype(np.float32)
                a = np.abs(x)
                st = stats[name]
                st.abs_sum += a.sum(axis=0, dtype=np.float64)
                np.maximum(st.abs_max, a.max(axis=0), out=st.abs_max)
                st.count += x.shape[0]
                if rows is None or rows.shape[0] != x.shape[0]:
                    rows = rng.random(x.shape[0]) < keep
                if rows.any():
                    st.rows.append(x[rows])
        del sess
    return stats


def cast_feeds(feeds: dict[str, np.ndarray], types: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in feeds.items():
        t = types.get(k)
        if t == "tensor(float16)" and v.dtype != np.float16:
            v = v.astype(np.float16)
        elif t == "tensor(float)" and v.dtype == np.float16:
            v = v.astype(np.float32)
        out[k] = v
    return out
