"""GPU checks and timings of the plugin kernels (issue #4). Needs a CUDA GPU, torch and triton.

    python benchmarks/plugins_gpu.py [--quick] [--json FILE]     # also writes $OUT/plugins_gpu.json if OUT is set

(a) checks: the Triton kernels against the numpy references on random inputs (tokens and counts
    exactly, confidences to 1e-3 relative; V in {126464, 152064}, float32/float16/bfloat16 logits;
    the cache op's output to a dtype tolerance and its caches bit-exact), the plugins' enqueue
    path on real device buffers, and, where ``tensorrt`` is installed, engines holding the
    plugins (custom ONNX nodes through TensorRT's parser).
(b) tables: ThresholdUnmask for B in {1, 8}, L in {8, 32}, V in {126464, 152064} (float32 logits,
    as the graph emits them): our kernels, the torch composition (softmax, max, argmax, where),
    the host path of today's runtime (logits to the host, numpy float64), and the floor = logit
    bytes read once / measured device copy bandwidth. SubBlockCacheAttention (fp16, one layer,
    LLaDA-8B and Dream-7B head layouts, past 1024): in-place write + our attention, against
    concatenating past and current (+ torch attention as in the graph, or + SDPA), and the floor
    (bytes of K/V read over the attended positions, q/out/bias, the written rows). Device times
    are CUDA-graph replays (no Python launch cost); "eager" is one Python call.

The pytest tests marked ``gpu`` in tests/test_plugins.py call check_unmask / check_cache /
check_trt_plugins from this file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dllm_trt.plugins import (cache_attention_bias, cache_write_positions, subblock_cache_attention,  # noqa: E402
                              threshold_unmask)
from dllm_trt.runtime.layout import attention_bias  # noqa: E402

VOCABS = ((126464, 126336), (152064, 151666))  # (V, mask id): LLaDA-8B, Dream-7B / Qwen2.5
HEADS = {"llada8b": (32, 32, 128), "dream7b": (28, 4, 128)}  # (H, Hkv, D)


def _torch():
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (torch.cuda.is_available() is False)")
    return torch


# ---------------------------------------------------------------------- timing
def device_ms(fn, iters: int = 20, repeats: int = 5) -> float:
    """Median device time of fn() in ms, from CUDA-graph replays of ``iters`` calls."""
    torch = _torch()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / iters)
    del g
    return statistics.median(times)


def eager_ms(fn, iters: int = 20, repeats: int = 3) -> float:
    """Median wall time of one synchronous call in ms (Python launch cost included)."""
    torch = _torch()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s, counting bytes read + written (1 GiB buffers)."""
    torch = _torch()
    n = 1 << 28
    src = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = device_ms(lambda: dst.copy_(src), iters=10, repeats=5)
    return 2 * n * 4 / (ms / 1e3)


# ---------------------------------------------------------------------- inputs
def unmask_inputs(rng, b, l, v, mask_id, kind="random"):
    logits = (rng.standard_normal((b, l, v), dtype=np.float32) * np.float32(rng.uniform(1.0, 8.0)))
    if kind == "saturated":
        logits[:, :, rng.integers(0, v)] += 200.0
    elif kind == "ties":
        logits[:, :, 3] = logits[:, :, 9] = logits.max() + 1.0
    elif kind == "mask_max":
        logits[:, :, mask_id] = logits.max() + 5.0
    tokens = rng.integers(0, v, (b, l)).astype(np.int64)
    cand = rng.random((b, l)) < 0.6
    cand[0, 0] = True
    tokens[cand] = mask_id
    return logits, tokens, cand


def cache_inputs(rng, b, h, hkv, d, l, past, capacity, dtype, block=32):
    kc = rng.standard_normal((b, hkv, capacity, d)).astype(np.float32)
    vc = rng.standard_normal((b, hkv, capacity, d)).astype(np.float32)
    q = rng.standard_normal((b, h, l, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, l, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, l, d)).astype(np.float32)
    # sub-block of L at the end of the past of each sequence (sequences of different lengths)
    start = past - l - (np.arange(b) * 3) % max(1, past // 4)
    pos = start[:, None] + np.arange(l)
    valid = np.ones((b, l), bool)
    if b > 1:
        valid[-1, -1] = False
    pos = np.where(valid, pos, 0)
    idx = np.arange(past)[None]
    past_valid = (idx < (start + l)[:, None]) & ~((idx >= start[:, None]) & (idx < (start + l)[:, None]))
    bias = attention_bias(pos, valid, past_valid, block)
    cp = cache_write_positions(bias, pos, past)
    cb = cache_attention_bias(bias, past, cp)
    cast = (lambda x: x.astype(np.float16)) if dtype == "fp16" else (lambda x: x)
    return dict(q=cast(q), k=cast(k), v=cast(v), kc=cast(kc), vc=cast(vc), cp=cp, cb=cb, bias=bias, pos=pos, past=past)


def _to_torch(x, dtype_name=None):
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(x)).cuda()
    if dtype_name == "bf16":
        t = t.float().to(torch.bfloat16)
    return t


