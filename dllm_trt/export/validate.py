"""Export-time proof that the graph computes what the PyTorch model computes.

ONNX Runtime and PyTorch run the same inputs: a prefill (P = 0, two sequences of different
lengths, so padding rows are exercised, every row read) and a cached step (P > 0, a third batch
size, a past made by the model itself, stale cache entries masked, rows read in shuffled order),
both with the runtime's own ``attention_bias``. Every output row the runtime reads is compared:
the logits and presents by ``max|ort - torch| / max|torch|`` per tensor, the confidences by their
largest absolute difference, and the tokens exactly wherever PyTorch's top-1 beats its runner-up
by more than the tolerance (a closer race may go either way in another float order). The export
fails beyond the tolerance (fp32 1e-4, fp16 1e-2, bf16 5e-2: see TOLERANCE).

bf16: ONNX Runtime's CPU provider has no bf16 kernels, so a bf16 graph can only be validated
where the CUDA provider (onnxruntime-gpu) is installed; elsewhere validation fails and says so
(``--no-validate`` exports it unvalidated) instead of passing silently.
"""
from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from ..config import ModelConfig
from ..errors import DllmError
from ..contract import CUDA_OPS_DOMAIN, ROW_STATS, SELECT_OUTPUTS, cuda_ops_library, input_names, output_names
from ..models.layers import select_rows
from ..runtime.layout import attention_bias

# bf16 keeps 8 mantissa bits: on the trained tiny checkpoints two correct bf16 implementations
# (torch CPU and torch CUDA) already differ by up to 1.25e-2 on this measure, and ORT CUDA vs
# torch CPU by 1-3e-2, so 1e-2 would reject correct graphs. A wrong graph is off by O(1).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
KV_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_ONNX_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}


