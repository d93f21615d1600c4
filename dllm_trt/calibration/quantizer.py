"""``dllm-trt quantize``: an export folder -> a quantized export folder the same runtime drives.

Methods (only the linear layers, i.e. MatMuls with a constant 2-D weight, are quantized; the
embedding, norms, RoPE, attention scores and the K/V cache stay in the export's dtype):

  int4-rtn  INT4 weight-only, blockwise along K (``--block-size``, 32 by default), round to
            nearest with ONNX Runtime's ``MatMulNBitsQuantizer``. No calibration.
  int4-awq  INT4 weight-only with activation-aware scaling (AWQ, implemented here: ONNX Runtime
            has none without NVIDIA ModelOpt): per group of MatMuls sharing an input, the
            input-channel scale s = mean|x|^alpha with alpha searched on the calibration
            activations, folded into the weights and into the preceding RMSNorm weight / up
            projection (or a Mul on the input), then the same RTN kernel. Needs ``--calib``.
            ``awq_clip=True`` (``--clip``) adds AWQ's per-block weight clipping search; it lowers
            the layer-wise error but lowered end-to-end exact match on the tiny checkpoints
            (benchmarks/quantization_cpu.md), so it is off by default.
  int8      W8A8 QDQ for TensorRT / ORT: SmoothQuant scale folding (alpha 0.5), then ONNX
            Runtime's ``quantize_static`` (QDQ, per-channel symmetric INT8 weights, per-tensor
            symmetric INT8 activations from MinMax calibration on the ``--calib`` feeds).
  fp8       W8A8 FP8 E4M3 QDQ (opset 19+, written here: per-tensor activation scale amax/448
            from the calibration feeds, per-output-channel weight scales). ONNX Runtime's CPU
            provider runs it by dequantizing (simulated FP8: right numbers, no speed-up); it is
            meant for TensorRT on FP8 GPUs (Ada, Hopper, Blackwell). Needs ``--calib``.

INT4 formats: ``nbits`` (default) writes ``com.microsoft.MatMulNBits`` (ONNX Runtime CPU/CUDA/
DirectML); ``qdq`` writes blockwise ``DequantizeLinear`` (INT4, ``block_size``, opset 21) + MatMul,
symmetric (no zero points), the form TensorRT takes for INT4 weight-only.

The folder is written into a hidden temporary sibling and renamed into place at the end; its
``dllm_config.json`` gains a ``quantization`` record.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from .. import __version__
from ..progress import PhaseProgress
from ..errors import DllmError
from ..integrity import require_intact
from ..contract import CONFIG_FILE, EXTERNAL_DATA_FILE, MODEL_FILE, config_from_artifact, read_artifact_config
from . import algorithms as alg
from .data import CalibrationSet, build_calibration, file_sha256, load_calibration
from .graph import GraphIndex, apply_input_scale, collect_activations, groups, save_for_session, weight_matmuls

METHODS = ("int4-rtn", "int4-awq", "int8", "fp8")
NEEDS_CALIB = ("int4-awq", "int8", "fp8")
INT4_FORMATS = ("nbits", "qdq")
TWO_GB = 2 * 1024**3
CALIB_HINT = "make one with `dllm-trt calibrate --model {model} --data builtin --out calib.npz`"

MIN_TOP1 = 0.95  # default floor of validation's top-1 agreement (the tiny models score 100%)


def _quiet_ort_quantization() -> None:
    # INFO lines per node, and a notice that the IR version is raised for INT4 (expected).
    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer",
                 "onnxruntime.quantization.base_quantizer", "onnxruntime.quantization.qdq_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def _root_log_level(level: int) -> Iterator[None]:
    """quantize_static warns on the root logger ("consider pre-processing", meant for CNNs)."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def check_request(method: str, calib: str | Path | None, block_size: int, fmt: str, onnx_dir: Path, bits: int = 4) -> None:
    if method not in METHODS:
        raise DllmError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    if fmt not in INT4_FORMATS:
        raise DllmError(f"unknown INT4 format {fmt!r}; use nbits (MatMulNBits) or qdq (DequantizeLinear, opset 21)")
    if method == "int4-rtn" and calib is not None:
        raise DllmError("--calib does not apply to --method int4-rtn (round-to-nearest uses no calibration); drop "
                        "--calib, or use --method int4-awq to use it")
    if method in NEEDS_CALIB and calib is None:
        raise DllmError(f"--method {method} needs calibration data (--calib FILE.npz); "
                        + CALIB_HINT.format(model=onnx_dir))
    if method.startswith("int4") and (not 16 <= block_size <= 256 or block_size & (block_size - 1)):
        raise DllmError(f"--block-size {block_size}: INT4 blocks must be a power of two from 16 to 256 (16, 32, 64, "
                        "128 or 256; ONNX Runtime's blockwise quantizer takes no others)")
    if bits not in (2, 4):
        raise DllmError(f"--bits {bits}: weight-only quantization takes 4 (or 2, a stress test)")
    if bits != 4 and (not method.startswith("int4") or fmt != "nbits"):
        raise DllmError("--bits 2 applies to int4-rtn / int4-awq with --format nbits only")
    if bits == 2:
        from onnxruntime.capi import _pybind_state

        if not hasattr(_pybind_state, "quantize_matmul_2bits"):
            import onnxruntime

            raise DllmError(f"--bits 2 needs an ONNX Runtime with 2-bit MatMulNBits (tested with 1.32; this is "
                            f"{onnxruntime.__version__}): pip install -U onnxruntime")


