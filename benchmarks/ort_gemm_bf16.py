"""bf16 GEMMs on ONNX Runtime CUDA at the decode step's shapes (M = 32 and 320 rows), as MatMul
(weights [K, N]), Gemm(transB) and FusedMatMul(transB) (weights [N, K]): 8 chained GEMMs per graph,
replayed as a CUDA graph, time per GEMM against the weight-read floor (4.24 TB/s).

    python benchmarks/ort_gemm_bf16.py        # GPU machine, onnxruntime-gpu
"""
import time, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto as T, numpy_helper
def bf16(a): 
    b = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    t = onnx.TensorProto(); t.data_type = T.BFLOAT16; t.dims.extend(a.shape); t.raw_data = b.tobytes(); return t
def model(kind, M, K, N, reps=8):
    nodes, inits = [], []
    x = "x"
    for r in range(reps):  # chain reps layers of distinct weights (K==N needed for chain) -> use separate outputs
        w = f"w{r}"
        if kind == "matmul":
            inits.append(bf16(np.random.randn(K, N) * 0.02)); inits[-1].name = w
            nodes.append(helper.make_node("MatMul", ["x", w], [f"y{r}"]))
        elif kind == "gemm":
            inits.append(bf16(np.random.randn(N, K) * 0.02)); inits[-1].name = w
            nodes.append(helper.make_node("Gemm", ["x2", w], [f"y{r}"], transB=1))
        else:
            inits.append(bf16(np.random.randn(N, K) * 0.02)); inits[-1].name = w
            nodes.append(helper.make_node("FusedMatMul", ["x", w], [f"y{r}"], domain="com.microsoft", transB=1))
    xin = helper.make_tensor_value_info("x2" if kind == "gemm" else "x", T.BFLOAT16, [M, K] if kind == "gemm" else [1, M, K])
    outs = [helper.make_tensor_value_info(f"y{r}", T.BFLOAT16, None) for r in range(reps)]
    g = helper.make_graph(nodes, "g", [xin], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]); m.ir_version = 9
    return m
for (K, N) in [(4096, 12288), (12288, 4096), (4096, 4096)]:
    for kind in ["matmul", "gemm", "fused"]:
        for M in [32, 320]:
            reps = 8
            m = model(kind, M, K, N, reps)
            p = f"/tmp/g_{kind}.onnx"; onnx.save(m, p)
            s = ort.InferenceSession(p, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
            io = s.io_binding()
            xn = "x2" if kind == "gemm" else "x"
            shape = [M, K] if kind == "gemm" else [1, M, K]
            xv = ort.OrtValue.ortvalue_from_shape_and_type(shape, T.BFLOAT16, "cuda", 0)
            io.bind_ortvalue_input(xn, xv)
            for o in s.get_outputs():
                io.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_shape_and_type([1, M, N] if kind != "gemm" else [M, N], T.BFLOAT16, "cuda", 0))
            for _ in range(5): s.run_with_iobinding(io)
            t0 = time.perf_counter(); n = 30
            for _ in range(n): s.run_with_iobinding(io)
            dt = (time.perf_counter() - t0) / n / reps
            floor = K * N * 2 / 4.24e12
            print(f"K={K:5d} N={N:5d} M={M:3d} {kind:7s} {dt*1e6:8.1f} us/gemm  floor {floor*1e6:6.1f} us  {dt/floor:5.2f}x", flush=True)
