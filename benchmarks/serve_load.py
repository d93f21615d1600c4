"""Load on `dllm-trt serve` at several concurrencies, next to the same decode run in-process.

    # start the server in this process (uvicorn thread) on an export / build folder:
    python benchmarks/serve_load.py --engine DIR [--backend ort|trt] [--provider cpu|cuda] [--max-batch 32]
                                    [--concurrency 1,8,32] [--requests 64] [--max-tokens 32] [--no-stop]
                                    [--max-model-len N] [--cache MODE] [--strategy S] [--threshold T] [--json]
    # or hit a running server (one replica or a Ray Serve cluster); --engine adds the in-process column:
    python benchmarks/serve_load.py --url http://HOST:8000 --model NAME [--engine DIR] ...

For each concurrency C: N streaming /v1/completions requests through the official openai client, at
most C in flight (tokens/s from the answers' usage, p50/p99 latency, p50 time to first token), and the
same prompts decoded in-process by ``generate()`` in static batches of C (no HTTP, no continuous
batching: a batch's requests all wait for its longest). Each level is warmed up first (ONNX Runtime
CUDA graphs are captured once per shape). Prompts: the bundled tiny checkpoints' tasks unless
--prompts FILE (one prompt a line) or --prompt-ids LEN (random token ids, for an export without a
tokenizer, e.g. benchmarks/llada8b_ort_cuda.py's random-weight one). Runs on CPU with a tiny export too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dllm_trt.serving.loadgen import id_prompts, percentile, run_load_sync, task_prompts  # noqa: E402


def in_process(service, prompts: list, concurrency: int, max_tokens: int) -> dict:
    """The same decode without the server: generate() over static batches of ``concurrency`` prompts."""
    from dllm_trt.runtime import generate

    gen = service.engine.request_gen(max_tokens)
    ids = [service.prompt_ids(p) for p in prompts]
    generate(service.backend, ids[:concurrency], gen)  # warm-up (shapes, CUDA graphs)
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for i in range(0, len(ids), concurrency):
        s = time.perf_counter()
        res = generate(service.backend, ids[i: i + concurrency], gen)
        dt = time.perf_counter() - s
        tokens += sum(min(len(t), max_tokens) for t in res.tokens)
        latencies += [dt] * len(res.tokens)
    seconds = time.perf_counter() - t0
    return {"tokens_per_second": tokens / seconds, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99), "seconds": seconds, "completion_tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", help="export / build folder: started in-process (and the in-process column)")
    ap.add_argument("--url", help="a running server instead of starting one")
    ap.add_argument("--model", help="model id at --url (default: asked from /v1/models)")
    ap.add_argument("--backend", default="ort", choices=["ort", "trt"])
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--no-stop", action="store_true", help="decode every max_tokens (no EOS stop)")
    ap.add_argument("--max-model-len", type=int, help="prompt + max_tokens limit (the cache's size per slot)")
    ap.add_argument("--cache", choices=["none", "prefix", "dual", "block", "sub_block"])
    ap.add_argument("--strategy")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--prompts", help="a file of prompts, one a line")
    ap.add_argument("--prompt-ids", type=int, metavar="LEN",
                    help="random token-id prompts of LEN tokens (for an export without tokenizer.json; needs --engine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.engine and not args.url:
        ap.error("give --engine DIR (start the server here) or --url URL")
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.prompt_ids and not args.engine:
        ap.error("--prompt-ids needs --engine (the vocabulary size)")
    if args.prompts:
        lines = [ln for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
        prompts = [lines[i % len(lines)] for i in range(args.requests)]
    else:
        prompts = task_prompts(args.requests, seed=0)

    service = server = None
    if args.engine:
        from dllm_trt.serving.openai_api import build_app
        from dllm_trt.serving.server import serve_in_thread
        from dllm_trt.serving.service import ServeOptions, Service

        decode = {k: getattr(args, k) for k in ("cache", "strategy", "threshold") if getattr(args, k) is not None}
        service = Service(ServeOptions(args.engine, args.backend, args.provider, max_batch=args.max_batch,
                                       max_model_len=args.max_model_len, decode=decode, no_stop=args.no_stop))
        if args.prompt_ids:
            prompts = id_prompts(args.requests, args.prompt_ids, service.backend.config.vocab_size)
    url, model = args.url, args.model
    if url is None:
        server = serve_in_thread(build_app(service))
        url, model = server.url, service.model
    elif model is None:
        import httpx

        model = httpx.get(url.rstrip("/") + "/v1/models").json()["data"][0]["id"]

    rows = []
    try:
        for c in levels:
            run_load_sync(url, model, prompts[: min(len(prompts), 2 * c)], c, args.max_tokens)  # warm-up
            res = run_load_sync(url, model, prompts, c, args.max_tokens)
            row = {"concurrency": c, "server": res.summary()}
            if service is not None:
                row["in_process"] = in_process(service, prompts, c, args.max_tokens)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
        if service is not None:
            service.close()

    report = {"url": url if args.url else "in-process uvicorn", "model": model,
              "settings": vars(service.engine.gen) if service else None,
              "backend": service.backend_name if service else None, "max_batch": args.max_batch,
              "requests": args.requests, "max_tokens": args.max_tokens, "no_stop": args.no_stop, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {model}  backend {report['backend']}  max_batch {args.max_batch}  {args.requests} requests per "
          f"level, max_tokens {args.max_tokens}")
    print("| concurrency | server tok/s | p50 ms | p99 ms | TTFT p50 ms | errors | in-process tok/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s, p = r["server"], r.get("in_process")
        ip = f"{p['tokens_per_second']:.1f} | {p['p50_s'] * 1e3:.1f} | {p['p99_s'] * 1e3:.1f}" if p else "- | - | -"
        print(f"| {r['concurrency']} | {s['tokens_per_second']:.1f} | {s['p50_s'] * 1e3:.1f} | {s['p99_s'] * 1e3:.1f} | "
              f"{s['ttft_p50_s'] * 1e3:.1f} | {s['errors']} | {ip} |")
    return 1 if any(r["server"]["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