def check_validation(v: dict[str, Any], method: str, min_top1: float) -> None:
    """Fail a quantization whose logits disagree with the source graph's (the folder is not written)."""
    if v.get("status") != "ran":
        return
    rel, agree = v["logits_max_abs_error_rel"], v["top1_agreement_masked"]
    if not np.isfinite(rel):
        raise DllmError(f"{method}: the quantized graph's logits are not finite (NaN/Inf); nothing was written")
    if agree < min_top1:
        raise DllmError(f"{method}: top-1 agreement with the source graph is {agree:.1%} on {v['masked_positions']} "
                        f"masked positions, below --min-top1 {min_top1:.0%}; nothing was written. Try other settings "
                        f"(--smooth-alpha 0.5, --block-size 32, --keep-lm-head) or lower --min-top1 to accept it")


def find_lm_head(mms, config) -> str | None:
    heads = [m.node for m in mms if m.n in (config.vocab_size, config.embedding_size)]
    return heads[-1] if heads else None


def quantize(onnx_dir: str | Path, out_dir: str | Path, method: str, calib: str | Path | CalibrationSet | None = None,
             block_size: int = 32, symmetric: bool | None = None, fmt: str = "nbits", keep_lm_head: bool = False,
             exclude: tuple[str, ...] = (), accuracy_level: int | None = None, smooth_alpha: float = 0.5,
             awq_clip: bool = False, max_rows: int = 2048, validate: bool = True, progress: bool = True,
             bits: int = 4, log=None, min_top1: float = MIN_TOP1) -> dict[str, Any]:
    """Quantize the export in ``onnx_dir`` into ``out_dir``; returns the report (also stored in dllm_config.json).

    The folder is written only when validation's top-1 agreement at the masked positions is at least
    ``min_top1`` (a quantization that changes the model's answers is an error, not a result)."""
    from ..export import artifact

    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    check_request(method, calib, block_size, fmt, onnx_dir, bits)
    if not 0.0 <= smooth_alpha <= 1.0:  # also refuses NaN
        raise DllmError(f"--smooth-alpha {smooth_alpha} must lie in [0, 1] (SmoothQuant's migration strength; 0 = off, "
                        "0.5 = default)")
    if not 0.0 <= min_top1 <= 1.0:
        raise DllmError(f"--min-top1 {min_top1} must lie in [0, 1]")
    meta = read_artifact_config(onnx_dir)
    require_intact(onnx_dir, warn=log or print)
    if (meta.get("onnx") or {}).get("ops") in ("ort", "ort-cuda"):
        raise DllmError(f"{onnx_dir} was exported with --ops {meta['onnx']['ops']} (packed q|k|v and gate|up weights, "
                        "fused ops); quantize an --ops standard export (the default) instead")
    if meta.get("quantization"):
        raise DllmError(f"{onnx_dir} is already quantized ({meta['quantization'].get('method')}); "
                        "quantize the floating-point export instead")
    config = config_from_artifact(meta, source=str(onnx_dir / CONFIG_FILE))
    if method in NEEDS_CALIB and meta["dtype"] == "bf16":
        raise DllmError(f"{method} runs the graph on ONNX Runtime CPU for calibration, which has no bf16 kernels; "
                        "export with --dtype fp16 or fp32 for calibration-based methods (int4-rtn works on bf16)")
    calib_set: CalibrationSet | None = None
    calib_record: dict[str, Any] = {"kind": "none"}
    if method in NEEDS_CALIB:
        calib_set = calib if isinstance(calib, CalibrationSet) else load_calibration(calib)
        calib_set.check_model(config, where=str(onnx_dir))
        calib_record = {"kind": calib_set.kind, "rows": len(calib_set), "samples": calib_set.meta["samples"],
                        "mask_ratios": calib_set.meta["mask_ratios"], "data": calib_set.meta["data"]}
        if not isinstance(calib, CalibrationSet):
            calib_record.update(file=Path(calib).name, sha256=file_sha256(Path(calib)))
    artifact.check_out_dir(out, onnx_dir)
    if symmetric is None:
        symmetric = fmt == "qdq" or method in ("int8", "fp8")
    _quiet_ort_quantization()
    say = log or (lambda s: tqdm.write(s) if progress else print(s))

    phases = ["load"] + (["calibrate"] if calib_set is not None else []) + \
             (["search"] if method in ("int4-awq", "int8") else []) + ["quantize", "save", "check"] + \
             (["validate"] if validate else []) + ["write"]
    phase = PhaseProgress(phases, f"quantize {method}", progress)

    record: dict[str, Any] = {"method": method, "dllm_trt_version": __version__}
    tmp = artifact.staging_dir(out)
    try:
        with phase("load"):
            src_path = onnx_dir / meta.get("model_file", MODEL_FILE)
            try:
                model = onnx.load(str(src_path), load_external_data=True)
            except Exception as e:  # protobuf DecodeError, OSError for missing external data
                raise DllmError(f"{src_path} is not a readable ONNX model ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0][:200]}); re-export the model") from None
            size_before = _graph_bytes(onnx_dir)
            index = GraphIndex(model)
            excl = list(exclude)
            mms_all = weight_matmuls(index)
            lm_head = find_lm_head(mms_all, config)
            if keep_lm_head and lm_head:
                excl.append(lm_head)
            mms = weight_matmuls(index, excl)
            if not mms:
                raise DllmError(f"{src_path} has no MatMul with a constant 2-D weight to quantize")
            grps = groups(index, mms)
        stats = None
        if calib_set is not None:
            with phase("calibrate"):
                stats = collect_activations(model, {g.act: g.k for g in grps}, calib_set, max_rows=max_rows,
                                            progress=progress)
        if method == "int4-awq":
            with phase("search"):
                record["awq"] = _awq(index, grps, stats, block_size, symmetric, awq_clip, progress, bits)
        elif method == "int8":
            with phase("search"):
                record["smoothquant"] = _smooth(index, grps, stats, smooth_alpha)
        with phase("quantize"):
            names = [m.node for m in mms]
            if method.startswith("int4"):
                model = _int4(model, names, block_size, symmetric, fmt, accuracy_level, bits)
                record.update(format="MatMulNBits (com.microsoft)" if fmt == "nbits" else
                              "QDQ: blockwise DequantizeLinear (opset 21) + MatMul",
                              bits=bits, block_size=block_size, symmetric=symmetric,
                              weights=f"int{bits}, blocks of {block_size} along K",
                              activations=meta["dtype"])
                if accuracy_level:
                    record["accuracy_level"] = accuracy_level
            elif method == "int8":
                model = _int8(model, names, calib_set)
                record.update(format="QDQ (QuantizeLinear/DequantizeLinear)", bits=8,
                              weights="int8, symmetric, per output channel",
                              activations="int8, symmetric, per tensor (MinMax calibration)")
            else:
                model = _fp8(model, mms, stats)
                record.update(format="QDQ FP8 E4M3FN (opset 19+)", bits=8,
                              weights="fp8 e4m3fn, per output channel (amax / 448)",
                              activations="fp8 e4m3fn, per tensor (calibrated amax / 448)")
            record["quantized"] = {"op": "MatMul with a constant 2-D weight", "nodes": len(names),
                                   "weights": int(sum(m.k * m.n for m in mms)),
                                   "excluded": sorted(set(excl) & {m.node for m in mms_all}),
                                   "lm_head": "kept in float" if keep_lm_head else "quantized",
                                   "not_quantized": "embedding, norms, RoPE, attention scores, K/V cache"}
            record["calibration"] = calib_record
        with phase("save"):
            weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
            external = EXTERNAL_DATA_FILE if weight_bytes > TWO_GB - (64 << 20) or meta.get("external_data") else None
            _save(model, tmp / MODEL_FILE, external)
            del model
            for p in sorted(onnx_dir.iterdir()):
                if p.is_file() and p.name not in (MODEL_FILE, EXTERNAL_DATA_FILE, CONFIG_FILE):
                    shutil.copy2(p, tmp / p.name)
        with phase("check"):
            try:
                onnx.checker.check_model(str(tmp / MODEL_FILE))
            except Exception as e:
                raise DllmError(f"onnx.checker rejected the quantized graph: {e}") from e
        size_after = _graph_bytes(tmp)
        record["size_bytes"] = {"before": size_before, "after": size_after,
                                "ratio": round(size_after / max(size_before, 1), 4)}
        if validate:
            with phase("validate"):
                record["validation"] = _validate(src_path, tmp / MODEL_FILE, onnx_dir, calib_set, config)
                check_validation(record["validation"], method, min_top1)
        else:
            record["validation"] = {"status": "skipped"}
        record["timings_s"] = phase.timings
        with phase("write"):
            new_meta = dict(meta)
            new_meta["quantization"] = record
            new_meta["external_data"] = external
            new_meta["source_export"] = str(onnx_dir.resolve())
            artifact.write_json(tmp / CONFIG_FILE, new_meta)
            artifact.publish(tmp, out)
    except BaseException:
        artifact.discard(tmp)
        raise
    finally:
        phase.close()
    return {"out": str(out), **record}


