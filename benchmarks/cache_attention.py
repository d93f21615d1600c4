"""The CacheAttention kernels alone (dllm_trt/plugins/ort_cuda_ops.cu, through the library's C entry points) on
LLaDA-8B's attention shapes: every kernel configuration (the WMMA kernel, the flash kernel with 1/2/4/5/8 warps of 16
query rows and 32/64-key tiles, the warps kernel (2/4/8 warps over the key tiles of 16 rows, presents fused), the
split kernel of block steps (every query row of a head in one CTA, 4/8 warps, 64/128 keys per round, presents fused,
the splits merged in a thread block cluster on sm_90 or by the last CTA), the keys split over 1..16 CTAs), each
checked against fp32 math, against torch's
scaled_dot_product_attention on the same bf16 tensors (its flash or cuDNN kernel: what the `--ops ort` graph's
MultiHeadAttention stands for). The `default` row is the configuration the ONNX Runtime op picks.

    python -m dllm_trt.plugins.ort_cuda_build --out /tmp/libdllm_ort_cuda.so
    python benchmarks/cache_attention.py --lib /tmp/libdllm_ort_cuda.so [--json]   # GPU machine, torch with CUDA

Times: microseconds per layer (presents kernel included) on the GPU alone, from CUDA-graph replays of 20 calls.
"""
import argparse
import ctypes
import json

import torch

SHAPES = {  # name: (B, L, past C, H, Hkv, D)
    "block step 32 over 320": (1, 32, 352, 32, 32, 128),
    "prefix step 288 over 64": (1, 288, 64, 32, 32, 128),
    "prefill 320": (1, 320, 0, 32, 32, 128),
}
FLASH = [(8, 64), (5, 64), (4, 64), (2, 64), (2, 32), (1, 32), (1, 64)]  # (warps of 16 query rows, keys per tile)
WARPS = [(4, 32), (4, 16), (8, 16), (2, 32)]  # (warps over the key tiles of 16 query rows, keys per tile)
SPLIT = [(8, 128), (8, 64), (4, 128), (4, 64)]  # (warps, keys per round) of the split kernel (L <= 64)
SPLITS = [1, 2, 3, 4, 6, 8]
SPLIT_SPLITS = [1, 2, 3, 4, 6, 8, 16]
KERNELS = {0: "wmma", 1: "flash", 2: "warps", 3: "split", 4: "split-counters"}


