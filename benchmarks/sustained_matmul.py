"""The prefill's matrix math run back to back for seconds: what bf16 throughput the GPU sustains on exactly the
prefill's GEMMs (LLaDA-8B, 320 rows: q|k|v, o, gate|up, down per layer, then the LM head on one block's rows), and
the SM clock and power while it does (nvidia-smi sampled every 100 ms). A short matmul (`llada8b_ort_cuda.py
prepare`) runs at boost clock; a prefill timed back to back runs at the clock the power limit allows, so its
compute floor is this script's, not the short one's.

    python benchmarks/sustained_matmul.py [--seconds 6] [--json]   # GPU machine, torch with CUDA

Prints one row per window of --window seconds: TFLOP/s, ms per prefill's worth of GEMMs, SM clock, power.
"""
import argparse
import json
import time

import torch

from gpu_monitor import GpuMonitor

HIDDEN, INTER, VOCAB, LAYERS, ROWS, BLOCK = 4096, 12288, 126464, 32, 320, 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dev = "cuda"
    # one layer's weights per layer would be 14 GB; the GEMMs are compute bound at 320 rows, so 4 layers cycled
    # give the same math (their weights, 0.9 GB, do not fit in L2 either)
    w = [(torch.randn(HIDDEN, 3 * HIDDEN, device=dev).bfloat16(), torch.randn(HIDDEN, HIDDEN, device=dev).bfloat16(),
          torch.randn(HIDDEN, 2 * INTER, device=dev).bfloat16(), torch.randn(INTER, HIDDEN, device=dev).bfloat16())
         for _ in range(4)]
    head = torch.randn(HIDDEN, VOCAB, device=dev).bfloat16()
    x = torch.randn(ROWS, HIDDEN, device=dev).bfloat16()
    qkv = torch.empty(ROWS, 3 * HIDDEN, device=dev, dtype=torch.bfloat16)
    o = torch.empty(ROWS, HIDDEN, device=dev, dtype=torch.bfloat16)
    gu = torch.empty(ROWS, 2 * INTER, device=dev, dtype=torch.bfloat16)
    dn = torch.empty(ROWS, HIDDEN, device=dev, dtype=torch.bfloat16)
    logits = torch.empty(BLOCK, VOCAB, device=dev, dtype=torch.bfloat16)
    flop = 2 * ROWS * HIDDEN * (3 * HIDDEN + HIDDEN + 2 * INTER) * LAYERS + 2 * ROWS * INTER * HIDDEN * LAYERS \
        + 2 * BLOCK * HIDDEN * VOCAB

    def prefill_gemms():
        for i in range(LAYERS):
            wq, wo, wgu, wd = w[i % 4]
            torch.matmul(x, wq, out=qkv)
            torch.matmul(qkv[:, :HIDDEN], wo, out=o)
            torch.matmul(x, wgu, out=gu)
            torch.matmul(gu[:, :INTER], wd, out=dn)
        torch.matmul(x[:BLOCK], head, out=logits)

    for _ in range(3):
        prefill_gemms()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        prefill_gemms()
    time.sleep(2.0)  # start from an idle GPU, as the first prefill of a request does
    with GpuMonitor() as monitor:
        rows = []
        t_end = time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            n = 0
            start.record()
            while time.perf_counter() - t0 < args.window:
                graph.replay()
                n += 1
                if n % 8 == 0:
                    torch.cuda.synchronize()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / n
            t1 = time.perf_counter()
            window = [s for s in monitor.samples if t0 <= s[0] <= t1]
            clk = sum(s[1] for s in window) / len(window) if window else None
            pw = max(s[2] for s in window) if window else None
            rows.append({"t_s": round(t1 - (t_end - args.seconds), 2), "ms_per_prefill_gemms": ms,
                         "tflops": flop / ms / 1e9, "sm_clock_mhz": clk, "power_w_max": pw,
                         "power_limit_w": window[-1][3] if window else None,
                         "temperature_c": window[-1][4] if window else None})
    result = {"gpu": torch.cuda.get_device_name(), "prefill_gemm_tflop": flop / 1e12, "windows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"the prefill's GEMMs (LLaDA-8B, {ROWS} rows, {flop / 1e12:.2f} TFLOP) back to back on "
          f"{result['gpu']}, windows of {args.window} s")
    print("| t s | ms per prefill's GEMMs | TFLOP/s | SM clock MHz (mean) | power W (max) | power limit W | temp C |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in rows:
        print(f"| {r['t_s']:.1f} | {r['ms_per_prefill_gemms']:.2f} | {r['tflops']:.0f} | {f(r['sm_clock_mhz'], 0)} | "
              f"{f(r['power_w_max'], 0)} | {f(r['power_limit_w'], 0)} | {f(r['temperature_c'], 0)} |")


if __name__ == "__main__":
    main()