# ---------------------------------------------------------------------- methods
def _awq(index: GraphIndex, grps, stats, block_size: int, symmetric: bool, clip: bool, progress: bool,
         bits: int = 4) -> dict:
    """Search and fold AWQ scales for every group, then clip every weight; returns the summary."""
    searches = []
    for g in tqdm(grps, desc="awq scales", unit="group", disable=not progress, leave=False):
        st = stats[g.act]
        x = st.sample()
        ws = [index.array(m.weight).astype(np.float32) for m in g.members]
        with alg.small_blas(g.k, max(w.shape[1] for w in ws)):
            r = alg.awq_scale(x, st.abs_mean, ws, block_size, symmetric, bits=bits)
        searches.append((g, r, x))
    for g, r, _ in searches:  # fold after every search: the folds change other groups' upstream weights
        apply_input_scale(index, g, r.scale)
    clip_ratios = []
    if clip:
        for g, r, x in tqdm(searches, desc="awq clip", unit="group", disable=not progress, leave=False):
            xs = x / r.scale
            for m in g.members:
                w = index.array(m.weight).astype(np.float32)
                with alg.small_blas(*w.shape):
                    wc, ratio = alg.awq_clip(xs, w, block_size, symmetric, bits=bits)
                index.set_array(m.weight, wc)
                clip_ratios.append(ratio)
    err_rtn = sum(r.error_rtn for _, r, _ in searches)
    err = sum(r.error for _, r, _ in searches)
    folds: dict[str, int] = {}
    for g, _, _ in searches:
        folds[g.fold] = folds.get(g.fold, 0) + 1
    return {"groups": len(searches), "alpha_grid": [alg.AWQ_GRID[0], alg.AWQ_GRID[-1], len(alg.AWQ_GRID)],
            "alphas": {g.members[0].node: r.alpha for g, r, _ in searches},
            "mean_alpha": round(float(np.mean([r.alpha for _, r, _ in searches])), 3),
            "output_mse_rtn": err_rtn, "output_mse_awq_scale": err,
            "scale_folds": folds, "clip": bool(clip),
            "mean_clip_ratio": round(float(np.mean(clip_ratios)), 4) if clip_ratios else 1.0,
            "calibration_rows_per_group": int(np.mean([x.shape[0] for _, _, x in searches]))}


