"""The CacheAttention kernels alone (dllm_trt/plugins/ort_cuda_ops.cu, through the library's C entry point) on
LLaDA-8B's attention shapes, against torch's scaled_dot_product_attention on the same bf16 tensors (its flash
or cuDNN kernel: what the `--ops ort` graph's MultiHeadAttention stands for), with the keys split over CTAs
and in one pass.

    python -m dllm_trt.plugins.ort_cuda_build --out /tmp/libdllm_ort_cuda.so
    python benchmarks/cache_attention.py --lib /tmp/libdllm_ort_cuda.so [--json]   # GPU machine, torch with CUDA

Times are medians of CUDA-event timings of 50 launches after 10 (microseconds per layer).
"""
import argparse
import ctypes
import json

import torch

SHAPES = {  # name: (B, L, past C, H, Hkv, D)
    "block step 32 over 320": (1, 32, 352, 32, 32, 128),
    "prefill 320": (1, 320, 0, 32, 32, 128),
}


def timed(fn, warmup: int = 10, repeat: int = 50) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libdllm_ort_cuda.so")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.dllm_cache_attention.restype = ctypes.c_int
    lib.dllm_cache_attention_workspace.restype = ctypes.c_int64
    dev, g = "cuda", torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, (b, l, c, h, hkv, d) in SHAPES.items():
        positions = 512
        qkv = torch.randn(b, l, (h + 2 * hkv) * d, device=dev, generator=g).bfloat16()
        pos = (torch.arange(l, device=dev) + 64).expand(b, l).contiguous()
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
        freqs = torch.arange(positions, device=dev).float()[:, None] * inv
        cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
        pk = torch.randn(b, hkv, c, d, device=dev, generator=g).bfloat16()
        pv = torch.randn(b, hkv, c, d, device=dev, generator=g).bfloat16()
        bias = torch.zeros(b, 1, l, c + l, device=dev)
        if c:
            bias[..., 320:c] = -1e9  # the cache positions past the sequence, as a dual-cache step masks them
            bias[..., 64:96] = -1e9  # the block's stale cached entries
        bias = bias.bfloat16()
        out = torch.empty(b, l, h * d, device=dev, dtype=torch.bfloat16)
        ck = torch.empty(b, hkv, l, d, device=dev, dtype=torch.bfloat16)
        cv = torch.empty_like(ck)
        floats = lib.dllm_cache_attention_workspace(b, l, c, h, d)
        ws = torch.empty(max(floats, 1), device=dev)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        ptr = lambda t: ctypes.c_void_p(None if t is None else t.data_ptr())  # noqa: E731

        def kernel(split: bool):
            def run():
                rc = lib.dllm_cache_attention(ptr(qkv), ptr(pos), ptr(cos), ptr(sin), ptr(bias), ptr(pk), ptr(pv),
                                              ptr(out), ptr(ck), ptr(cv), ptr(ws if split else None),
                                              ctypes.c_int64(floats if split else 0), b, l, c, h, hkv, d, positions,
                                              ctypes.c_float(d ** -0.5), stream)
                assert rc == 0, rc
            return run

        q = torch.randn(b, h, l, d, device=dev, generator=g).bfloat16()
        k = torch.randn(b, h, c + l, d, device=dev, generator=g).bfloat16()
        v = torch.randn_like(k)
        mask = bias.expand(b, h, l, c + l)
        row = {"shape": name, "split_ctas": floats > 0,
               "cache_attention_split_us": timed(kernel(True)) if floats else None,
               "cache_attention_one_pass_us": timed(kernel(False)),
               "torch_sdpa_us": timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask))}
        rows.append(row)
    if args.json:
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=2))
        return
    print(f"CacheAttention on {torch.cuda.get_device_name()} (us per layer, LLaDA-8B heads)")
    print("| shape | split over CTAs | one pass | torch SDPA (bias as a mask) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        split = f"{r['cache_attention_split_us']:.1f}" if r["cache_attention_split_us"] is not None else "-"
        print(f"| {r['shape']} | {split} | {r['cache_attention_one_pass_us']:.1f} | {r['torch_sdpa_us']:.1f} |")


if __name__ == "__main__":
    main()
