"""Accuracy of the quantized tiny checkpoints on ONNX Runtime CPU: fp32 vs INT8, INT4 (RTN, AWQ), FP8,
each calibration-based method with masked-diffusion calibration and with plain (unmasked) calibration.

    python benchmarks/quantization_accuracy.py [--n 200] [--out benchmarks/quantization_cpu.md]

For each checkpoint in samples/checkpoints/: export (fp32), build masked and plain calibration
(128 builtin samples, disjoint from the held-out prompts), quantize, and measure on the ``n``
held-out prompts of samples/evaluate_tiny.py (``make_examples(n, seed=12345)``):

- exact match with one token per step and with Fast-dLLM threshold 0.9, and tokens per forward
  at 0.9 (samples/evaluate_tiny.py's ``evaluate()`` on the ORT backend);
- fidelity at the masked positions of masked-diffusion rows built from the same held-out prompts
  (4 mask ratios, block layout of the model): top-1 agreement with fp32 and KL(fp32 || quantized).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "samples"))

from evaluate_tiny import EVAL_SEED, decodings, evaluate  # noqa: E402

from dllm_trt.calibration.data import build_calibration, save_calibration  # noqa: E402
from dllm_trt.runtime import TextTokenizer  # noqa: E402
from dllm_trt.tasks import make_examples  # noqa: E402

CHECKPOINTS = ("llada-tiny", "dream-tiny", "bd-tiny")
# (label, method, calibration kind, extra quantize options)
CONFIGS = [
    ("fp32", None, None, {}),
    ("INT8 W8A8 QDQ (SmoothQuant)", "int8", "masked", {}),
    ("INT8 W8A8 QDQ (SmoothQuant)", "int8", "plain", {}),
    ("INT4 RTN, MatMulNBits", "int4-rtn", None, {}),
    ("INT4 RTN, QDQ (TensorRT form)", "int4-rtn", None, {"fmt": "qdq"}),
    ("INT4 AWQ, MatMulNBits", "int4-awq", "masked", {}),
    ("INT4 AWQ, MatMulNBits", "int4-awq", "plain", {}),
    ("FP8 E4M3 QDQ (simulated on CPU)", "fp8", "masked", {}),
    ("FP8 E4M3 QDQ (simulated on CPU)", "fp8", "plain", {}),
]
# The stress test: 2-bit weights (MatMulNBits bits=2), where the tiny models finally lose accuracy
# and the methods separate.
STRESS = [
    ("INT2 RTN", "int4-rtn", None, {"bits": 2}),
    ("INT2 AWQ", "int4-awq", "masked", {"bits": 2}),
    ("INT2 AWQ", "int4-awq", "plain", {"bits": 2}),
    ("INT2 AWQ + clip search", "int4-awq", "masked", {"bits": 2, "awq_clip": True}),
]


def fidelity(ref_dir: Path, q_dir: Path, rows) -> dict:
    """Top-1 agreement and KL(ref || q) of the predictions at masked positions (shift-aware)."""
    from dllm_trt.calibration.graph import cast_feeds, session

    a, b = session(ref_dir / "model.onnx"), session(q_dir / "model.onnx")
    types = {i.name: i.type for i in a.get_inputs()}
    shift = 1 if json.loads((ref_dir / "dllm_config.json").read_text())["model_config"]["logits_shift"] else 0
    agree = total = 0
    kl = err2 = ref2 = 0.0
    for feeds, idx in rows.batches(64):
        feeds = cast_feeds(feeds, types)
        la = a.run(["logits"], feeds)[0].astype(np.float64)
        lb = b.run(["logits"], feeds)[0].astype(np.float64)
        masked = rows.arrays["masked"][idx, : la.shape[1]]
        sel = np.zeros_like(masked)
        sel[:, : masked.shape[1] - shift] = masked[:, shift:]
        pa, pb = la[sel], lb[sel]
        pa -= pa.max(-1, keepdims=True)
        pb -= pb.max(-1, keepdims=True)
        lpa = pa - np.log(np.exp(pa).sum(-1, keepdims=True))
        lpb = pb - np.log(np.exp(pb).sum(-1, keepdims=True))
        kl += float((np.exp(lpa) * (lpa - lpb)).sum())
        err2 += float(((pa - pa.mean(-1, keepdims=True)) - (pb - pb.mean(-1, keepdims=True))).__pow__(2).sum())
        ref2 += float((pa - pa.mean(-1, keepdims=True)).__pow__(2).sum())
        agree += int((pa.argmax(-1) == pb.argmax(-1)).sum())
        total += int(sel.sum())
    return {"top1_agreement": agree / max(total, 1), "kl": kl / max(total, 1), "positions": total,
            "logit_rel_rmse": (err2 / max(ref2, 1e-30)) ** 0.5}


def run(n: int, workdir: Path, samples: int, configs=CONFIGS, log=print) -> list[dict]:
    from dllm_trt.calibration.quantizer import quantize
    from dllm_trt.export import export_onnx
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    results = []
    held_out = workdir / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n"
                                for e in make_examples(n, EVAL_SEED)))
    for name in CHECKPOINTS:
        ckpt = REPO / "samples" / "checkpoints" / name
        ref = workdir / name
        if not (ref / "dllm_config.json").is_file():
            export_onnx(ckpt, ref, progress=False, log=lambda s: None)
        calib = {}
        for kind in ("masked", "plain"):
            path = workdir / f"{name}-{kind}.npz"
            if not path.is_file():
                # The same number of rows for both: 4 mask ratios per masked sample, 4x the samples when plain.
                c = build_calibration(ref, "builtin", samples * (4 if kind == "plain" else 1), plain=kind == "plain")
                save_calibration(c, path)
            calib[kind] = path
        fid_rows = build_calibration(ref, held_out, n, seed=1)  # masked rows of the held-out prompts
        settings = json.loads((ckpt / "dllm_generation.json").read_text())
        tok = TextTokenizer(ref)
        fp32_size = (ref / "model.onnx").stat().st_size
        for label, method, kind, opts in configs:
            t0 = time.perf_counter()
            if method is None:
                qdir, report = ref, {}
            else:
                tag = "-".join(f"{k}{v}" for k, v in sorted(opts.items()))
                qdir = workdir / f"{name}-{method}-{kind or 'none'}-{tag}"
                report = quantize(ref, qdir, method, calib=calib.get(kind), progress=False, log=lambda s: None, **opts)
            qs = time.perf_counter() - t0
            backend = OrtBackend.from_pretrained(qdir)
            row = {"model": name, "label": label, "method": method or "fp32", "calibration": kind or "-",
                   "size_mb": (qdir / "model.onnx").stat().st_size / 1e6, "fp32_size_mb": fp32_size / 1e6,
                   "quantize_s": round(qs, 1)}
            for key, (_, s) in decodings(backend.config.family, settings).items():
                s = {k: v for k, v in s.items() if k not in ("mask_token_id", "eos_token_id")}
                r = evaluate(backend, tok, n, s)
                row[key] = {"exact_match": r["exact_match"], "tokens_per_forward": r["tokens_per_forward"]}
            row["fidelity"] = fidelity(ref, qdir, fid_rows) if method else {"top1_agreement": 1.0, "kl": 0.0}
            if "awq" in report:
                row["awq_mean_alpha"] = report["awq"]["mean_alpha"]
            del backend
            results.append(row)
            log(f"{name:11s} {label:34s} {row['calibration']:7s} em {row['one_token_per_step']['exact_match']:.3f}/"
                f"{row['threshold_0.9']['exact_match']:.3f} tpf {row['threshold_0.9']['tokens_per_forward']:.2f} "
                f"top1 {row['fidelity']['top1_agreement']:.4f} kl {row['fidelity']['kl']:.2e}")
    return results


STRESS_TEXT = ("Stress test, 2-bit weights (MatMulNBits bits=2, block 32, asymmetric): the only setting in which "
               "the tiny models lose accuracy, so the one that separates the methods. Differences of 1-2 points are "
               "within the noise of 200 prompts.")


def table(results: list[dict], n: int) -> str:
    lines = ["| model | method | calibration | model.onnx | exact match, 1 token/step | exact match, threshold 0.9 "
             "| tokens/forward @0.9 | top-1 agreement at [MASK] | KL(fp32 ‖ quant) at [MASK] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        a, b = r["one_token_per_step"], r["threshold_0.9"]
        kl = r["fidelity"]["kl"]
        lines.append(f"| {r['model']} | {r['label']} | {r['calibration']} | {r['size_mb']:.2f} MB | "
                     f"{a['exact_match'] * 100:.1f}% | {b['exact_match'] * 100:.1f}% | {b['tokens_per_forward']:.2f} | "
                     f"{r['fidelity']['top1_agreement'] * 100:.2f}% | {'0' if kl == 0 else f'{kl:.1e}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="held-out prompts (make_examples(n, seed=12345))")
    ap.add_argument("--samples", type=int, default=128, help="calibration samples (x4 mask ratios for masked)")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--workdir", type=Path, help="keep the exports here (default: a temporary folder)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dllm-trt-quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        results = run(args.n, work, args.samples, CONFIGS, log=say)
        stress = run(args.n, work, args.samples, STRESS, log=say)
        elapsed = time.perf_counter() - t0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    import onnxruntime

    cmd = "python benchmarks/quantization_accuracy.py" + (f" --n {args.n}" if args.n != 200 else "") + \
        (f" --samples {args.samples}" if args.samples != 128 else "") + (f" --out {args.out}" if args.out else "")
    header = (f"Measured with `{cmd}` on {platform.machine()} CPU, ONNX Runtime {onnxruntime.__version__} "
              f"(CPUExecutionProvider), {time.strftime('%Y-%m-%d')}, {elapsed / 60:.1f} min. "
              f"{args.n} held-out prompts; INT4 block size 32 (asymmetric MatMulNBits, symmetric QDQ); "
              f"calibration: {args.samples} builtin samples, masked = 4 mask ratios (0.25, 0.5, 0.75, 1.0) "
              "in the model's block layout, plain = unmasked prompt + answer from 4x the samples (the same number of "
              "rows). Exact match and tokens/forward come from samples/evaluate_tiny.py's evaluate() on the ORT "
              "backend; top-1 agreement and KL compare the logits with fp32 at the [MASK] positions of masked rows "
              "built from the held-out prompts (the predictions the decode loop reads).")
    text = table(results, args.n) + "\n\n" + STRESS_TEXT + "\n\n" + table(stress, args.n)
    print(header + "\n\n" + text)
    if args.out:
        args.out.write_text("# Quantization accuracy on CPU (tiny checkpoints)\n\n" + header + "\n\n" + text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results + stress, indent=2) + "\n")


if __name__ == "__main__":
    main()