def timed(fn, warmup: int = 10, repeat: int = 30, per_graph: int = 20) -> float:
    """Microseconds per call on the GPU alone: `per_graph` calls captured in a CUDA graph (as the runtime replays
    a step), the graph's replays timed with CUDA events (median), divided by `per_graph`. Timing single eager
    calls would measure the host's launch gaps instead (tens of microseconds)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / per_graph)
    return sorted(times)[len(times) // 2]


def reference(qkv, pos, cos, sin, bias, pk, pv, h, hkv, d):
    """fp32 math of the op's attention output from the same bf16 inputs."""
    b, l, _ = qkv.shape
    q, k, v = torch.split(qkv.float(), [h * d, hkv * d, hkv * d], dim=-1)

    def rope(x, heads):
        x = x.view(b, l, heads, d)
        c, s = cos[pos][:, :, None], sin[pos][:, :, None]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).transpose(1, 2)

    q, k = rope(q, h), rope(k, hkv)
    v = v.view(b, l, hkv, d).transpose(1, 2)
    keys = torch.cat([pk.float(), k], 2).repeat_interleave(h // hkv, 1)
    vals = torch.cat([pv.float(), v], 2).repeat_interleave(h // hkv, 1)
    scores = q @ keys.transpose(-1, -2) * d ** -0.5 + bias.float()
    return (scores.softmax(-1) @ vals).transpose(1, 2).reshape(b, l, h * d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libdllm_ort_cuda.so")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="only these shapes (default: all)")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.dllm_cache_attention.restype = ctypes.c_int
    lib.dllm_cache_attention_config.restype = ctypes.c_int
    lib.dllm_cache_attention_workspace.restype = ctypes.c_int64
    dev, g = "cuda", torch.Generator(device="cuda").manual_seed(0)
    shapes = []
    for name, (b, l, c, h, hkv, d) in SHAPES.items():
        if args.shape and name not in args.shape:
            continue
        positions = 512
        qkv = torch.randn(b, l, (h + 2 * hkv) * d, device=dev, generator=g).bfloat16()
        pos = (torch.arange(l, device=dev) + 64).expand(b, l).contiguous()
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
        freqs = torch.arange(positions, device=dev).float()[:, None] * inv
        cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
        pk = torch.randn(b, hkv, c, d, device=dev, generator=g).bfloat16()
        pv = torch.randn(b, hkv, c, d, device=dev, generator=g).bfloat16()
        bias = torch.zeros(b, 1, l, c + l, device=dev)
        if c > 320:
            bias[..., 320:c] = -1e9  # the cache positions past the sequence, as a dual-cache step masks them
            bias[..., 64:96] = -1e9  # the block's stale cached entries
        bias = bias.bfloat16()
        ref = reference(qkv, pos, cos, sin, bias, pk, pv, h, hkv, d)
        tol = 2e-2 * max(1.0, ref.abs().max().item())
        out = torch.empty(b, l, h * d, device=dev, dtype=torch.bfloat16)
        ck = torch.empty(b, hkv, l, d, device=dev, dtype=torch.bfloat16)
        cv = torch.empty_like(ck)
        ws = torch.empty(b * h * max(SPLITS + SPLIT_SPLITS) * l * (d + 2), device=dev)
        stream = lambda: ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)  # noqa: E731 (the capture's)
        ptr = lambda t: ctypes.c_void_p(None if t is None else t.data_ptr())  # noqa: E731
        plan = (ctypes.c_int * 4)()
        lib.dllm_cache_attention_plan(b, l, c, h, d, plan)
        floats = lib.dllm_cache_attention_workspace(b, l, c, h, d)

        def default():
            rc = lib.dllm_cache_attention(ptr(qkv), ptr(pos), ptr(cos), ptr(sin), ptr(bias), ptr(pk), ptr(pv),
                                          ptr(out), ptr(ck), ptr(cv), ptr(ws), ctypes.c_int64(floats), b, l, c, h,
                                          hkv, d, positions, ctypes.c_float(d ** -0.5), stream())
            assert rc == 0, rc

        def config(kernel, nw, bn, splits):
            def run():
                rc = lib.dllm_cache_attention_config(ptr(qkv), ptr(pos), ptr(cos), ptr(sin), ptr(bias), ptr(pk),
                                                     ptr(pv), ptr(out), ptr(ck), ptr(cv), ptr(ws), b, l, c, h, hkv, d,
                                                     positions, ctypes.c_float(d ** -0.5), kernel, nw, bn, splits,
                                                     stream())
                assert rc == 0, (rc, kernel, nw, bn, splits)
            return run

        def measure(label, fn):
            out.fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            err = (out.float() - ref).abs().max().item()
            return {"config": label, "max_err": err, "ok": bool(err <= tol), "us": timed(fn)}

        rows = [measure(f"default ({KERNELS[plan[0]]} {plan[1]}w/{plan[2]} x{plan[3]})", default)]
        for s in SPLITS:
            rows.append(measure(f"wmma x{s}", config(0, 0, 0, s)))
        for nw, bn in FLASH:
            for s in SPLITS:
                if s > 1 and (l + 16 * nw - 1) // (16 * nw) * h * b >= 132:
                    continue  # enough CTAs without splitting
                rows.append(measure(f"flash {nw}w/{bn} x{s}", config(1, nw, bn, s)))
        for nw, bn in WARPS:
            for s in SPLITS:
                if s > 1 and (l + 15) // 16 * h * b >= 132:
                    continue
                rows.append(measure(f"warps {nw}w/{bn} x{s}", config(2, nw, bn, s)))
        for nw, rk in SPLIT if l <= 64 else []:
            for s in SPLIT_SPLITS:
                rows.append(measure(f"split {nw}w/{rk} x{s}", config(3, nw, rk, s)))
                if s > 1:
                    rows.append(measure(f"split-counters {nw}w/{rk} x{s}", config(4, nw, rk, s)))
        q = torch.randn(b, h, l, d, device=dev, generator=g).bfloat16()
        k = torch.randn(b, h, c + l, d, device=dev, generator=g).bfloat16()
        v = torch.randn_like(k)
        mask = bias.expand(b, h, l, c + l)
        sdpa = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask))
        shapes.append({"shape": name, "rows": rows, "torch_sdpa_us": sdpa})
    result = {"gpu": torch.cuda.get_device_name(), "shapes": shapes}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CacheAttention on {torch.cuda.get_device_name()} (us per layer, LLaDA-8B heads; err vs fp32 math)")
    for s in shapes:
        print(f"\n{s['shape']}: torch SDPA (bias as a mask) {s['torch_sdpa_us']:.1f} us")
        print("| config | us | max err | ok |")
        print("| --- | --- | --- | --- |")
        for r in sorted(s["rows"], key=lambda r: (not r["config"].startswith("default"), r["us"])):
            print(f"| {r['config']} | {r['us']:.1f} | {r['max_err']:.3g} | {'yes' if r['ok'] else 'NO'} |")


if __name__ == "__main__":
    main()
