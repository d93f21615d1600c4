"""Does fetching the o projection's weights into L2 during the attention pay? One attention sublayer of LLaDA-8B as
the `--ops ort-cuda` graph runs it - the q|k|v GEMM (cuBLAS, through torch), CacheAttention (the library's C entry
point; its output the GEMM's rows) and the o projection's GEMM - with and without the attention kernel prefetching
the o projection's weights (dllm_trt/plugins/ort_cuda_ops.cu: prefetch_l2_share, input 7 of the ONNX op).

    python -m dllm_trt.plugins.ort_cuda_build --out /tmp/libdllm_ort_cuda.so
    python benchmarks/l2_prefetch.py --lib /tmp/libdllm_ort_cuda.so [--json]   # GPU machine, torch with CUDA

Eight layers of weights (1.07 GB) are cycled, so no layer's weights are in L2 from its last turn, as in the model.
Times: microseconds per sublayer (the three kernels), GPU alone, from CUDA-graph replays of 16 sublayers (median of
30). `o GEMM` is the o projection alone after the same q|k|v GEMM and attention (the difference of two graphs).
"""
import argparse
import ctypes
import json

import torch

from cache_attention import reference, timed

SHAPES = {  # name: (L, past C): LLaDA-8B (H = Hkv = 32, D = 128, hidden 4096)
    "block step 32 over 320": (32, 352),
    "prefill 320": (320, 0),
}
LAYERS, HIDDEN, H, D, POSITIONS = 8, 4096, 32, 128, 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libdllm_ort_cuda.so")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.dllm_cache_attention.restype = ctypes.c_int
    lib.dllm_cache_attention_workspace.restype = ctypes.c_int64
    dev, g = "cuda", torch.Generator(device="cuda").manual_seed(0)
    w_qkv = [torch.randn(HIDDEN, 3 * H * D, device=dev, generator=g).bfloat16() * 0.02 for _ in range(LAYERS)]
    w_o = [torch.randn(H * D, HIDDEN, device=dev, generator=g).bfloat16() * 0.02 for _ in range(LAYERS)]
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    freqs = torch.arange(POSITIONS, device=dev).float()[:, None] * inv
    cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
    ptr = lambda t: ctypes.c_void_p(None if t is None else t.data_ptr())  # noqa: E731
    rows = []
    for name, (l, c) in SHAPES.items():
        x = torch.randn(1, l, HIDDEN, device=dev, generator=g).bfloat16()
        pos = (torch.arange(l, device=dev) + 64)[None].contiguous()
        pk = torch.randn(1, H, c, D, device=dev, generator=g).bfloat16()
        pv = torch.randn(1, H, c, D, device=dev, generator=g).bfloat16()
        bias = torch.zeros(1, 1, l, c + l, device=dev)
        if c > 320:
            bias[..., 320:c] = -1e9
            bias[..., 64:96] = -1e9
        bias = bias.bfloat16()
        floats = lib.dllm_cache_attention_workspace(1, l, c, H, D)
        ws = torch.empty(max(floats, 1), device=dev)
        qkv = torch.empty(1, l, 3 * H * D, device=dev, dtype=torch.bfloat16)
        att = torch.empty(1, l, H * D, device=dev, dtype=torch.bfloat16)
        y = torch.empty(1, l, HIDDEN, device=dev, dtype=torch.bfloat16)
        ck = torch.empty(1, H, l, D, device=dev, dtype=torch.bfloat16)
        cv = torch.empty_like(ck)

        def sublayers(prefetch: float, o_gemm: bool = True):
            def run():
                for i in range(2 * LAYERS):
                    torch.matmul(x, w_qkv[i % LAYERS], out=qkv)
                    nxt = w_o[i % LAYERS] if prefetch > 0 else None
                    nbytes = int(nxt.numel() * 2 * prefetch) // 16 * 16 if nxt is not None else 0
                    rc = lib.dllm_cache_attention(ptr(qkv), ptr(pos), ptr(cos), ptr(sin), ptr(bias), ptr(pk), ptr(pv),
                                                  ptr(att), ptr(ck), ptr(cv), ptr(ws), ctypes.c_int64(floats), 1, l,
                                                  c, H, H, D, POSITIONS, ctypes.c_float(D ** -0.5), ptr(nxt),
                                                  ctypes.c_int64(nbytes),
                                                  ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
                    assert rc == 0, rc
                    if o_gemm:
                        torch.matmul(att, w_o[i % LAYERS], out=y)
            return run

        # the prefetch is a hint: the attention's output is the same with it (checked against fp32 math)
        torch.matmul(x, w_qkv[0], out=qkv)
        ref = reference(qkv, pos, cos, sin, bias, pk, pv, H, H, D)
        outs = []
        for prefetch in (0.0, 1.0):
            att.fill_(float("nan"))
            rc = lib.dllm_cache_attention(ptr(qkv), ptr(pos), ptr(cos), ptr(sin), ptr(bias), ptr(pk), ptr(pv),
                                          ptr(att), ptr(ck), ptr(cv), ptr(ws), ctypes.c_int64(floats), 1, l, c, H, H,
                                          D, POSITIONS, ctypes.c_float(D ** -0.5),
                                          ptr(w_o[0] if prefetch else None),
                                          ctypes.c_int64(w_o[0].numel() * 2 if prefetch else 0),
                                          ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
            assert rc == 0, rc
            torch.cuda.synchronize()
            outs.append(att.clone())
        err = (outs[1].float() - ref).abs().max().item()
        assert torch.equal(outs[0], outs[1]) and err <= 2e-2 * max(1.0, ref.abs().max().item()), err

        base = timed(sublayers(0.0, o_gemm=False), per_graph=1) / (2 * LAYERS)
        for prefetch in (0.0, 0.25, 0.5, 0.75, 1.0):
            total = timed(sublayers(prefetch), per_graph=1) / (2 * LAYERS)
            without_o = timed(sublayers(prefetch, o_gemm=False), per_graph=1) / (2 * LAYERS)
            rows.append({"shape": name, "prefetch_mb": round(w_o[0].numel() * 2 * prefetch / 1e6, 1),
                         "sublayer_us": total, "o_gemm_us": total - without_o, "qkv_attention_us": without_o,
                         "qkv_attention_us_no_prefetch": base})
    result = {"gpu": torch.cuda.get_device_name(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"o projection's weights prefetched into L2 during the attention, {torch.cuda.get_device_name()} "
          "(us per sublayer: q|k|v GEMM + CacheAttention + o GEMM)")
    print("| shape | prefetched MB | sublayer us | o GEMM us | q|k|v GEMM + attention us |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['prefetch_mb']} | {r['sublayer_us']:.1f} | {r['o_gemm_us']:.1f} | "
              f"{r['qkv_attention_us']:.1f} |")


if __name__ == "__main__":
    main()
