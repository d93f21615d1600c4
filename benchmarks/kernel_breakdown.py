"""Where the GPU time of one ORT CUDA block step goes: a model with LLaDA-8B's dimensions and N
layers (default 4: the per-layer kernels are the 8B model's, the export takes seconds), the block
step timed with and without CUDA graphs, and torch.profiler's CUDA kernel table (CUPTI sees ONNX
Runtime's kernels too).

    python benchmarks/kernel_breakdown.py [LAYERS] [OPS] [STEP]   # GPU machine, onnxruntime-gpu
    OPS: standard | ort | ort-cuda; STEP: block (32 tokens over a 320-position cache, default) or prefill
    (320 tokens, no past, the cache written: the prefill of prompt 64 + gen 256)
"""
import sys, os, time, collections, statistics
sys.path.insert(0, os.getcwd())
import numpy as np, torch
import benchmarks.llada8b_ort_cuda as B
from dllm_trt.config import ModelConfig
from dllm_trt.models import build_model, save_model
from dllm_trt.export.onnx_export import export_onnx
from dllm_trt.runtime.backends.ort_backend import OrtBackend
import onnxruntime as ort
layers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
ops = sys.argv[2] if len(sys.argv) > 2 else "standard"
step = sys.argv[3] if len(sys.argv) > 3 else "block"
raw = dict(B.LLADA_8B, n_layers=layers)
cfg = ModelConfig.from_dict(raw)
with torch.device("cuda"):
    m = build_model(cfg).to(torch.bfloat16)
B.random_init(m)
save_model(m.cpu(), "/tmp/l4/ckpt"); del m; torch.cuda.empty_cache()
if not os.path.isdir(f"/tmp/l4/onnx-{ops}"):
    export_onnx("/tmp/l4/ckpt", f"/tmp/l4/onnx-{ops}", dtype="bf16", validate=False, progress=False, ops=ops)
rng = np.random.default_rng(0)
L, PAST = 32, 320
for graph in (True, False):
    be = OrtBackend.from_pretrained(f"/tmp/l4/onnx-{ops}", provider="cuda", cuda_graph=graph)
    cache = be.allocate_cache(1, PAST); C = cache.capacity
    if step == "prefill":  # the whole sequence, no past; the block's 32 rows read; the cache written
        n = PAST
        ids = rng.integers(0, 1000, (1, n)); pos = np.arange(n)[None]; bias = np.zeros((1, 1, n, n), np.float32)
        rows = np.arange(64, 96)[None]; write = np.ones((1, n), bool)
        f = lambda: be.forward(ids, pos, bias, cache, 0, write, rows)
    else:
        ids = rng.integers(0, 1000, (1, L)); pos = np.arange(64, 96)[None]
        bias = np.zeros((1, 1, L, C + L), np.float32)
        rows = np.arange(L)[None]
        f = lambda: be.forward(ids, pos, bias, cache, C, None, rows)
    for _ in range(5): f()
    t = []
    for _ in range(20):
        t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    print(f"{layers} layers, --ops {ops}, cuda_graph={graph}: {step} step {statistics.median(t)*1e3:.3f} ms", flush=True)
    if not graph:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5): f()
            torch.cuda.synchronize()
        agg = collections.Counter(); cnt = collections.Counter()
        for e in p.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                agg[e.name[:100]] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                cnt[e.name[:100]] += 1
        tot = sum(agg.values()) / 5
        print(f"kernel time per step {tot/1e3:.3f} ms over {sum(cnt.values())//5} kernels", flush=True)
        for name, d in agg.most_common(25):
            print(f"{d/5/1e3:8.3f} ms {cnt[name]//5:5d}x  {name}", flush=True)
    del be
