"""LLaDA-8B architecture (random weights) on ONNX Runtime CUDA vs eager PyTorch vs the bandwidth floor.

Two phases, run back to back on the GPU machine (the export is kept in --workdir):

    python benchmarks/llada8b_ort_cuda.py prepare --workdir /tmp/l8b [--dtype fp16]   # checkpoint, export, torch timings
    python benchmarks/llada8b_ort_cuda.py ort --workdir /tmp/l8b                      # ORT CUDA timings + the table
    python benchmarks/llada8b_ort_cuda.py int4 --workdir /tmp/l8b                     # INT4 weight-only, same table

Forwards timed at batch 1 (the decode loop's two shapes):
  prefill     320 tokens, no past;
  block step  32 tokens over a 320-token cache (a Fast-dLLM dual/prefix-cache step).
Floor = weights read per forward / measured device-to-device copy bandwidth (bytes read +
written / time): at batch 1 a forward must read every weight once (the embedding table excepted:
only L rows of it are gathered), so no implementation beats it by much.
Timings are medians of --repeat runs after --warmup runs, synchronised around each run.
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

LLADA_8B = {
    "model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
    "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5, "weight_tying": False, "mask_token_id": 126336, "eos_token_id": 126081,
    "pad_token_id": 126081, "max_sequence_length": 4096,
}
# --smoke: the same pipeline on a small model, to check the script in seconds before the real run.
SMOKE = dict(LLADA_8B, d_model=256, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=512, vocab_size=1000,
             embedding_size=1000)
PREFILL, STEP, PAST = 320, 32, 320


def median_ms(fn, warmup: int, repeat: int, sync) -> float:
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


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    import torch

    n = 2 * 1024**3
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(12):
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * n / statistics.median(times)


def cmd_prepare(args) -> None:
    import torch

    from dllm_trt.config import ModelConfig
    from dllm_trt.export.onnx_export import export_onnx
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
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"built LLaDA-8B architecture: {weight_bytes / 1e9:.2f} GB of {args.dtype} weights "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    bw = copy_bandwidth()
    print(f"device copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)

    def torch_forward(L: int, P: int):
        ids = torch.randint(0, config.vocab_size, (1, L), device="cuda")
        pos = torch.arange(P, P + L, device="cuda")[None]
        bias = torch.zeros(1, 1, L, P + L, device="cuda")
        past = None
        if P:
            shape = (1, config.num_kv_heads, P, config.head_dim)
            past = [(torch.randn(shape, device="cuda", dtype=dt), torch.randn(shape, device="cuda", dtype=dt))
                    for _ in range(config.num_layers)]

        def run():
            with torch.inference_mode():
                model(ids, pos, bias, past)
        return run

    sync = torch.cuda.synchronize
    eager = {"prefill": median_ms(torch_forward(PREFILL, 0), args.warmup, args.repeat, sync),
             "block_step": median_ms(torch_forward(STEP, PAST), args.warmup, args.repeat, sync)}
    print(f"eager torch: {eager}", flush=True)

    ckpt = work / "llada8b-ckpt"
    t0 = time.perf_counter()
    save_model(model.cpu(), ckpt)
    del model
    torch.cuda.empty_cache()
    save_s = time.perf_counter() - t0
    print(f"saved checkpoint in {save_s:.0f} s", flush=True)
    t0 = time.perf_counter()
    report = export_onnx(str(ckpt), str(work / "llada8b-onnx"), dtype=args.dtype, validate=False, progress=False)
    export_s = time.perf_counter() - t0
    print(f"exported in {export_s:.0f} s: {json.dumps(report['timings_s'])}, external data {report['external_data']}",
          flush=True)
    read_bytes = weights_read_bytes(work / "llada8b-onnx" / "model.onnx")
    summary = {"dtype": args.dtype, "weight_bytes": weight_bytes, "weights_read_bytes": read_bytes, "copy_bandwidth_Bps": bw, "eager_ms": eager,
               "export_s": export_s, "export_timings_s": report["timings_s"], "files": report["files"],
               "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d")}
    (work / "prepare.json").write_text(json.dumps(summary, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "prepare.json").write_text(json.dumps(summary, indent=2))


def cmd_ort(args) -> None:
    import onnxruntime as ort

    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    work = Path(args.workdir)
    prep = json.loads((work / "prepare.json").read_text())
    art = work / args.engine
    t0 = time.perf_counter()
    backend = OrtBackend.from_pretrained(str(art), provider="cuda")
    load_s = time.perf_counter() - t0
    print(f"onnxruntime {ort.__version__} CUDA session in {load_s:.0f} s", flush=True)
    cfg = backend.config
    rng = np.random.default_rng(0)

    def inputs(L: int, P: int):
        ids = rng.integers(0, cfg.vocab_size, (1, L)).astype(np.int64)
        pos = np.arange(P, P + L, dtype=np.int64)[None]
        bias = np.zeros((1, 1, L, P + L), np.float32)
        return ids, pos, bias

    # (a) the runtime's forward: ids/positions/bias up, logits down, caches stay on the device
    #     (past = a device copy of cache[:P]; writes = a device scatter). run_with_iobinding returns
    #     when the GPU work is done and the logits are on the host, so wall time is the step time.
    cache = backend.allocate_cache(1, PAST + STEP)
    ids, pos, bias = inputs(PAST, 0)
    backend.forward(ids, pos, bias, cache, 0, np.ones((1, PAST), bool))  # fill the cache
    step_in, prefill_in = inputs(STEP, PAST), inputs(PREFILL, 0)
    nosync = lambda: None  # noqa: E731
    runtime = {
        "prefill": median_ms(lambda: backend.forward(*prefill_in, cache, 0, None), args.warmup, args.repeat, nosync),
        "block_step": median_ms(lambda: backend.forward(*step_in, cache, PAST, None), args.warmup, args.repeat, nosync),
        "block_step_write": median_ms(lambda: backend.forward(*step_in, cache, PAST, np.ones((1, STEP), bool)),
                                      args.warmup, args.repeat, nosync),
    }
    print(f"runtime forward: {runtime}", flush=True)

    # (b) the graph alone: every input already on the device, every output left there.
    def graph_only(ids, pos, bias, past_len):
        sess = backend.session
        io = sess.io_binding()
        for name, arr in (("input_ids", ids), ("position_ids", pos), ("attention_bias", bias)):
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        past = backend._read_past(cache, past_len) if past_len else backend._empty_past(1)
        for name, v in zip(backend._past, past):
            io.bind_ortvalue_input(name, v)
        for name in backend._outputs:
            io.bind_output(name, "cuda", 0)
        return median_ms(lambda: sess.run_with_iobinding(io), args.warmup, args.repeat, nosync)

    graph = {"prefill": graph_only(*prefill_in, 0), "block_step": graph_only(*step_in, PAST)}
    print(f"graph only: {graph}", flush=True)
    ops = {}

    read_bytes = weights_read_bytes(art / "model.onnx")
    floor_ms = read_bytes / prep["copy_bandwidth_Bps"] * 1e3
    rows = []
    for name, L, P in (("prefill", PREFILL, 0), ("block_step", STEP, PAST)):
        rows.append({"forward": name, "L": L, "P": P, "floor_ms": floor_ms, "eager_torch_ms": prep["eager_ms"][name],
                     "ort_graph_ms": graph[name], "ort_runtime_ms": runtime[name],
                     "ort_vs_floor": runtime[name] / floor_ms})
    quant = (backend.meta.get("quantization") or {}).get("method")
    result = {"device": prep["device"], "date": time.strftime("%Y-%m-%d"), "dtype": quant or prep["dtype"],
              "engine": args.engine, "onnxruntime": ort.__version__, "weight_GB": prep["weight_bytes"] / 1e9,
              "weights_read_GB": read_bytes / 1e9,
              "copy_bandwidth_TBps": prep["copy_bandwidth_Bps"] / 1e12, "session_load_s": load_s,
              "export_s": prep["export_s"], "rows": rows, "runtime_ms": runtime, "top_ops": ops}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"llada8b_ort_cuda_{args.engine}.json").write_text(json.dumps(result, indent=2))
    print_table(result)


def cmd_int4(args) -> None:
    """Quantize the export to INT4 weight-only (MatMulNBits, RTN, no calibration), then time it like `ort`."""
    from dllm_trt.calibration.quantizer import quantize

    work = Path(args.workdir)
    t0 = time.perf_counter()
    report = quantize(work / "llada8b-onnx", work / "llada8b-int4", "int4-rtn", block_size=args.block_size,
                      validate=False, progress=False)
    print(f"quantized to INT4 (block {args.block_size}) in {time.perf_counter() - t0:.0f} s: "
          f"{json.dumps({k: report[k] for k in report if k in ('size_bytes', 'quantized')}, default=str)[:400]}",
          flush=True)
    args.engine = "llada8b-int4"
    cmd_ort(args)


def print_table(r: dict) -> None:
    print(f"\nLLaDA-8B architecture, random weights, {r['dtype']}, batch 1, "
          f"{r['device']}, onnxruntime {r['onnxruntime']} CUDA EP, {r['date']}")
    print(f"copy bandwidth {r['copy_bandwidth_TBps']:.2f} TB/s; weights read per forward {r['weights_read_GB']:.2f} GB "
          "(all but the embedding table) -> floor = weights read / bandwidth")
    print("| forward | L | P | floor ms | eager torch ms | ORT graph ms | ORT runtime step ms | runtime / floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in r["rows"]:
        print(f"| {row['forward']} | {row['L']} | {row['P']} | {row['floor_ms']:.2f} | {row['eager_torch_ms']:.2f} | "
              f"{row['ort_graph_ms']:.2f} | {row['ort_runtime_ms']:.2f} | {row['ort_vs_floor']:.2f}x |")
    print(f"block step with the cache write: {r['runtime_ms']['block_step_write']:.2f} ms")
    if r.get("top_ops"):
        print("\nwhere the block step's graph time goes (ORT profiler, share of node time):")
        for op, share in list(r["top_ops"].items())[:8]:
            print(f"  {op:24s} {share * 100:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "ort", "int4"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", default="/tmp/llada8b")
        p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--repeat", type=int, default=10)
        p.add_argument("--smoke", action="store_true", help="a small model through the same steps")
        p.add_argument("--engine", default="llada8b-onnx", help="export folder inside --workdir to time")
        p.add_argument("--block-size", type=int, default=32, help="INT4 block size (int4)")
    args = ap.parse_args()
    {"prepare": cmd_prepare, "ort": cmd_ort, "int4": cmd_int4}[args.cmd](args)


if __name__ == "__main__":
    main()