def _smooth(index: GraphIndex, grps, stats, alpha: float) -> dict:
    if alpha <= 0:
        return {"alpha": 0.0, "groups": 0}
    folds: dict[str, int] = {}
    for g in grps:
        ws = [index.array(m.weight).astype(np.float32) for m in g.members]
        s = alg.smoothquant_scale(stats[g.act].abs_max, ws, alpha)
        apply_input_scale(index, g, s)
        folds[g.fold] = folds.get(g.fold, 0) + 1
    return {"alpha": alpha, "groups": len(grps), "scale_folds": folds}


def _ensure_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as e:
        raise DllmError(f"could not convert the graph from opset {current} to {opset} ({e}); "
                        f"re-export with `dllm-trt export --opset {opset}`") from e


def _int4(model, names, block_size, symmetric, fmt, accuracy_level, bits=4):
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    if fmt == "qdq":
        model = _ensure_opset(model, 21)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
                                       quant_format=QuantFormat.QOperator if fmt == "nbits" else QuantFormat.QDQ,
                                       bits=bits)
    # nodes_to_include only adds to the op types it quantizes anyway: exclude everything else instead.
    keep = set(names)
    exclude = [n.name for n in model.graph.node if n.name and n.name not in keep]
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=cfg)
    q.process()
    return q.model.model


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over the calibration file's feeds."""

    def __init__(self, calib: CalibrationSet, types: dict[str, str]):
        self._it = iter(calib.feeds(32, types))

    def get_next(self):
        return next(self._it, None)


