"""``dllm-trt calibrate`` and ``dllm-trt quantize``. Registered by the main CLI; nothing heavy is
imported until a command runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import DllmError

from .data import DEFAULT_RATIOS

METHODS = ("int4-rtn", "int4-awq", "int8", "fp8")


def add_calibration_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="build masked-diffusion calibration batches (.npz) for quantization",
        description="Calibration rows shaped like the runtime's forwards: the prompt, then the answer region "
                    "(answer + EOS padding to gen_length) partly masked at each --mask-ratios value, in the block "
                    "layout of the model's decode strategy (semi-AR blocks for LLaDA/Dream, block-aligned and "
                    "block-causal for block diffusion). Saved as complete graph feeds in an .npz (no pickle). "
                    "--plain writes unmasked prompt + answer rows instead (the autoregressive habit), for comparison.")
    p.add_argument("--model", required=True, help="checkpoint folder or `dllm-trt export` folder (tokenizer.json needed)")
    p.add_argument("--data", default="builtin",
                   help='`builtin` (the synthetic tasks, held-out prompts excluded) or a JSONL file of '
                        '{"prompt": ..., "answer": ...} or {"text": ...} lines (default builtin)')
    p.add_argument("--samples", type=int, default=128, help="examples to use (each gives one row per mask ratio)")
    p.add_argument("--mask-ratios",
                   help="masked fraction of the block being denoised, comma-separated (default 0.25,0.5,0.75,1.0)")
    p.add_argument("--plain", action="store_true", help="unmasked prompt + answer rows (contrast; not recommended)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_calibrate, output_files=("out",))

    q = subparsers.add_parser(
        "quantize", help="quantize an exported folder: INT4 weight-only (RTN / AWQ), INT8 or FP8 QDQ",
        description="Quantize the linear layers of a `dllm-trt export` folder into a new folder the same runtime "
                    "drives. int4-rtn / int4-awq: INT4 weight-only, blockwise (MatMulNBits, or --format qdq for "
                    "TensorRT); int8: SmoothQuant + W8A8 QDQ; fp8: E4M3 W8A8 QDQ (for TensorRT; ORT CPU simulates it).")
    q.add_argument("--onnx", required=True, help="folder written by `dllm-trt export`")
    q.add_argument("--out", required=True, help="quantized folder to write (replaced if it is an earlier export)")
    q.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    q.add_argument("--calib", help="calibration .npz from `dllm-trt calibrate` (needed by int4-awq, int8, fp8)")
    q.add_argument("--block-size", type=int, help="INT4 block along K (power of two >= 16; default 32)")
    q.add_argument("--format", choices=["nbits", "qdq"],
                   help="INT4 graph form: nbits = com.microsoft MatMulNBits (ONNX Runtime), qdq = blockwise "
                        "DequantizeLinear, opset 21 (TensorRT); default nbits")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                     help="INT4 without zero points (default for --format qdq)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="INT4 with zero points (default for --format nbits)")
    q.add_argument("--bits", type=int, choices=[2, 4],
                   help="weight bits of int4-rtn / int4-awq with --format nbits (2 = stress test; default 4)")
    q.add_argument("--keep-lm-head", action="store_true", help="leave the LM head in floating point")
    q.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=None,
                   help="MatMulNBits accuracy_level (4 = int8 compute on CPU: faster, slightly less exact)")
    q.add_argument("--smooth-alpha", type=float, help="int8 SmoothQuant migration strength (0 = off; default 0.5)")
    q.add_argument("--clip", action="store_true",
                   help="int4-awq: add AWQ's per-block weight clipping search (off by default: it hurt end-to-end "
                        "accuracy on the tiny checkpoints)")
    q.add_argument("--no-validate", action="store_true", help="skip the logits comparison with the source graph")
    q.add_argument("--min-top1", type=float, default=0.95,
                   help="fail (write nothing) when validation's top-1 agreement at masked positions is lower "
                        "(default 0.95)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=run_quantize)


MAX_SAMPLES = 100_000


def run_calibrate(args: argparse.Namespace) -> int:
    from ..options import positive_int
    from .data import build_calibration, save_calibration

    positive_int("--samples", args.samples)
    if args.samples > MAX_SAMPLES:  # each sample is a row per mask ratio, held in memory with its activations
        raise DllmError(f"--samples {args.samples} is more than {MAX_SAMPLES}; calibration needs hundreds (the "
                        "default is 128), not millions")
    positive_int("--seed", args.seed, minimum=0)
    if args.plain and args.mask_ratios is not None:
        raise DllmError("--mask-ratios applies to masked calibration rows; --plain rows have no masks: drop one")
    ratios = args.mask_ratios if args.mask_ratios is not None else DEFAULT_RATIOS
    calib = build_calibration(args.model, args.data, args.samples, ratios, plain=args.plain, seed=args.seed)
    report = save_calibration(calib, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ratios = "plain (unmasked)" if report["kind"] == "plain" else f"mask ratios {report['mask_ratios']}"
        print(f"calibration for {report['model_type']}: {report['samples']} samples -> {report['rows']} rows "
              f"(max length {report['max_len']}, {ratios}, {report['masked_fraction_of_answer']:.0%} of answer "
              f"tokens masked) -> {report['out']} ({report['bytes'] / 1e6:.1f} MB)")
    return 0


def check_method_options(args: argparse.Namespace) -> None:
    """Options of one quantization method given with another are refused, not ignored."""
    int4 = args.method in ("int4-rtn", "int4-awq")
    nbits = int4 and (args.format or "nbits") == "nbits"
    applies = {"--block-size": (args.block_size is not None, int4, "int4-rtn / int4-awq"),
               "--format": (args.format is not None, int4, "int4-rtn / int4-awq"),
               "--symmetric / --asymmetric": (args.symmetric is not None, int4, "int4-rtn / int4-awq"),
               "--bits": (args.bits is not None, nbits, "int4-rtn / int4-awq with --format nbits"),
               "--accuracy-level": (args.accuracy_level is not None, nbits, "int4-rtn / int4-awq with --format nbits"),
               "--smooth-alpha": (args.smooth_alpha is not None, args.method == "int8", "int8"),
               "--clip": (args.clip, args.method == "int4-awq", "int4-awq")}
    for option, (given, ok, where) in applies.items():
        if given and not ok:
            raise DllmError(f"{option} applies to --method {where} only (here --method {args.method}"
                            f"{'' if args.method not in ('int4-rtn', 'int4-awq') else ' --format ' + (args.format or 'nbits')}); "
                            "drop it")


def run_quantize(args: argparse.Namespace) -> int:
    from ..options import require_intact
    from .quantizer import quantize

    check_method_options(args)
    require_intact(Path(args.onnx), full_hash=True)  # the source as written: sizes and SHA-256
    log = (lambda s: print(s, file=sys.stderr)) if args.json else None
    report = quantize(args.onnx, args.out, args.method, calib=args.calib,
                      block_size=32 if args.block_size is None else args.block_size, symmetric=args.symmetric,
                      fmt=args.format or "nbits", keep_lm_head=args.keep_lm_head, accuracy_level=args.accuracy_level,
                      smooth_alpha=0.5 if args.smooth_alpha is None else args.smooth_alpha, awq_clip=args.clip,
                      validate=not args.no_validate, progress=not args.json and sys.stderr.isatty(),
                      bits=4 if args.bits is None else args.bits, log=log, min_top1=args.min_top1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(r: dict) -> str:
    size = r["size_bytes"]
    q = r["quantized"]
    lines = [f"quantized {r['method']} -> {r['out']}",
             f"  format      {r['format']}",
             f"  weights     {r['weights']}; activations {r['activations']}",
             f"  quantized   {q['nodes']} MatMuls ({q['weights']:,} weights), LM head {q['lm_head']}; "
             f"not quantized: {q['not_quantized']}",
             f"  size        {size['before'] / 1e6:.2f} MB -> {size['after'] / 1e6:.2f} MB ({size['ratio']:.2f}x)",
             f"  calibration {r['calibration']['kind']}"
             + (f" ({r['calibration']['rows']} rows)" if r['calibration'].get('rows') else "")]
    if "awq" in r:
        a = r["awq"]
        lines.append(f"  awq         {a['groups']} groups, mean alpha {a['mean_alpha']}, output MSE on calibration "
                     f"{a['output_mse_rtn']:.3g} (RTN) -> {a['output_mse_awq_scale']:.3g} (scaled), mean clip "
                     f"{a['mean_clip_ratio']}; folds {a['scale_folds']}")
    if "smoothquant" in r:
        s = r["smoothquant"]
        lines.append(f"  smoothquant alpha {s['alpha']}, {s['groups']} groups")
    v = r.get("validation", {})
    if v.get("status") == "ran":
        lines.append(f"  validation  logits max error {v['logits_max_abs_error_rel']:.2e} (relative), top-1 agreement "
                     f"{v['top1_agreement_masked']:.2%} on {v['masked_positions']} masked positions")
    else:
        lines.append(f"  validation  {v.get('status')} {v.get('reason', '')}")
    return "\n".join(lines)
