"""LLaDA-8B architecture (random bf16 weights) decoded on the GPU: dllm-trt on ONNX Runtime CUDA vs
its own PyTorch model, Fast-dLLM's own code and the weight-read floor, in one lease.

Phases, run back to back on the GPU machine (everything is kept in --workdir):

    python benchmarks/llada8b_ort_cuda.py prepare  --workdir W   # random weights, floor, eager torch, export
    python benchmarks/llada8b_ort_cuda.py export   --workdir W   # (after prepare --export-later) the exports
    python benchmarks/llada8b_ort_cuda.py ort      --workdir W   # forwards: graph alone / runtime step
    python benchmarks/llada8b_ort_cuda.py e2e      --workdir W   # dllm-trt profile: tok/s, per-step breakdown
    python benchmarks/llada8b_ort_cuda.py fastdllm --workdir W --fastdllm DIR   # Fast-dLLM's llada/ code
    python benchmarks/llada8b_ort_cuda.py table    --workdir W   # the table of all of the above

``--smoke`` runs the same pipeline on a small model in seconds, to check the script first.

Forwards timed at batch 1 (the decode loop's shapes for prompt 64 + gen 256, block 32):
  prefill     320 tokens, no past, 32 rows read (the block), all 320 keys/values written;
  block step  32 tokens over the whole 320-position cache (a dual-cache step), 32 rows read;
  block step with write: the same, its 32 keys/values written into the cache in place.
"graph" = the ORT session alone on device-resident inputs and outputs (the bucket's binding);
"runtime step" = ``OrtBackend.forward``: ids/positions/rows up (the bias only when it changed),
B x R tokens and confidences down, the in-place cache write. Floor = weights read per forward
(every weight but the gathered embedding table) / measured device-to-device copy bandwidth.
End to end: ``dllm-trt profile`` on one 64-token synthetic prompt, gen 256, block 32, low-confidence
remasking with 256 steps (one token per step) and 64 steps (four per step), cache none/prefix/dual.
Fast-dLLM: ``generate``, ``generate_with_prefix_cache``, ``generate_with_dual_cache`` of its
``llada/generate.py`` with the same settings, its own model class with random bf16 weights.
Timings are medians of --repeat runs after --warmup runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gpu_monitor import GpuMonitor  # noqa: E402

LLADA_8B = {
    "model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
    "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5, "weight_tying": False, "mask_token_id": 126336, "eos_token_id": 126081,
    "pad_token_id": 126081, "max_sequence_length": 4096,
}
# --smoke: the same pipeline on a small model, to check the script in seconds before the real run.
SMOKE = dict(LLADA_8B, d_model=256, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=512, vocab_size=1000,
             embedding_size=1000, mask_token_id=999, eos_token_id=998, pad_token_id=998)
PROMPT, GEN, BLOCK = 64, 256, 32
PREFILL, STEP, PAST = PROMPT + GEN, BLOCK, PROMPT + GEN


def out_path(name: str) -> Path | None:
    return Path(os.environ["OUT"], name) if os.environ.get("OUT") else None


def save_json(work: Path, name: str, data: dict) -> None:
    text = json.dumps(data, indent=2, default=str)
    (work / name).write_text(text)
    if out_path(name):
        out_path(name).write_text(text)


def median_ms(fn, warmup: int, repeat: int, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def weights_read_bytes(onnx_path: Path) -> int:
    """Bytes of weights one batch-1 forward must read: every initializer except tables that are only
    gathered from (the embedding: a forward reads L of its rows, not all of them)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    total = 0
    for t in model.graph.initializer:
        if t.name in gathered:
            continue
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:
            total += int(ext["length"])
        else:
            total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def median_seconds(fn, runs: int, warmup: int) -> float:
    """Median GPU time of ``fn`` (CUDA events around each call), the first ``warmup`` of ``runs`` calls dropped."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(runs):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    import torch

    n = 2 * 1024**3
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), runs=12, warmup=2)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / seconds


def matmul_rate(dtype) -> float:
    """FLOP/s of a large square matrix product in the model's dtype (the compute side of the floor: a 320-token
    prefill is bound by matrix math on an H200, not by the weight reads)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = median_seconds(lambda: a @ b, runs=13, warmup=3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds


def forward_flops(config, tokens: int, past: int, rows: int) -> float:
    """Matrix-math FLOPs of one forward: the layers' projections and attention over `tokens` query tokens with
    `past` cached keys, and the LM head over the `rows` read rows only (as the exported graph runs it)."""
    h, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    per_token = config.hidden_size * (h + 2 * kv) + h * config.hidden_size + 3 * config.hidden_size * config.intermediate_size
    attention = 4 * tokens * (past + tokens) * h
    return config.num_layers * (2 * tokens * per_token + attention) + 2 * rows * config.hidden_size * config.vocab_size


def graph_dir(work: Path, ops: str) -> Path:
    """The export of each graph flavour (dllm-trt export --ops): standard ops, or ORT's fused contrib ops."""
    return work / ("onnx" if ops == "standard" else f"onnx-{ops}")


def random_init(model) -> None:
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)