def _int8(model, names, calib: CalibrationSet):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(_Reader, CalibrationDataReader):
        pass

    if any(t.data_type != onnx.TensorProto.FLOAT for t in model.graph.initializer
           if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)):
        model = _ensure_opset(model, 19)  # DequantizeLinear takes fp16 scales from opset 19
    with tempfile.TemporaryDirectory(prefix="dllm-trt-int8-") as d:
        src = save_for_session(model, Path(d), "smoothed.onnx")
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in model.graph.input}
        types = {k: {"float16": "tensor(float16)", "float32": "tensor(float)"}.get(v, v) for k, v in types.items()}
        dst = Path(d) / "int8.onnx"
        large = sum(len(t.raw_data) for t in model.graph.initializer) > TWO_GB - (64 << 20)
        with _root_log_level(logging.ERROR):
            quantize_static(str(src), str(dst), Reader(calib, types), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], nodes_to_quantize=names, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": ["MatMul"]})
        return onnx.load(str(dst), load_external_data=True)


def _fp8(model, mms, stats):
    """Q/DQ (FP8 E4M3FN) on every weight MatMul's input and weight. Scales are in the graph's float
    type (opset 19 ties QuantizeLinear's scale type to its input), so fp16 graphs need no casts."""
    model = _ensure_opset(model, 19)
    index = GraphIndex(model)
    graph = model.graph
    zero = numpy_helper.from_array(alg.fp8_e4m3(np.zeros((), np.float32)), "fp8_zero_point")
    graph.initializer.append(zero)
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    done_acts: dict[str, str] = {}
    for m in mms:
        node = index.nodes[m.node]
        act = node.input[0]
        dtype = numpy_helper.to_array(index.inits[m.weight]).dtype
        if act not in done_acts:
            amax = float(stats[m.act].abs_max.max()) if m.act in stats else 0.0
            sx = numpy_helper.from_array(np.array(max(amax, 1e-6) / alg.FP8_E4M3_MAX, dtype), f"{act}_fp8_scale")
            graph.initializer.append(sx)
            q = onnx.helper.make_node("QuantizeLinear", [act, sx.name, zero.name], [f"{act}_fp8"], name=f"{m.node}_act_q")
            dq = onnx.helper.make_node("DequantizeLinear", [f"{act}_fp8", sx.name, zero.name], [f"{act}_fp8_dq"],
                                       name=f"{m.node}_act_dq")
            new_nodes.setdefault(m.node, []).extend([q, dq])
            done_acts[act] = f"{act}_fp8_dq"
        w = numpy_helper.to_array(index.inits[m.weight]).astype(np.float32)
        sw = (np.maximum(np.abs(w).max(axis=0), 1e-6) / alg.FP8_E4M3_MAX).astype(dtype)
        wq = numpy_helper.from_array(alg.fp8_e4m3(w / sw.astype(np.float32)), f"{m.weight}_fp8")
        sw_t = numpy_helper.from_array(sw, f"{m.weight}_fp8_scale")
        graph.initializer.extend([wq, sw_t])
        dqw = onnx.helper.make_node("DequantizeLinear", [wq.name, sw_t.name], [f"{m.weight}_fp8_dq"], axis=1,
                                    name=f"{m.node}_weight_dq")
        new_nodes.setdefault(m.node, []).append(dqw)
        node.input[0], node.input[1] = done_acts[act], dqw.output[0]
    used = {m.weight for m in mms}
    keep = [t for t in graph.initializer if t.name not in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    ordered = []
    for n in graph.node:
        ordered.extend(new_nodes.get(n.name, []))
        ordered.append(n)
    del graph.node[:]
    graph.node.extend(ordered)
    return model


# ---------------------------------------------------------------------- files and checks
def _graph_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in (MODEL_FILE, EXTERNAL_DATA_FILE) if (folder / f).is_file())


