"""``dllm-trt serve``: the OpenAI-compatible server (uvicorn, or Ray Serve replicas)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import DllmError


def add_serving_commands(sub) -> None:
    from ..runtime.settings import STRATEGIES, strategy_arg

    p = sub.add_parser("serve", help="OpenAI-compatible server with continuous batching (uvicorn or Ray Serve)",
                       description="Serve an exported folder (or a `build` folder with --backend trt) on "
                                   "/v1/completions, /v1/chat/completions, /v1/models, /health and /metrics. "
                                   "Concurrent requests share the decode batch (a new one joins at the next step). "
                                   "With --replicas > 1, --autoscale, --address, --gpus-per-replica, --cpus-per-replica "
                                   "or --ray the model runs as Ray Serve replicas; see docs/serving.md.")
    p.add_argument("--engine", required=True, help="folder written by `dllm-trt export` (or `build`)")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"])
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime provider (--backend ort)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed when ready)")
    p.add_argument("--model-name", help="the model id clients send (default: the engine folder's name)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together per replica (batch slots)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for a slot before 429")
    p.add_argument("--max-model-len", type=int, help="prompt + max_tokens limit (default: the engine's shape range); "
                   "the cache holds max-batch x this many positions")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (> 1 runs on Ray)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray: GPUs per replica (fractions share one)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray: CPUs per replica")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="Ray: autoscale between MIN and MAX replicas")
    p.add_argument("--address", help="Ray: join this cluster (e.g. auto, or HEAD_IP:6379) instead of a local Ray")
    p.add_argument("--ray", action="store_true", help="run on Ray Serve even with one replica")
    p.add_argument("--gen-length", type=int, help="default max_tokens")
    p.add_argument("--block-length", type=int)
    p.add_argument("--steps", type=int, help="denoising steps per --gen-length (scaled per request)")
    p.add_argument("--strategy", type=strategy_arg, choices=list(STRATEGIES))
    p.add_argument("--threshold", type=float)
    p.add_argument("--factor", type=float)
    p.add_argument("--cache", choices=["none", "prefix", "dual", "block", "sub_block"])
    p.add_argument("--sub-block-length", type=int)
    p.add_argument("--temperature", type=float, help="default temperature (requests may set their own)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-stop", action="store_true", help="do not stop at EOS")
    from ..options import add_method_options

    add_method_options(p)  # the decoding methods' knobs and the cache-refresh policies (issue 13)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--json", action="store_true", help="print the ready line as JSON")
    p.set_defaults(func=cmd_serve)


def _autoscale(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        lo, hi = (int(x) for x in value.split(":"))
    except ValueError:
        raise DllmError(f"--autoscale {value!r}: give MIN:MAX replicas, e.g. 1:4") from None
    if not 0 <= lo <= hi or hi < 1:
        raise DllmError(f"--autoscale {value!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo, hi


def options_from_args(args: argparse.Namespace):
    from ..options import check_decode_values, positive_int, require_intact
    from .service import DECODE_FIELDS, ServeOptions

    check_decode_values(args)
    positive_int("--max-batch", args.max_batch)
    positive_int("--max-queue", args.max_queue, minimum=0)
    positive_int("--max-model-len", args.max_model_len)
    positive_int("--replicas", args.replicas)
    if args.gpus_per_replica < 0 or args.cpus_per_replica < 0:
        raise DllmError("--gpus-per-replica and --cpus-per-replica must be >= 0")
    if not 0 <= args.port <= 65535:
        raise DllmError(f"--port {args.port} is out of range 0..65535")
    engine = Path(args.engine)
    if not engine.is_dir():
        raise DllmError(f"--engine {engine} is not a folder; pass a folder written by `dllm-trt export` or `build`")
    require_intact(engine)
    decode = {f: getattr(args, f) for f in DECODE_FIELDS if getattr(args, f, None) is not None}
    return ServeOptions(str(engine), args.backend, args.provider, args.max_batch, args.max_queue, args.max_model_len,
                        args.model_name, decode, args.no_stop)


def _ready(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
    else:
        print(f"serving  {report['model']} at {report['url']}/v1  [{report['backend']}]  max_batch "
              f"{report['max_batch']}  replicas {report['replicas']}  (Ctrl-C stops)", flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    autoscale = _autoscale(args.autoscale)
    use_ray = args.ray or args.replicas > 1 or autoscale is not None or args.address is not None or \
        args.gpus_per_replica > 0 or args.cpus_per_replica != 1.0
    if use_ray and args.gpus_per_replica == 0 and (args.backend == "trt" or args.provider == "cuda"):
        raise DllmError("on Ray Serve a replica sees only the GPUs it asks for: give --gpus-per-replica "
                        "(e.g. 1) with --provider cuda or --backend trt")
    if use_ray:
        return _serve_ray(args, opts, autoscale)
    from .openai_api import build_app
    from .server import bind, serve_forever, url_of
    from .service import Service

    sock = bind(args.host, args.port)
    service = Service(opts)
    try:
        _ready({"url": url_of(sock), "model": service.model, "backend": service.backend_name,
                "max_batch": opts.max_batch, "replicas": 1, "ray": False}, args.json)
        serve_forever(build_app(service), sock, args.log_level)
    finally:
        service.close()
    return 0


def _serve_ray(args: argparse.Namespace, opts, autoscale) -> int:
    from . import ray_app

    url = ray_app.start(opts, args.host, args.port, args.address, args.replicas, args.gpus_per_replica,
                        args.cpus_per_replica, autoscale)
    replicas = f"{autoscale[0]}..{autoscale[1]}" if autoscale else args.replicas
    _ready({"url": url, "model": opts.name, "backend": f"{opts.backend} {opts.provider} on Ray Serve",
            "max_batch": opts.max_batch, "replicas": replicas, "ray": True}, args.json)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the Ray Serve application", file=sys.stderr)
        ray_app.stop()
        raise
