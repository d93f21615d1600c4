"""``dllm-trt build`` and ``dllm-trt check-engine``. Registered by the main CLI; TensorRT is imported
only when a command runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .builder import PRECISIONS


def add_engine_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build", help="build a TensorRT / TensorRT-RTX engine from an exported ONNX folder",
        description="Build model.engine from a `dllm-trt export` (or `dllm-trt quantize`) folder into a new folder "
                    "with dllm_config.json (plus an engine record), build.log and the tokenizer files. One "
                    "optimization profile covers batch B, query length L and past length P. TensorRT-RTX builds "
                    "ahead of time, also on a machine without a GPU, for the --compute-capability targets; TensorRT "
                    "builds for the GPU it runs on. Engines are cached by the hash of the ONNX, the options and the "
                    "TensorRT version.")
    p.add_argument("--onnx", required=True, help="folder written by `dllm-trt export` or `dllm-trt quantize`")
    p.add_argument("--out", required=True, help="engine folder to write (replaced if it is an earlier build)")
    p.add_argument("--backend", default="trt-rtx", choices=["trt", "trt-rtx"],
                   help="trt = TensorRT (pip install tensorrt), trt-rtx = TensorRT-RTX "
                        "(pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings); default trt-rtx")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="engine precision (default: what the graph carries: its dtype, or its QDQ quantization). "
                        "TensorRT-RTX is strongly typed: the graph must carry it. TensorRT can also lower an fp32 "
                        "graph to fp16/bf16")
    p.add_argument("--shapes", metavar="B=1:1:1,L=1:64:MAX,P=0:256:MAX",
                   help="min:opt:max of batch B, query length L and past length P (default B=1, L and P up to "
                        "max_positions of the export)")
    p.add_argument("--compute-capability", metavar="8.9,12.0",
                   help="TensorRT-RTX targets (7.5, 8.0, 8.6, 8.9, 12.0, 12.1, or `current`); "
                        "default: TensorRT-RTX's own (its Ampere-and-newer targets)")
    p.add_argument("--plugins", action="store_true",
                   help="register dllm-trt's TensorRT plugin libraries (--plugin-lib, $DLLM_TRT_PLUGIN_PATH or "
                        "dllm_trt/plugins/) before parsing")
    p.add_argument("--plugin-lib", action="append", metavar="PATH", help="a plugin library to register (repeatable)")
    p.add_argument("--opt-level", type=int, choices=range(0, 6), metavar="0-5", help="builder optimization level")
    p.add_argument("--workspace-gib", type=float, help="builder workspace limit in GiB")
    p.add_argument("--cache-dir", help="engine cache (default ~/.cache/dllm-trt/engines or $DLLM_TRT_ENGINE_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the engine cache")
    p.add_argument("--verbose", action="store_true", help="keep TensorRT's verbose messages in build.log")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(func=run_build)

    c = subparsers.add_parser(
        "check-engine", help="check a built engine: record, size, SHA-256, header, version (and load it on a GPU)",
        description="Without a GPU: the engine record in dllm_config.json, the file size and SHA-256, the TensorRT-RTX "
                    "header (magic, size, version, targets), the installed TensorRT version and whether "
                    "get_engine_validity calls it malformed. With a GPU: get_engine_validity's verdict and a "
                    "deserialization.")
    c.add_argument("--engine", required=True, help="folder written by `dllm-trt build`")
    c.add_argument("--no-gpu", action="store_true", help="skip the GPU checks even where a GPU is present")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_check)


def run_build(args: argparse.Namespace) -> int:
    from ..options import finite, require_intact
    from .builder import build_engine

    finite("--workspace-gib", args.workspace_gib, lo=0.0, lo_open=True)
    # the source export as written (sizes and SHA-256): a damaged file must not become a fresh engine with a
    # manifest that vouches for it
    require_intact(Path(args.onnx), full_hash=True)
    log = (lambda s: print(s, file=sys.stderr))
    report = build_engine(args.onnx, args.out, backend=args.backend, precision=args.precision, shapes=args.shapes,
                          plugins=args.plugins, plugin_libs=args.plugin_lib,
                          compute_capabilities=args.compute_capability, opt_level=args.opt_level,
                          workspace_gib=args.workspace_gib, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                          progress=not args.json and sys.stderr.isatty(), log=log, verbose=args.verbose)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        t = report["timings_s"]
        how = ("reused from the cache" if report["cache"] == "hit" else
               f"built in {t.get('build', 0):.2f} s")
        targets = report.get("compute_capabilities")
        print(f"engine   {report['engine']} ({report['bytes'] / 1e6:.1f} MB, {report['backend']} "
              f"{report['backend_version']}, {report['precision']}"
              + (f", compute capability {', '.join(targets)}" if targets else "") + f"): {how}; "
              f"total {t['total']:.2f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .check import check_engine

    report = check_engine(args.engine, use_gpu=not args.no_gpu, raise_on_error=False)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for c in report["checks"]:
            mark = {True: "ok  ", False: "FAIL", None: "-   "}[c["ok"]]
            print(f"{mark} {c['check']:<9} {c['detail']}")
        print(f"{'engine OK' if report['ok'] else 'engine NOT OK'} ({report['level']})")
    return 0 if report["ok"] else 1
