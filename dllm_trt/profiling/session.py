"""One profiling session: open the backend, load the prompts, measure every grid point, assemble the report."""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from ..errors import DllmError
from .memory import device_memory, host_description, host_peak_rss_mb
from .runner import load_prompts, measure, open_backend, settings_dict
from .sweep import apply, grid, label, mark, parse_sweep

REPORT_VERSION = 1


def _versions(backend_name: str, backend=None) -> dict:
    import numpy

    v = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        from .. import __version__

        v["dllm_trt"] = __version__
    except ImportError:
        pass
    if backend_name == "ort":
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    elif backend_name == "trt":
        rec = getattr(backend, "engine_record", None) or {}
        v[rec.get("backend", "trt")] = rec.get("backend_version")
    else:
        import torch

        v["torch"] = torch.__version__
    return v


def profile_engine(args: argparse.Namespace, backend=None) -> dict:
    """Everything ``dllm-trt profile`` measures, as one JSON-able dict (see the command's help)."""
    from ..runtime.settings import generation_config_from_args as generation_config

    engine = Path(args.engine)
    spec = parse_sweep(args.sweep)
    if args.warmup < 0 or args.repeat < 1 or args.batch < 1:
        raise DllmError("need --warmup >= 0, --repeat >= 1 and --batch >= 1")
    backend = backend or open_backend(engine, args.backend, args.provider, args.threads, args.dtype)
    cfg = backend.config
    synthetic = args.synthetic_prompt_len is not None
    prompts = load_prompts(args.prompts, args.n, engine, cfg, args.synthetic_prompt_len, seed=args.prompt_seed)
    if synthetic:
        args.no_stop = True  # random weights put EOS anywhere: decode the full length every time
    base = generation_config(engine, args)
    points = grid(spec)
    n_chunks = -(-len(prompts.ids) // args.batch)
    from tqdm import tqdm

    bar = tqdm(total=len(points) * (args.warmup + args.repeat * n_chunks), desc="profile", unit="req",
               disable=args.no_progress or None, leave=False)
    runs = []
    try:
        for point in points:
            run = {"point": point, "label": label(point)}
            bar.set_postfix_str(run["label"])
            done = bar.n
            try:
                gen = apply(base, point, cfg, strategy_given=args.strategy is not None)
                run["settings"] = settings_dict(gen.resolved(cfg.attention))
                run.update(measure(backend, prompts, gen, args.warmup, args.repeat, args.batch, progress=bar.update))
            except DllmError as e:  # an invalid combination of the grid: reported, the others still run
                runs.append({**run, "status": "skipped", "error": str(e), "settings": run.get("settings")})
                bar.update(done + args.warmup + args.repeat * n_chunks - bar.n)
                continue
            run["status"], run["error"] = "ok", None
            runs.append(run)
    finally:
        bar.close()
    marked, rule = mark(runs)
    dev = device_memory(backend)
    on_cuda = args.provider == "cuda" or args.backend == "trt"
    return {
        "report_version": REPORT_VERSION,
        "tool": "dllm-trt profile",
        "date": time.strftime("%Y-%m-%d"),
        "engine": str(engine),
        "backend": {"ort": "onnxruntime", "trt": "tensorrt"}.get(args.backend, "torch"),
        "provider": args.provider,
        "device": dev["device"] if on_cuda else host_description(),
        "host": host_description(),
        "versions": _versions(args.backend, backend),
        "model": {"family": cfg.family, "attention": cfg.attention, "layers": cfg.num_layers,
                  "hidden": cfg.hidden_size, "vocab": cfg.vocab_size, "block_size": cfg.block_size},
        "prompts": prompts.describe() | {"synthetic_prompt_len": args.synthetic_prompt_len},
        "batch": args.batch,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "base_settings": settings_dict(base),
        "memory": {"host_peak_rss_mb": host_peak_rss_mb(), "device": dev},
        "sweep": {"keys": list(spec), "values": spec, "marked": marked, "rule": rule,
                  "best_exact_match": max((r["exact_match"] for r in runs
                                           if r["status"] == "ok" and r["exact_match"] is not None), default=None)},
        "runs": runs,
    }