def _save(model: onnx.ModelProto, path: Path, external: str | None) -> None:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0, convert_attribute=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path.parent / external, 0o666 & ~umask)  # onnx writes the data file owner-only
    else:
        onnx.save_model(model, str(path))


def _validate(src: Path, dst: Path, onnx_dir: Path, calib: CalibrationSet | None, config) -> dict:
    """Logits of the source and the quantized graph on masked-diffusion rows: relative error and
    top-1 agreement at the masked positions (where the decode loop reads predictions). Runs on
    CUDA when onnxruntime-gpu is installed, else on the CPU; a graph ONNX Runtime cannot run
    (FP8 on an old build, bf16 on CPU) is reported as skipped, not as a failure."""
    from .graph import cast_feeds, session

    masked = calib is not None and calib.kind == "masked"
    try:
        rows = calib if masked else build_calibration(onnx_dir, "builtin", 16)
        a, b = session(src, prefer_gpu=True), session(dst, prefer_gpu=True)
        types = {i.name: i.type for i in a.get_inputs()}
        shift = 1 if config.logits_shift else 0
        num = den = 0.0
        agree = total = 0
        for n, (feeds, idx) in enumerate(rows.batches(16)):
            if n >= 4:
                break
            feeds = cast_feeds(feeds, types)
            la = a.run(["logits"], feeds)[0].astype(np.float32)
            lb = b.run(["logits"], feeds)[0].astype(np.float32)
            m = rows.arrays["masked"][idx, : la.shape[1]]
            sel = np.zeros_like(m)
            sel[:, : m.shape[1] - shift] = m[:, shift:]  # rows whose logits predict a masked token
            num = max(num, float(np.abs(la - lb).max()))
            den = max(den, float(np.abs(la).max()))
            agree += int((la.argmax(-1) == lb.argmax(-1))[sel].sum())
            total += int(sel.sum())
        provider = b.get_providers()[0]
    except Exception as e:  # ORT raises its own types; report instead of failing a finished quantization
        return {"status": "skipped", "reason": f"ONNX Runtime could not run the graphs: {str(e)[:300]}"}
    return {"status": "ran", "provider": provider,
            "rows": "masked-diffusion calibration rows" if masked else "16 builtin masked rows",
            "logits_max_abs_error_rel": round(num / max(den, 1e-12), 5),
            "top1_agreement_masked": round(agree / max(total, 1), 5), "masked_positions": total}