def _case_inputs(config: ModelConfig, rng: np.random.Generator, batch: int, lengths: list[int], past_len: int,
                 past_valid_len: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids, positions, bias and write mask of one window starting at ``past_len`` for every sequence."""
    query = max(lengths)
    pos = past_len + np.arange(query)[None, :].repeat(batch, 0)
    valid = np.arange(query)[None, :] < np.array(lengths)[:, None]
    ids = rng.integers(0, min(config.vocab_size, config.embedding_size), size=(batch, query))
    ids[rng.random((batch, query)) < 0.3] = config.mask_token_id
    ids = np.where(valid, ids, config.mask_token_id).astype(np.int64)
    past_valid = np.arange(past_len)[None, :] < np.array(past_valid_len)[:, None]
    safe_pos = np.where(valid, pos, 0).astype(np.int64)
    return ids, safe_pos, attention_bias(safe_pos, valid, past_valid, config.block_size), valid


def _ort_value(t: torch.Tensor):
    import onnxruntime as ort

    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy().view(np.uint16), 16)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, NaN when ``a`` holds a non-finite value (so the check fails)."""
    return float(np.abs(a - b).max()) if np.isfinite(a).all() else float("nan")


def _to_float(value) -> np.ndarray:
    """A host OrtValue as float32 numpy (bf16 read as raw bits: numpy has no bf16)."""
    if value.data_type() == "tensor(bfloat16)":
        n = int(np.prod(value.shape()))
        bits = np.frombuffer((ctypes.c_uint16 * n).from_address(value.data_ptr()), np.uint16).copy()
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(value.shape())
    return value.numpy().astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan"), float("nan")
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return diff, diff / max(scale, 1e-30)


def pick_provider(dtype: str) -> str:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if dtype != "bf16":
        return "CPUExecutionProvider"
    if "CUDAExecutionProvider" in available:
        return "CUDAExecutionProvider"
    raise DllmError("a bf16 graph cannot be validated here: ONNX Runtime's CPU provider has no bf16 kernels and "
                    "the CUDA provider is not installed (pip install onnxruntime-gpu on a GPU machine). "
                    "Re-run with --no-validate to write it unvalidated, or export --dtype fp16/fp32 to validate on CPU.")


def open_session(onnx_path: str, provider: str, what: str):
    """An ORT session on ``provider`` (CPU as fallback for unsupported nodes), quiet, with a clear error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    domains = {o.domain for o in onnx.load(onnx_path, load_external_data=False).opset_import}
    if CUDA_OPS_DOMAIN in domains:  # --ops ort-cuda: the project's CUDA ops, CUDA provider only
        if provider != "CUDAExecutionProvider":
            raise DllmError(f"the {what} holds the project's CUDA ops (--ops ort-cuda): it can be validated only "
                            "with ONNX Runtime's CUDA provider; export with --no-validate here")
        opts.register_custom_ops_library(str(cuda_ops_library(Path(onnx_path).parent)))
    try:
        return ort.InferenceSession(onnx_path, sess_options=opts, providers=providers)
    except Exception as e:
        raise DllmError(f"ONNX Runtime ({provider}) cannot load the {what}: {e}") from e


def validation_cases(model, config: ModelConfig, rng: np.random.Generator) -> list[tuple]:
    """The two checked forwards: (name, ids, pos, bias, past or None).

    prefill: P = 0, batch 2, the second sequence shorter; cached: batch 3 over a past made by a
    torch prefill, with some cache positions stale (masked), the runtime's own bias.
    """
    # positions used by the cases: 10, as in format 1 (with 40, fp16 exports of the trained tiny
    # checkpoints measured present rel ~1.07e-2 on ORT CPU, over the 1e-2 tolerance)
    span = max(2, min(32, config.max_position_embeddings))
    p = span * 3 // 5
    l_pre, l_step = span - 3 if span > 4 else span, span - p
    cases = []
    ids, pos, bias, _ = _case_inputs(config, rng, 2, [l_pre, max(1, l_pre - 2)], 0, [0, 0])
    every_row = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
    cases.append(("prefill", ids, pos, bias, None, every_row))
    pids, ppos, pbias, _ = _case_inputs(config, rng, 3, [p, p, p], 0, [0, 0, 0])
    with torch.no_grad():
        _, past = model(torch.from_numpy(pids), torch.from_numpy(ppos), torch.from_numpy(pbias), None)
    ids, pos, bias, _ = _case_inputs(config, rng, 3, [l_step, l_step, max(1, l_step - 1)], p, [p, max(1, p - 2), p - 1])
    shuffled = np.stack([rng.permutation(ids.shape[1]) for _ in range(ids.shape[0])]).astype(np.int64)
    cases.append(("cached", ids, pos, bias, [(k.contiguous(), v.contiguous()) for k, v in past], shuffled))
    return cases


def validate_graph(model: torch.nn.Module, config: ModelConfig, onnx_path: str, dtype: str,
                   log: Callable[[str], None] = print, seed: int = 0, tolerance: float | None = None) -> dict[str, Any]:
    """Compare ORT with PyTorch on a prefill and a cached step; raises DllmError beyond tolerance."""
    import onnxruntime as ort

    provider = pick_provider(dtype)
    tol = TOLERANCE[dtype] if tolerance is None else float(tolerance)
    model_dtype = next(model.parameters()).dtype
    kv_dtype = KV_DTYPES[dtype]
    session = open_session(onnx_path, provider, "exported graph")
    n = config.num_layers
    names_in, names_out = input_names(n), output_names(n)
    rng = np.random.default_rng(seed)

    def run_both(ids, pos, bias, past, index):
        t_in = (torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(bias))
        t_index = torch.from_numpy(index)
        # Both sides get the same past values, rounded to the graph's K/V dtype.
        past = [(k.to(kv_dtype), v.to(kv_dtype)) for k, v in past] if past else None
        with torch.no_grad():
            t_logits, t_pres = model(*t_in, [(k.to(model_dtype), v.to(model_dtype)) for k, v in past] if past else None,
                                     t_index)
            t_sel = select_rows(t_logits, config.mask_token_id)
        if not past:
            empty = torch.zeros(ids.shape[0], config.num_kv_heads, 0, config.head_dim, dtype=kv_dtype)
            past = [(empty, empty)] * n
        io = session.io_binding()
        for name, t in zip(names_in, (*t_in, *[x for kv in past for x in kv], t_index)):
            io.bind_ortvalue_input(name, _ort_value(t))
        for name in names_out:
            io.bind_output(name, "cpu")
        session.run_with_iobinding(io)
        outs = dict(zip(names_out, io.get_outputs()))
        got = {name: outs[name].numpy() for name in ROW_STATS}
        got.update(logits=_to_float(outs["logits"]), presents=[_to_float(outs[x]) for x in names_out[len(SELECT_OUTPUTS):]])
        ref = {name: getattr(t_sel, name).numpy() for name in ROW_STATS}
        ref.update(logits=t_logits.float().numpy(), presents=[x.float().numpy() for kv in t_pres for x in kv])
        return got, ref

    cases = validation_cases(model, config, rng)

    report = []
    failures = []
    log(f"validation on ONNX Runtime {provider} vs PyTorch ({dtype}, tolerance {tol:g} relative):")
    log(f"  {'case':8s} {'B':>2s} {'L':>3s} {'P':>3s} {'R':>3s}  {'logits rel':>11s} {'present rel':>11s}"
        f"  {'conf abs':>9s} {'tokens':>9s}")
    for name, ids, pos, bias, past, index in cases:
        got, ref = run_both(ids, pos, bias, past, index)
        la, lr = _rel(got["logits"], ref["logits"])
        pres = [_rel(a, b) for a, b in zip(got["presents"], ref["presents"])]
        pa = max(x[0] for x in pres) if pres else 0.0
        pr = max(x[1] for x in pres) if pres else 0.0
        if any(np.isnan(x) for x in (la, lr, pa, pr)):
            pa = pr = la = lr = float("nan")
        ca = _max_abs(got["confidence"], ref["confidence"])
        ma = _max_abs(got["margin"], ref["margin"])
        ea = _max_abs(got["neg_entropy"], ref["neg_entropy"])
        # The top-1 must agree wherever torch's winner is clear of its runner-up.
        z = np.sort(np.where(np.arange(ref["logits"].shape[-1]) == config.mask_token_id, -np.inf, ref["logits"]), -1)
        clear = (z[..., -1] - z[..., -2]) > tol * max(float(np.abs(ref["logits"]).max()), 1e-30) * 2
        wrong = int(((got["tokens"] != ref["tokens"]) & clear).sum())
        b, l = ids.shape
        plen = 0 if past is None else past[0][0].shape[2]
        log(f"  {name:8s} {b:2d} {l:3d} {plen:3d} {index.shape[1]:3d}  {lr:11.3e} {pr:11.3e}  {ca:9.2e} "
            f"{int(clear.sum()) - wrong:4d}/{int(clear.sum()):<4d}")
        entry = {"case": name, "batch": int(b), "query_len": int(l), "past_len": int(plen), "rows": int(index.shape[1]),
                 "logits_max_abs": la, "logits_max_rel": lr, "present_max_abs": pa, "present_max_rel": pr,
                 "confidence_max_abs": ca, "margin_max_abs": ma, "neg_entropy_max_abs": ea, "tokens_compared": int(clear.sum()), "tokens_differing": wrong}
        report.append(entry)
        # A softmax probability moves by at most half the largest logit change, so the confidences
        # may differ by what the (within-tolerance) logits difference explains (fp16: logits ~ 10).
        conf_tol = max(tol, la)
        # sum p log p moves by at most max|dz| * sum p |log p - H| <= 2 log(V) max|dz|
        ent_tol = max(tol, 2.0 * math.log(config.vocab_size) * la)
        entry["confidence_tolerance"] = conf_tol
        entry["neg_entropy_tolerance"] = ent_tol
        if not (lr <= tol and pr <= tol and ca <= conf_tol and ma <= 2 * conf_tol and ea <= ent_tol) \
                or wrong:  # NaN fails too
            failures.append(entry)
    if failures:
        worst = ", ".join(f"{f['case']}: logits rel {f['logits_max_rel']:.3e}, present rel {f['present_max_rel']:.3e}, "
                          f"confidence abs {f['confidence_max_abs']:.3e}, {f['tokens_differing']} tokens differ"
                          for f in failures)
        raise DllmError(f"validation failed: ONNX Runtime ({provider}) and PyTorch disagree beyond the {dtype} tolerance "
                        f"{tol:g} ({worst}). The graph was not written; re-run with --no-validate to inspect it.")
    return {"status": "passed", "provider": provider, "onnxruntime_version": ort.__version__,
            "torch_version": torch.__version__, "tolerance_rel": tol, "measure": "max|ort - torch| / max|torch|",
            "cases": report}
