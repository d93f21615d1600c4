"""The ``export`` subcommand. The main CLI calls :func:`add_export_commands`; torch is imported only
when the command runs, so registering it costs nothing where only the runtime is installed."""
from __future__ import annotations

import argparse
import json
import sys


CACHE_CHOICES = ("none", "prefix", "dual", "block", "sub_block")


def add_export_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``dllm-trt export`` on the main parser's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "export", help="export a checkpoint folder to an ONNX artefact folder (validated against PyTorch)",
        description="Export a Hugging Face dLLM checkpoint (LLaDA, Dream, block diffusion) to model.onnx + "
                    "dllm_config.json + tokenizer files. One graph serves the prefill and every cache mode "
                    "(contract: dllm_trt/contract.py); it selects the top-1 token of the rows the step reads, and "
                    "present.* hold only the current tokens' keys/values.")
    p.add_argument("--model", required=True, help="checkpoint folder (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="artefact folder to write (replaced if it is an earlier export)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights and K/V dtype (default fp32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--cache", default=None, choices=CACHE_CHOICES,
                   help="default cache mode recorded in the generation defaults (the graph serves all modes)")
    p.add_argument("--ops", default="standard", choices=["standard", "ort", "ort-cuda"],
                   help="standard: ONNX ops only, for every engine (default); ort: ONNX Runtime's fused contrib ops "
                        "(SkipSimplifiedLayerNormalization, RotaryEmbedding, MultiHeadAttention, packed q|k|v and "
                        "gate|up): fewer kernels on ORT CUDA, not buildable with TensorRT; ort-cuda (experimental, not "
                        "faster than ort yet): those plus the project's bf16 CUDA ops (CacheAttention, SiluMul; "
                        "ORT's CUDA provider with libdllm_ort_cuda.so from `python -m dllm_trt.plugins.ort_cuda_build`)")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--tolerance", type=float, default=None, metavar="REL",
                   help="max relative error max|ort-torch|/max|torch| (default fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    p.add_argument("--external-data-threshold", type=int, default=2 * 1024**3, metavar="BYTES",
                   help="store weights in model.onnx.data above this size (default 2 GiB)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    from ..options import finite, positive_int
    from .onnx_export import export_onnx

    finite("--tolerance", args.tolerance, lo=0.0, lo_open=True)
    positive_int("--external-data-threshold", args.external_data_threshold, minimum=0)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else None
    report = export_onnx(args.model, args.out, dtype=args.dtype, opset=args.opset, validate=not args.no_validate,
                         external_data_threshold_bytes=args.external_data_threshold, cache=args.cache,
                         tolerance=args.tolerance, ops=args.ops,
                         progress=not args.json and sys.stderr.isatty(), log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        v = report["validation"]
        status = "validated" if v.get("status") == "passed" else "NOT validated (--no-validate)"
        size = sum(report["files"].values())
        print(f"exported {report['model_type']} ({report['dtype']}) to {report['out']}: "
              f"{', '.join(report['files'])} ({size / 1e6:.1f} MB), {status}")
    return 0