# ---------------------------------------------------------------------- (a) checks
def check_unmask(vocab: int, mask_id: int, seed: int = 0) -> dict:
    """Triton ThresholdUnmask vs the numpy reference: tokens and counts exact, confidences to 1e-3 relative."""
    torch = _torch()
    from dllm_trt.plugins.triton_unmask import threshold_unmask_triton

    rng = np.random.default_rng(seed + vocab)
    cases, bad = 0, []
    for b, l in ((1, 8), (4, 32), (8, 3)):
        for kind in ("random", "saturated", "ties", "mask_max"):
            logits, tokens, cand = unmask_inputs(rng, b, l, vocab, mask_id, kind)
            for dtype in ("fp32", "fp16", "bf16"):
                t_logits = _to_torch(logits.astype(np.float16) if dtype == "fp16" else logits, dtype)
                ref_logits = t_logits.float().cpu().numpy() if dtype == "bf16" else t_logits.cpu().numpy()
                for tau in (0.0, 0.5, 0.9, 1.0):
                    got = threshold_unmask_triton(t_logits, _to_torch(tokens), _to_torch(cand), mask_id, tau)
                    got = [g.cpu().numpy() for g in got]
                    ref = threshold_unmask(ref_logits, tokens, cand, mask_id, tau)
                    cases += 1
                    rel = float(np.max(np.abs(got[2] - ref[2]) / np.maximum(ref[2], 1e-30)))
                    if not (np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]) and rel <= 1e-3):
                        bad.append({"b": b, "l": l, "kind": kind, "dtype": dtype, "tau": tau, "conf_rel": rel,
                                    "tokens_equal": bool(np.array_equal(got[0], ref[0])),
                                    "counts_equal": bool(np.array_equal(got[1], ref[1]))})
    torch.cuda.synchronize()
    return {"op": "ThresholdUnmask", "vocab": vocab, "cases": cases, "failures": bad[:10], "ok": not bad}


def check_cache(seed: int = 0) -> dict:
    """Triton SubBlockCacheAttention vs the numpy reference (output to a dtype tolerance, caches bit-exact)."""
    torch = _torch()
    from dllm_trt.plugins.triton_cache import subblock_cache_attention_triton

    rng = np.random.default_rng(seed)
    shapes = [("small", 4, 2, 16, 3, 4, 40, 64), ("llada8b", 32, 32, 128, 2, 32, 300, 512),
              ("dream7b", 28, 4, 128, 3, 8, 700, 1024), ("odd_head_dim", 6, 2, 80, 2, 8, 100, 160)]
    cases, bad = 0, []
    for name, h, hkv, d, b, l, past, cap in shapes:
        for dtype in ("fp32", "fp16"):
            x = cache_inputs(rng, b, h, hkv, d, l, past, cap, dtype)
            ref = subblock_cache_attention(x["q"], x["k"], x["v"], x["kc"], x["vc"], x["cp"], x["cb"])
            kc, vc = _to_torch(x["kc"]), _to_torch(x["vc"])
            out, kc2, vc2 = subblock_cache_attention_triton(_to_torch(x["q"]), _to_torch(x["k"]), _to_torch(x["v"]),
                                                            kc, vc, _to_torch(x["cp"]), _to_torch(x["cb"]))
            err = float(np.max(np.abs(out.float().cpu().numpy() - ref[0].astype(np.float32))))
            tol = 1e-4 if dtype == "fp32" else 4e-3
            exact = np.array_equal(kc.cpu().numpy(), ref[1]) and np.array_equal(vc.cpu().numpy(), ref[2])
            in_place = kc2.data_ptr() == kc.data_ptr() and vc2.data_ptr() == vc.data_ptr()
            cases += 1
            if not (err <= tol and exact and in_place):
                bad.append({"shape": name, "dtype": dtype, "max_abs_err": err, "tol": tol, "caches_exact": exact,
                            "in_place": in_place})
    torch.cuda.synchronize()
    return {"op": "SubBlockCacheAttention", "cases": cases, "failures": bad, "ok": not bad}