# ---------------------------------------------------------------------- prepare
def cmd_prepare(args) -> None:
    import torch

    from dllm_trt.config import ModelConfig
    from dllm_trt.models import build_model, save_model
    from dllm_trt.models.checkpoint import torch_dtype

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dt = torch_dtype(args.dtype)
    config = ModelConfig.from_dict(SMOKE if args.smoke else LLADA_8B)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(config).to(dt)
    random_init(model)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"built the model: {weight_bytes / 1e9:.2f} GB of {args.dtype} weights ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    bw = copy_bandwidth()
    print(f"device copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    rate = matmul_rate(dt)
    prefill_flops = forward_flops(config, PREFILL, 0, BLOCK)
    print(f"{args.dtype} matrix product {rate / 1e12:.0f} TFLOP/s; prefill {PREFILL}: {prefill_flops / 1e12:.2f} TFLOP "
          f"-> compute floor {prefill_flops / rate * 1e3:.2f} ms", flush=True)

    def torch_forward(L: int, P: int):
        ids = torch.randint(0, config.vocab_size, (1, L), device="cuda")
        pos = torch.arange(P, P + L, device="cuda")[None]
        bias = torch.zeros(1, 1, L, P + L, device="cuda")
        rows = torch.arange(L - BLOCK, L, device="cuda")[None]
        past = None
        if P:
            shape = (1, config.num_kv_heads, P, config.head_dim)
            past = [(torch.randn(shape, device="cuda", dtype=dt), torch.randn(shape, device="cuda", dtype=dt))
                    for _ in range(config.num_layers)]

        def run():
            with torch.inference_mode():
                model(ids, pos, bias, past, rows)
        return run

    sync = torch.cuda.synchronize
    eager = {"prefill": median_ms(torch_forward(PREFILL, 0), args.warmup, args.repeat, sync),
             "block_step": median_ms(torch_forward(STEP, PAST), args.warmup, args.repeat, sync)}
    print(f"eager torch (this project's model): {eager}", flush=True)

    ckpt = work / "ckpt"
    t0 = time.perf_counter()
    save_model(model.cpu(), ckpt)
    del model
    torch.cuda.empty_cache()
    save_s = time.perf_counter() - t0
    print(f"saved checkpoint in {save_s:.0f} s", flush=True)
    export_s = {} if args.export_later else export_graphs(args, work, ckpt)
    read_bytes = weights_read_bytes(graph_dir(work, args.ops[0]) / "model.onnx") if export_s else None
    save_json(work, "prepare.json", {
        "dtype": args.dtype, "smoke": args.smoke, "weight_bytes": weight_bytes, "weights_read_bytes": read_bytes,
        "copy_bandwidth_Bps": bw, "floor_ms": read_bytes / bw * 1e3 if read_bytes else None, "eager_ms": eager,
        "matmul_flops_per_s": rate, "prefill_flops": prefill_flops, "prefill_compute_floor_ms": prefill_flops / rate * 1e3,
        "export_s": export_s, "ops": args.ops, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d")})


def cmd_export(args) -> None:
    """Export the prepared checkpoint (--ops), when prepare ran with --export-later (one command stays
    under the device tool's 10 minutes); completes prepare.json's floor."""
    work = Path(args.workdir)
    prep = json.loads((work / "prepare.json").read_text())
    prep["export_s"] = dict(prep.get("export_s") or {}, **export_graphs(args, work, work / "ckpt"))
    if not prep.get("weights_read_bytes"):
        prep["weights_read_bytes"] = weights_read_bytes(graph_dir(work, args.ops[0]) / "model.onnx")
        prep["floor_ms"] = prep["weights_read_bytes"] / prep["copy_bandwidth_Bps"] * 1e3
    save_json(work, "prepare.json", prep)


def export_graphs(args, work: Path, ckpt: Path) -> dict:
    from dllm_trt.export.onnx_export import export_onnx

    export_s = {}
    for ops in args.ops:
        t0 = time.perf_counter()
        report = export_onnx(str(ckpt), str(graph_dir(work, ops)), dtype=args.dtype, validate=False, progress=False,
                             ops=ops)
        export_s[ops] = time.perf_counter() - t0
        print(f"exported --ops {ops} in {export_s[ops]:.0f} s: {json.dumps(report['timings_s'])}", flush=True)
    return export_s


# ---------------------------------------------------------------------- forwards
def cmd_ort(args) -> None:
    import onnxruntime as ort

    work = Path(args.workdir)
    results = {"onnxruntime": ort.__version__}
    for ops in args.ops:
        results[ops] = ort_forwards(args, graph_dir(work, ops), ops)
    save_json(work, "ort.json", results)


def ort_forwards(args, art: Path, ops: str) -> dict:
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    results = {}
    rng = np.random.default_rng(0)
    for graph in args.graphs:
        t0 = time.perf_counter()
        backend = OrtBackend.from_pretrained(str(art), provider="cuda", cuda_graph=graph)
        load_s = time.perf_counter() - t0
        cfg = backend.config
        cache = backend.allocate_cache(1, PAST)
        C = cache.capacity

        def inputs(L: int, P: int, start: int):
            ids = rng.integers(0, cfg.vocab_size, (1, L)).astype(np.int64)
            pos = np.arange(start, start + L, dtype=np.int64)[None]
            bias = np.zeros((1, 1, L, P + L), np.float32)
            if P:
                bias[..., PAST:P] = -1e9  # cache positions past the sequence
                bias[..., start:start + L] = -1e9  # the block's stale cached entries (dual cache)
            rows = np.arange(L - BLOCK, L, dtype=np.int64)[None]
            return ids, pos, bias, rows

        prefill = inputs(PREFILL, 0, 0)
        step = inputs(STEP, C, PROMPT)
        all_rows, step_rows = np.ones((1, PREFILL), bool), np.ones((1, STEP), bool)
        backend.forward(prefill[0], prefill[1], prefill[2], cache, 0, all_rows, prefill[3])  # fill the cache
        with GpuMonitor() as during_prefill:
            runtime = {"prefill": median_ms(lambda: backend.forward(*prefill[:3], cache, 0, all_rows, prefill[3]),
                                            args.warmup, args.repeat)}
        with GpuMonitor() as during_steps:
            runtime["block_step"] = median_ms(lambda: backend.forward(*step[:3], cache, C, None, step[3]),
                                              args.warmup, args.repeat)
            runtime["block_step_write"] = median_ms(lambda: backend.forward(*step[:3], cache, C, step_rows, step[3]),
                                                    args.warmup, args.repeat)
        gpu = {"during_prefill": during_prefill.summary(), "during_block_steps": during_steps.summary()}
        sess = backend.session
        graph_only = {}
        device = backend._memory.device  # the session runs on its stream, unsynchronised: wait for it here

        def replay(bucket):
            sess.run_with_iobinding(bucket.binding, bucket.run_options)
            device.sync()

        for name, (ids, pos, bias, rows), p in (("prefill", prefill, 0), ("block_step", step, C)):
            bucket = backend._bucket(1, ids.shape[1], p, rows.shape[1], cache)
            graph_only[name] = median_ms(lambda: replay(bucket), args.warmup, args.repeat)
        key = "cuda_graph" if graph else "no_graph"
        results[key] = {"session_load_s": load_s, "cache_capacity": C, "graph_ms": graph_only, "runtime_ms": runtime,
                        "buckets": len(backend._buckets), "gpu": gpu}
        print(f"--ops {ops} {key}: session {load_s:.0f} s, graph {graph_only}, runtime {runtime}, gpu {gpu}",
              flush=True)
        del backend, sess
    return results


SAMPLING_TEMPERATURES = (0.7, 0.05)


def cmd_e2e(args) -> None:
    from dllm_trt.cli import build_parser
    from dllm_trt.profiling.report import format_report
    from dllm_trt.profiling.session import profile_engine
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    work = Path(args.workdir)
    art = graph_dir(work, args.ops[0])
    backend = OrtBackend.from_pretrained(str(art), provider="cuda")
    argv = ["profile", "--engine", str(art), "--provider", "cuda", "--synthetic-prompt-len", str(PROMPT), "--n", "1",
            "--gen-length", str(GEN), "--block-length", str(BLOCK), "--strategy", "low_confidence",
            "--sweep", "cache=none,prefix,dual", f"steps={GEN},{GEN // 4}",
            "--warmup", str(max(1, args.warmup // 2)), "--repeat", str(max(1, args.repeat // 3)), "--no-progress"]
    if args.sampling_only:
        report = json.loads((work / "e2e.json").read_text())
    else:
        report = profile_engine(build_parser().parse_args(argv), backend=backend)
        for run in report["runs"]:
            run.pop("trace", None)
        print(format_report(report), flush=True)
        report["ops"] = args.ops[0]
    if args.sampling or args.sampling_only:  # top-p 0.95, dual cache: the sampler graph on the device vs the host
        sampler = backend.sampler
        report["sampling"] = {}
        # temperature 0.7: the random model's rows stay flat (a nucleus of most of the vocabulary: top-p sorts whole
        # rows); 0.05: peaked, as a trained model's are (the nucleus fits the sorted prefix of 1024)
        for temperature in SAMPLING_TEMPERATURES:
            for where in ("device", "host"):
                backend.sampler = sampler if where == "device" else None
                # four tokens per step, one timed run: the host side reads 32 x 126464 logits per step in numpy
                sargv = argv[:argv.index("--sweep")] + ["--cache", "dual", "--temperature", str(temperature),
                                                        "--top-p", "0.95", "--seed", "1", "--steps", str(GEN // 4),
                                                        "--warmup", "1", "--repeat", "1", "--no-progress"]
                rep = profile_engine(build_parser().parse_args(sargv), backend=backend)
                for run in rep["runs"]:
                    run.pop("trace", None)
                print(f"sampling at temperature {temperature} on the {where}:\n" + format_report(rep), flush=True)
                report["sampling"][f"{where} T={temperature}"] = rep["runs"]
        backend.sampler = sampler
    save_json(work, "e2e.json", report)


# ---------------------------------------------------------------------- Fast-dLLM's own code
def cmd_fastdllm(args) -> None:
    import torch

    root = Path(args.fastdllm).resolve()
    sys.path.insert(0, str(root))
    from generate import generate, generate_with_dual_cache, generate_with_prefix_cache  # type: ignore
    from model.configuration_llada import LLaDAConfig  # type: ignore
    from model.modeling_llada import LLaDAModelLM  # type: ignore

    work = Path(args.workdir)
    raw = SMOKE if args.smoke else LLADA_8B
    cfg = LLaDAConfig(d_model=raw["d_model"], n_heads=raw["n_heads"], n_kv_heads=raw["n_kv_heads"],
                      n_layers=raw["n_layers"], mlp_hidden_size=raw["mlp_hidden_size"], vocab_size=raw["vocab_size"],
                      embedding_size=raw["embedding_size"], rope=True, rope_theta=raw["rope_theta"],
                      rms_norm_eps=raw["rms_norm_eps"], weight_tying=False, block_type="llama",
                      activation_type="silu", layer_norm_type="rms", include_bias=False, include_qkv_bias=False,
                      attention_layer_norm=False, max_sequence_length=raw["max_sequence_length"],
                      mask_token_id=raw["mask_token_id"], eos_token_id=raw["eos_token_id"],
                      pad_token_id=raw["pad_token_id"], flash_attention=False, init_device="cpu",
                      mlp_ratio=4, alibi=False, rope_full_precision=True, input_emb_norm=False,
                      scale_logits=False, layer_norm_with_affine=True, bias_for_layer_norm=False)
    cfg.use_cache = False  # newer transformers drop it from the config kwargs; Fast-dLLM's forward reads it
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    model = LLaDAModelLM(cfg, init_params=False)
    torch.set_default_dtype(torch.float32)
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    model.config.use_cache = False
    torch.manual_seed(0)
    random_init(model)
    print(f"Fast-dLLM LLaDAModelLM built in {time.perf_counter() - t0:.0f} s", flush=True)
    prompt = torch.randint(0, raw["vocab_size"] - 2, (1, PROMPT), device="cuda")
    fns = {"none": generate, "prefix": generate_with_prefix_cache, "dual": generate_with_dual_cache}
    rows = []
    with torch.inference_mode():
        fns["dual"](model, prompt, steps=GEN, gen_length=GEN, block_length=BLOCK, mask_id=raw["mask_token_id"])  # warm-up
        for steps in (GEN, GEN // 4):
            for cache, fn in fns.items():
                times = []
                for _ in range(max(1, args.repeat // 5)):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = fn(model, prompt, steps=steps, gen_length=GEN, block_length=BLOCK,
                             mask_id=raw["mask_token_id"])
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                if isinstance(out, tuple):
                    out = out[0]
                s = statistics.median(times)
                rows.append({"cache": cache, "steps": steps, "seconds": s, "tokens_per_second": GEN / s})
                print(f"Fast-dLLM {cache:6s} steps {steps}: {GEN / s:.1f} tok/s ({s:.2f} s)", flush=True)
    save_json(work, "fastdllm.json", {"rows": rows, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                      "date": time.strftime("%Y-%m-%d")})


# ---------------------------------------------------------------------- the table
def cmd_table(args) -> None:
    work = Path(args.workdir)
    load = (lambda n: json.loads((work / n).read_text()) if (work / n).is_file() else None)  # noqa: E731
    prep, fwd, e2e, fd = load("prepare.json"), load("ort.json"), load("e2e.json"), load("fastdllm.json")
    if prep is None:
        sys.exit(f"{work / 'prepare.json'} is missing: run `prepare --workdir {work}` first (the floor comes from it)")
    floor = prep["floor_ms"]
    print(f"\nLLaDA-8B architecture{' (SMOKE: small model)' if prep.get('smoke') else ''}, random {prep['dtype']} "
          f"weights, batch 1, {prep['device']}, {prep['date']}; copy bandwidth "
          f"{prep['copy_bandwidth_Bps'] / 1e12:.2f} TB/s, {prep['weights_read_bytes'] / 1e9:.2f} GB read per forward "
          f"-> floor {floor:.2f} ms")
    compute = prep.get("prefill_compute_floor_ms")
    if compute:
        print(f"prefill {PREFILL}: {prep['prefill_flops'] / 1e12:.2f} TFLOP of matrix math at the measured "
              f"{prep['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s -> compute floor {compute:.2f} ms "
              f"({compute / floor:.2f}x the weight-read floor)")
    if fwd:
        print(f"\nforwards (onnxruntime {fwd['onnxruntime']} CUDA EP; graph = the session alone, runtime step = "
              "OrtBackend.forward)")
        print("| forward | graph ops | eager torch ms | ORT graph ms (CUDA graph) | ORT runtime step ms (CUDA graph) | "
              "ORT graph ms (no graph) | ORT runtime step ms (no graph) | runtime / floor |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        cell = lambda d, k, name: "-" if d.get(k) is None else f"{d[k][name]:.2f}"  # noqa: E731
        for name, label in (("prefill", f"prefill {PREFILL}"), ("block_step", f"block step {STEP} over {PAST}"),
                            ("block_step_write", f"block step {STEP} over {PAST} + cache write")):
            eager = prep["eager_ms"].get(name, prep["eager_ms"]["block_step"] if "block" in name else None)
            for ops in [k for k in fwd if k != "onnxruntime"]:
                g, n = fwd[ops].get("cuda_graph", {}), fwd[ops].get("no_graph", {})
                gname = name if name != "block_step_write" else "block_step"
                best = g or n
                print(f"| {label} | {ops} | {eager:.2f} | {cell(g, 'graph_ms', gname) if g else '-'} | "
                      f"{cell(g, 'runtime_ms', name) if g else '-'} | {cell(n, 'graph_ms', gname) if n else '-'} | "
                      f"{cell(n, 'runtime_ms', name) if n else '-'} | {best['runtime_ms'][name] / floor:.2f}x |")
        for ops in [k for k in fwd if k != "onnxruntime"]:  # the GPU while the runtime steps were timed
            for mode, r in fwd[ops].items():
                for loop, g in sorted((r.get("gpu") or {}).items()):
                    if g and "sm_clock_mhz_mean" in g:
                        print(f"{ops} {mode}, {loop.replace('_', ' ')}: SM clock {g['sm_clock_mhz_mean']} MHz mean "
                              f"(min {g['sm_clock_mhz_min']:.0f}), power up to {g['power_w_max']:.0f} of "
                              f"{g['power_limit_w']:.0f} W, {g['samples']} samples")
    if e2e or fd:
        print(f"\nend to end: prompt {PROMPT}, gen {GEN}, block {BLOCK}, low-confidence remasking, tok/s "
              f"(dllm-trt graph: --ops {(e2e or {}).get('ops', 'standard')})")
        print("| cache | tokens/step | Fast-dLLM (PyTorch eager) | dllm-trt ORT CUDA | forward ms (median) | "
              "host ms/step | speed-up |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for steps in (GEN, GEN // 4):
            for cache in ("none", "prefix", "dual"):
                f = next((r for r in (fd or {}).get("rows", []) if r["cache"] == cache and r["steps"] == steps), None)
                run = next((r for r in (e2e or {}).get("runs", []) if r.get("status") == "ok"
                            and r["settings"]["cache"] == cache and r["settings"]["steps"] == steps), None)
                ours = run["tokens_per_second"] if run else None
                fwd_ms = run["forward_latency_ms"]["all"]["median"] if run else None
                host = run["step_breakdown"]["host_overhead"]["per_step_ms"] if run else None
                fast = f["tokens_per_second"] if f else None
                cell = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
                print(f"| {cache} | {GEN // steps} | {cell(fast, '.1f')} | {cell(ours, '.1f')} | {cell(fwd_ms, '.2f')} | "
                      f"{cell(host, '.3f')} | {cell(ours / fast if ours and fast else None, '.2f')}x |")
    if e2e and e2e.get("sampling"):
        print("\nsampling (dual cache, top-p 0.95; T 0.7: flat rows, T 0.05: peaked): the sampler graph on the device vs "
              "logits to the host")
        print("| tokens/step | where, temperature | tok/s | forward ms (median) | unmask ms/step | host ms/step |")
        print("| --- | --- | --- | --- | --- | --- |")
        for steps in (GEN // 4,):
            for where, runs in e2e["sampling"].items():
                run = next((r for r in runs if r.get("status") == "ok" and r["settings"]["steps"] == steps), None)
                if run:
                    sb = run["step_breakdown"]
                    print(f"| {GEN // steps} | {where} | {run['tokens_per_second']:.1f} | "
                          f"{run['forward_latency_ms']['all']['median']:.2f} | {sb['unmask']['per_step_ms']:.3f} | "
                          f"{sb['host_overhead']['per_step_ms']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "export", "ort", "e2e", "fastdllm", "table"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", default="/tmp/llada8b")
        p.add_argument("--dtype", default="bf16", choices=["fp16", "bf16"])
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--repeat", type=int, default=10)
        p.add_argument("--smoke", action="store_true", help="a small model through the same steps")
        p.add_argument("--fastdllm", default=".upstream/fastdllm/llada", help="Fast-dLLM's llada/ folder (fastdllm)")
        p.add_argument("--ops", default="standard,ort",
                       help="graph flavours, comma-separated (dllm-trt export --ops); e2e profiles the first")
        p.add_argument("--graphs", default="on,off", help="ort phase: CUDA graphs on, off or both")
        p.add_argument("--export-later", action="store_true", help="prepare: save the checkpoint, export in `export`")
        p.add_argument("--sampling", action="store_true",
                       help="e2e: also temperature 0.7 / top-p 0.95 (dual cache), sampled on the device and on the host")
        p.add_argument("--sampling-only", action="store_true",
                       help="e2e: only the --sampling runs, added to an earlier e2e.json (one command stays under "
                            "the device tool's 10 minutes)")
    args = ap.parse_args()
    args.ops = [o for o in args.ops.split(",") if o]
    args.graphs = [{"on": True, "off": False}[g] for g in args.graphs.split(",") if g]
    {"prepare": cmd_prepare, "export": cmd_export, "ort": cmd_ort, "e2e": cmd_e2e, "fastdllm": cmd_fastdllm, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
