"""``export_onnx``: checkpoint folder -> artefact folder (model.onnx, dllm_config.json, tokenizer).

Phases, each a step of the progress bar: load, trace, save, check, validate, write. The graph is
traced into a scratch folder (the TorchScript exporter spills > 2 GB models into many files),
re-saved into the staging folder with one external data file when the weights exceed the
threshold, checked from disk, validated against PyTorch, and only then published.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx
import torch
from tqdm import tqdm

from ..config import ModelConfig
from ..progress import PhaseProgress
from ..errors import DllmError
from ..models import load_model
from ..contract import (CONFIG_FILE, DREAM_SAMPLER_FILE, EXTERNAL_DATA_FILE, KV_TYPES, MODEL_FILE, SAMPLER_FILE,
                        output_names, tensor_shapes)
from . import artifact
from .checks import check_device_resident, check_graph, initializer_bytes, save_graph
from .graph import apply_contract, drop_repeated_casts, fix_bf16_casts, trace_to_onnx
from .fp16_range import check_fp16_range
from .fused import OPS, check_cuda_ops, lower_fused
from .sampler import build_sampler
from .validate import pick_provider, validate_graph

DTYPES = ("fp32", "fp16", "bf16")
DEFAULT_OPSET = 17
TWO_GB = 2 * 1024**3
_ELEM = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}


def max_opset() -> int:
    """The newest opset torch's TorchScript exporter (the one trace_to_onnx uses) can write."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def export_onnx(model_dir: str | Path, out_dir: str | Path, dtype: str = "fp32", opset: int = DEFAULT_OPSET,
                validate: bool = True, external_data_threshold_bytes: int = TWO_GB, cache: str | None = None,
                progress: bool = True, log=None, tolerance: float | None = None, ops: str = "standard") -> dict[str, Any]:
    """Export a Hugging Face dLLM checkpoint folder to an ONNX artefact folder; returns a report dict.

    ``cache`` only records the default cache mode in the generation defaults: one graph serves
    every cache mode. ``log`` receives the validation table (default: printed above the bar).
    ``tolerance`` overrides the relative error allowed by validation (default per dtype, see
    ``validate.TOLERANCE``). The graph follows the one contract of dllm_trt/contract.py. ``ops``:
    "standard" (ONNX ops only: every engine), "ort" (ONNX Runtime's fused contrib ops, export/fused.py) or
    "ort-cuda" (those plus the project's bf16 CUDA ops for ONNX Runtime's CUDA provider).
    """
    model_dir, out = Path(model_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise DllmError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if ops not in OPS:
        raise DllmError(f"unknown --ops {ops!r}; use one of {', '.join(OPS)}")
    if opset < 14:
        raise DllmError(f"opset {opset} is too old for this graph; use 14 or newer (default {DEFAULT_OPSET})")
    if opset > max_opset():
        raise DllmError(f"--opset {opset} is newer than torch {torch.__version__}'s TorchScript exporter writes "
                        f"({max_opset()}); use 14..{max_opset()} (default {DEFAULT_OPSET})")
    artifact.check_out_dir(out, model_dir)
    if validate:
        pick_provider(dtype)  # fail before a long trace when this machine cannot validate (bf16 without CUDA)
    phases = ["load", "trace", "save", "check"] + (["validate"] if validate else []) + ["write"]
    phase = PhaseProgress(phases, "export", progress)
    say = log or (lambda s: tqdm.write(s) if progress else print(s))

    tmp = artifact.staging_dir(out)
    try:
        with phase("load"):
            gen_defaults = artifact.generation_defaults(model_dir, ModelConfig.from_pretrained(model_dir), cache)
            model, config = load_model(model_dir, dtype=dtype)
            if ops == "ort-cuda":
                check_cuda_ops(config, dtype)
            if dtype == "fp16":
                check_fp16_range(model, config, str(model_dir))

        with phase("trace"):
            scratch = tmp / ".trace"
            scratch.mkdir()
            elem = _ELEM[dtype]
            meta = {"dllm_trt.format": "dllm-trt artefact; see dllm_config.json", "dllm_trt.dtype": dtype,
                    "dllm_trt.present": "current tokens only"}
            trace_to_onnx(model, config, scratch / MODEL_FILE, opset, ops)
            proto = onnx.load(str(scratch / MODEL_FILE), load_external_data=True)
            if ops != "standard":
                lower_fused(proto)
                meta["dllm_trt.ops"] = {"ort": "ort (com.microsoft contrib ops: ONNX Runtime only)",
                                        "ort-cuda": "ort-cuda (com.microsoft contrib ops and dllm_trt.cuda ops: "
                                                    "ONNX Runtime's CUDA provider with libdllm_ort_cuda.so)"}[ops]
            if dtype == "bf16":
                fix_bf16_casts(proto)
            drop_repeated_casts(proto)
            apply_contract(proto, config, elem, meta)

        with phase("save"):
            weight_bytes = initializer_bytes(proto)
            external = EXTERNAL_DATA_FILE if weight_bytes > external_data_threshold_bytes else None
            save_graph(proto, tmp / MODEL_FILE, external)
            del proto
            shutil.rmtree(scratch)

        with phase("check"):
            shapes = tensor_shapes(config, KV_TYPES[dtype])
            check_graph(tmp / MODEL_FILE, {n: shapes[n][1] for n in output_names(config.num_layers)},
                        strict=ops == "standard")
            check_device_resident(tmp / MODEL_FILE)

        if validate:
            with phase("validate"):
                validation = validate_graph(model, config, str(tmp / MODEL_FILE), dtype, log=say, tolerance=tolerance)
        else:
            validation = {"status": "skipped", "reason": "--no-validate"}

        with phase("write"):
            copied = artifact.copy_tokenizer_files(model_dir, tmp)
            # sampling at temperature > 0 on the device, from the logits the step leaves there
            onnx.save(build_sampler(config.vocab_size, config.mask_token_id), str(tmp / SAMPLER_FILE))
            if config.family == "dream":  # Dream's sample_tokens: its top-p / top-k order and filtered statistics
                onnx.save(build_sampler(config.vocab_size, config.mask_token_id, "dream"), str(tmp / DREAM_SAMPLER_FILE))
            tokenizer = "tokenizer.json" if "tokenizer.json" in copied else None
            if tokenizer is None:
                say(f"warning: {model_dir} has no tokenizer.json; the artefact will take token ids only")
            dllm_config = artifact.build_dllm_config(config, dtype, opset, external, validation, tokenizer, gen_defaults,
                                                     source=str(model_dir.resolve()), torch_version=torch.__version__,
                                                     chat_template=artifact.read_chat_template(model_dir),
                                                     generation_sources=artifact.generation_sources(model_dir), ops=ops)
            artifact.write_json(tmp / CONFIG_FILE, dllm_config)
            artifact.publish(tmp, out)
    except BaseException:
        artifact.discard(tmp)
        raise
    finally:
        phase.close()
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return {"out": str(out), "family": config.family, "model_type": config.model_type, "dtype": dtype,
            "kv_dtype": KV_TYPES[dtype], "opset": opset, "ops": ops, "weight_bytes": weight_bytes, "external_data": external,
            "files": files, "validation": validation, "timings_s": phase.timings}