def _trt_modules():
    mods = []
    for name in ("tensorrt", "tensorrt_rtx_bindings"):
        try:
            mods.append(__import__(name))
        except Exception:
            pass
    return mods


def check_trt_plugins() -> dict:
    """The plugins' enqueue on real device buffers, and engines with the plugins where ``tensorrt`` is installed."""
    torch = _torch()
    from dllm_trt.plugins.trt_plugins import plugin_classes

    mods = _trt_modules()
    if not mods:
        return {"skipped": "neither tensorrt nor tensorrt_rtx_bindings is installed "
                           "(pip install tensorrt-cu13, or the TensorRT-RTX wheels)", "ok": True}
    report = {"ok": True, "enqueue": {}, "engine": {}}
    trt = mods[0]
    rng = np.random.default_rng(1)
    dt = {np.dtype(np.float32): trt.DataType.FLOAT, np.dtype(np.int64): trt.DataType.INT64,
          np.dtype(bool): trt.DataType.BOOL, np.dtype(np.float16): trt.DataType.HALF}

    def desc(a):
        return SimpleNamespace(type=dt[a.dtype], dims=a.shape)

    # enqueue with descriptors as TensorRT passes them
    v, mask = VOCABS[0]
    logits, tokens, cand = unmask_inputs(rng, 2, 8, v, mask)
    ins = [logits, tokens, cand, np.array([0.9], np.float32)]
    outs = [np.zeros((2, 8), np.int64), np.zeros(2, np.int64), np.zeros((2, 8), np.float32)]
    t_in, t_out = [_to_torch(a) for a in ins], [_to_torch(a) for a in outs]
    plugin = plugin_classes(trt)["ThresholdUnmask"][0](mask)
    stream = torch.cuda.Stream()
    plugin.enqueue([desc(a) for a in ins], [desc(a) for a in outs], [t.data_ptr() for t in t_in],
                   [t.data_ptr() for t in t_out], 0, stream.cuda_stream)
    stream.synchronize()
    ref = threshold_unmask(logits, tokens, cand, mask, 0.9)
    ok = (np.array_equal(t_out[0].cpu().numpy(), ref[0]) and np.array_equal(t_out[1].cpu().numpy(), ref[1])
          and np.allclose(t_out[2].cpu().numpy(), ref[2], rtol=1e-3))
    report["enqueue"]["ThresholdUnmask"] = bool(ok)
    x = cache_inputs(rng, 2, 8, 2, 64, 8, 200, 256, "fp16")
    ins = [x["q"], x["k"], x["v"], x["kc"], x["vc"], x["cp"], x["cb"]]
    t_in = [_to_torch(a) for a in ins]
    out = torch.empty_like(t_in[0])
    cplug = plugin_classes(trt)["SubBlockCacheAttention"][0](64 ** -0.5)
    cplug.enqueue([desc(a) for a in ins], [desc(x["q"]), desc(x["kc"]), desc(x["vc"])], [t.data_ptr() for t in t_in],
                  [out.data_ptr(), t_in[3].data_ptr(), t_in[4].data_ptr()], 0, stream.cuda_stream)
    stream.synchronize()
    ref = subblock_cache_attention(*ins, scale=64 ** -0.5)
    ok = (float(np.max(np.abs(out.float().cpu().numpy() - ref[0].astype(np.float32)))) < 4e-3
          and np.array_equal(t_in[3].cpu().numpy(), ref[1]) and np.array_equal(t_in[4].cpu().numpy(), ref[2]))
    report["enqueue"]["SubBlockCacheAttention"] = bool(ok)
    report["ok"] = all(report["enqueue"].values())
    if getattr(trt, "__name__", "") == "tensorrt":
        try:
            report["engine"] = _trt_engines(trt)
            report["ok"] &= all(r.get("ok", False) for r in report["engine"].values())
        except Exception as e:  # report, do not hide: the engine path is what TensorRT users run
            report["engine"] = {"error": f"{type(e).__name__}: {e}"}
            report["ok"] = False
    else:
        report["engine"] = {"skipped": "tensorrt (TensorRT 10) is not installed; TensorRT-RTX refuses plugin layers "
                                       "(docs/plugins.md)"}
    return report


def _trt_engines(trt) -> dict:
    """Engines of the two custom-node models, built and run with TensorRT 10 and the plugins."""
    torch = _torch()
    from dllm_trt.plugins.onnx_fallback import subblock_cache_attention_model, threshold_unmask_model
    from dllm_trt.plugins.trt_plugins import register_plugins

    register_plugins(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    rng = np.random.default_rng(2)
    results = {}

    def build(model, shapes):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model.SerializeToString()):
            raise RuntimeError("; ".join(parser.get_error(i).desc() for i in range(parser.num_errors)))
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT did not build the engine (see its log above)")
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        return engine, engine.create_execution_context()

    def run(context, tensors):
        for name, t in tensors.items():
            context.set_tensor_address(name, t.data_ptr())
            if context.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, tuple(t.shape))
        stream = torch.cuda.Stream()
        assert context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    v, mask = VOCABS[1]
    logits, tokens, cand = unmask_inputs(rng, 2, 8, v, mask)
    engine, ctx = build(threshold_unmask_model(mask, vocab=v, custom=True),
                        {"logits": logits.shape, "tokens": tokens.shape, "candidates": cand.shape, "threshold": (1,)})
    t = {"logits": _to_torch(logits), "tokens": _to_torch(tokens), "candidates": _to_torch(cand),
         "threshold": _to_torch(np.array([0.9], np.float32)),
         "new_tokens": torch.zeros((2, 8), dtype=torch.int64, device="cuda"),
         "num_unmasked": torch.zeros(2, dtype=torch.int64, device="cuda"),
         "confidence": torch.zeros((2, 8), dtype=torch.float32, device="cuda")}
    run(ctx, t)
    ref = threshold_unmask(logits, tokens, cand, mask, 0.9)
    results["ThresholdUnmask"] = {"ok": bool(np.array_equal(t["new_tokens"].cpu().numpy(), ref[0])
                                             and np.array_equal(t["num_unmasked"].cpu().numpy(), ref[1])
                                             and np.allclose(t["confidence"].cpu().numpy(), ref[2], rtol=1e-3))}
    x = cache_inputs(rng, 2, 8, 2, 64, 8, 200, 256, "fp32")
    model = subblock_cache_attention_model(8, 2, 64, custom=True)
    names = ("query", "key", "value", "key_cache", "value_cache", "cache_position", "bias")
    arrays = (x["q"], x["k"], x["v"], x["kc"], x["vc"], x["cp"], x["cb"])
    engine, ctx = build(model, {n: a.shape for n, a in zip(names, arrays)})
    t = {n: _to_torch(a) for n, a in zip(names, arrays)}
    t["output"] = torch.zeros_like(t["query"])
    t["key_cache_out"], t["value_cache_out"] = t["key_cache"], t["value_cache"]  # in place: the same buffers
    run(ctx, t)
    ref = subblock_cache_attention(*arrays)
    results["SubBlockCacheAttention"] = {
        "ok": bool(np.allclose(t["output"].cpu().numpy(), ref[0], atol=1e-4)
                   and np.array_equal(t["key_cache"].cpu().numpy(), ref[1])
                   and np.array_equal(t["value_cache"].cpu().numpy(), ref[2])),
        "note": "key_cache_out/value_cache_out bound to the key_cache/value_cache buffers"}
    return results


# ---------------------------------------------------------------------- (b) timings
def bench_unmask(bw: float, quick: bool) -> list[dict]:
    torch = _torch()
    from dllm_trt.plugins.triton_unmask import threshold_unmask_torch, threshold_unmask_triton

    rng = np.random.default_rng(3)
    rows = []
    for v, mask in VOCABS:
        for b in (1, 8):
            for l in (8, 32):
                logits, tokens, cand = unmask_inputs(rng, b, l, v, mask)
                cand[:] = True
                tl_, tt, tc = _to_torch(logits), _to_torch(tokens), _to_torch(cand)
                tau = torch.tensor([0.9], dtype=torch.float32, device="cuda")
                out = (torch.empty((b, l), dtype=torch.int64, device="cuda"), torch.empty(b, dtype=torch.int64, device="cuda"),
                       torch.empty((b, l), dtype=torch.float32, device="cuda"))
                ws = (torch.empty(1 << 16, dtype=torch.float32, device="cuda"),
                      torch.empty(1 << 16, dtype=torch.int32, device="cuda"),
                      torch.empty(1 << 16, dtype=torch.float32, device="cuda"))
                variants = {}
                for block, warps in ((1024, 4), (2048, 8), (4096, 8)):
                    fn = (lambda block=block, warps=warps: threshold_unmask_triton(
                        tl_, tt, tc, mask, tau, block=block, num_warps=warps, out=out, workspace=ws))
                    variants[f"{block}/{warps}"] = device_ms(fn)
                best = min(variants, key=variants.get)
                ours = variants["1024/4"]
                torch_ms = device_ms(lambda: threshold_unmask_torch(tl_, tt, tc, mask, 0.9))
                eager = eager_ms(lambda: threshold_unmask_triton(tl_, tt, tc, mask, tau, out=out, workspace=ws))
                host_ms = None
                if not quick or (b, l) == (1, 8):
                    def host():
                        z = tl_.cpu().numpy()
                        threshold_unmask(z, tokens, cand, mask, 0.9)
                    host()
                    t0 = time.perf_counter()
                    for _ in range(3):
                        host()
                    host_ms = (time.perf_counter() - t0) * 1e3 / 3
                floor = b * l * v * 4 / bw * 1e3
                rows.append({"B": b, "L": l, "V": v, "floor_ms": floor, "ours_ms": ours, "ours_best_ms": variants[best],
                             "ours_best_config": best, "ours_eager_ms": eager, "torch_ms": torch_ms, "host_numpy_ms": host_ms,
                             "ours_over_floor": ours / floor, "torch_over_ours": torch_ms / ours, "variants_ms": variants})
    torch.cuda.empty_cache()
    return rows


def bench_cache(bw: float, quick: bool) -> list[dict]:
    torch = _torch()
    import torch.nn.functional as F

    from dllm_trt.plugins.triton_cache import (cache_attention_triton, scatter_kv_triton,
                                               subblock_cache_attention_triton, torch_concat_attention)

    rng = np.random.default_rng(4)
    rows = []
    past = 1024
    for name, (h, hkv, d) in HEADS.items():
        for b in (1, 8):
            for l in (8, 32):
                x = cache_inputs(rng, b, h, hkv, d, l, past, past + 64, "fp16")
                q, k, v = _to_torch(x["q"]), _to_torch(x["k"]), _to_torch(x["v"])
                kc, vc = _to_torch(x["kc"]), _to_torch(x["vc"])
                cp, cb, bias = _to_torch(x["cp"]), _to_torch(x["cb"]), _to_torch(x["bias"])
                out = torch.empty_like(q)
                s = cb.shape[-1]
                ours = device_ms(lambda: subblock_cache_attention_triton(q, k, v, kc, vc, cp, cb, out=out))
                write = device_ms(lambda: scatter_kv_triton(k, v, kc, vc, cp))
                attn = device_ms(lambda: cache_attention_triton(q, kc, vc, cb, out=out))
                pk, pv = kc[:, :, :past], vc[:, :, :past]
                concat = device_ms(lambda: torch_concat_attention(q, k, v, pk, pv, bias))
                bias16 = bias.to(torch.float16)

                def sdpa():
                    kk = torch.cat((pk, k), dim=2)
                    vv = torch.cat((pv, v), dim=2)
                    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=bias16, enable_gqa=hkv != h)
                concat_sdpa = device_ms(sdpa)
                eager = eager_ms(lambda: subblock_cache_attention_triton(q, k, v, kc, vc, cp, cb, out=out))
                el = 2
                floor_bytes = (2 * b * hkv * s * d * el + 2 * b * h * l * d * el + b * l * s * 4 + 4 * b * hkv * l * d * el)
                floor = floor_bytes / bw * 1e3
                rows.append({"heads": name, "H": h, "Hkv": hkv, "D": d, "B": b, "L": l, "past": past, "keys": s,
                             "floor_ms": floor, "ours_ms": ours, "ours_write_ms": write, "ours_attention_ms": attn,
                             "ours_eager_ms": eager, "concat_torch_ms": concat, "concat_sdpa_ms": concat_sdpa,
                             "ours_over_floor": ours / floor})
    torch.cuda.empty_cache()
    return rows


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def print_tables(unmask_rows, cache_rows, bw):
    print(f"\nThresholdUnmask, float32 logits (device ms, CUDA-graph replay; floor = logit bytes / {bw / 1e12:.2f} TB/s)")
    print("| B | L | V | floor ms | ours ms | ours / floor | best config ms | torch ms | torch / ours | ours eager ms | host (D2H + numpy) ms |")
    print("| -: | -: | -: | -: | -: | -: | -: | -: | -: | -: | -: |")
    for r in unmask_rows:
        print(f"| {r['B']} | {r['L']} | {r['V']} | {_fmt(r['floor_ms'], 4)} | {_fmt(r['ours_ms'], 4)} | "
              f"{r['ours_over_floor']:.2f}x | {_fmt(r['ours_best_ms'], 4)} ({r['ours_best_config']}) | "
              f"{_fmt(r['torch_ms'], 4)} | {r['torch_over_ours']:.1f}x | {_fmt(r['ours_eager_ms'], 4)} | "
              f"{_fmt(r['host_numpy_ms'], 2)} |")
    print(f"\nSubBlockCacheAttention, fp16, one layer, past {cache_rows[0]['past'] if cache_rows else '-'} "
          "(device ms; floor = K/V over the attended keys + q/out/bias + written rows)")
    print("| heads (H/Hkv/D) | B | L | floor ms | ours ms (write + attention) | ours / floor | concat + torch attention ms | "
          "concat + SDPA ms | ours eager ms |")
    print("| - | -: | -: | -: | -: | -: | -: | -: | -: |")
    for r in cache_rows:
        print(f"| {r['heads']} ({r['H']}/{r['Hkv']}/{r['D']}) | {r['B']} | {r['L']} | {_fmt(r['floor_ms'], 4)} | "
              f"{_fmt(r['ours_ms'], 4)} ({_fmt(r['ours_write_ms'], 4)} + {_fmt(r['ours_attention_ms'], 4)}) | "
              f"{r['ours_over_floor']:.2f}x | {_fmt(r['concat_torch_ms'], 4)} | {_fmt(r['concat_sdpa_ms'], 4)} | "
              f"{_fmt(r['ours_eager_ms'], 4)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="host baseline only for B=1, L=8")
    ap.add_argument("--json", default=None, help="write the full results here (default $OUT/plugins_gpu.json)")
    ap.add_argument("--skip-bench", action="store_true", help="checks only")
    args = ap.parse_args(argv)
    torch = _torch()
    import triton

    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    result = {"device": props.name, "sm_count": props.multi_processor_count, "torch": torch.__version__,
              "triton": triton.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d")}
    print(f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, triton {triton.__version__}")
    checks = [check_unmask(v, m) for v, m in VOCABS] + [check_cache()]
    try:
        trt_report = check_trt_plugins()
    except Exception as e:  # a TensorRT API mismatch must not hide the kernel results
        import traceback

        trt_report = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    result["checks"] = checks + [dict(trt_report, op="trt_plugins")]
    for c in checks:
        print(f"check {c['op']:24s} {c.get('vocab', ''):>7} {c['cases']:4d} cases: {'PASS' if c['ok'] else 'FAIL'}"
              + ("" if c["ok"] else f"  {json.dumps(c['failures'][:3])}"))
    print(f"check trt_plugins: {'SKIPPED: ' + trt_report['skipped'] if trt_report.get('skipped') else ('PASS' if trt_report['ok'] else 'FAIL')}"
          f"  {json.dumps({k: v for k, v in trt_report.items() if k in ('enqueue', 'engine', 'error')})}")
    ok = all(c["ok"] for c in checks) and trt_report["ok"]
    if not args.skip_bench:
        bw = copy_bandwidth()
        result["copy_bandwidth_bytes_per_s"] = bw
        print(f"device copy bandwidth (read + write): {bw / 1e12:.2f} TB/s")
        result["unmask"] = bench_unmask(bw, args.quick)
        result["cache"] = bench_cache(bw, args.quick)
        print_tables(result["unmask"], result["cache"], bw)
    result["ok"] = ok
    result["seconds"] = round(time.time() - t0, 1)
    print(f"\n{'ALL CHECKS PASS' if ok else 'SOME CHECKS FAILED'} ({result['seconds']} s)")
    path = args.json or (os.path.join(os.environ["OUT"], "plugins_gpu.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
