"""The TensorRT backend (dllm_trt/runtime/backends/trt_backend.py).

On CI (no GPU) the backend's own logic runs against a host stand-in for the two things it drives:
``HostDevice`` (device memory = numpy byte arrays, the same alloc / copy / memset / scatter_kv calls
as ``CudaDevice``, fresh memory filled with NaN bytes; ``scatter_kv`` reads its pointer tables and
positions from that memory like the kernel does) and ``OrtContext`` (an "engine" that reads its
inputs from that memory by address and shape, runs the ONNX graph with ONNX Runtime and writes the
outputs back). So the pooled cache bound as the past, the in-place scatter of the presents, the
row index and the profile checks are tested token for token against OrtBackend; only the TensorRT
and CUDA calls themselves are not. The real thing runs in the ``gpu`` tests below, which skip here
with the reason.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dllm_trt.contract import config_from_artifact, read_artifact_config
from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.backends.ort_backend import OrtBackend
from dllm_trt.runtime.backends.trt_backend import TrtBackend

REPO = Path(__file__).resolve().parents[1]
CKPTS = REPO / "samples" / "checkpoints"
_ONNX_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class HostDevice:
    """Device memory on the host: pointer = base + offset, one numpy byte array per allocation."""

    STEP = 1 << 36
    stream_handle = 0

    def __init__(self):
        self.mem: dict[int, np.ndarray] = {}
        self.next = self.STEP
        self.copies = 0  # device-to-device copies (copy2d): the cache is never copied
        self.scatters: list[np.ndarray] = []  # the positions of every scatter_kv
        self.down = 0  # bytes copied device -> host

    def alloc(self, nbytes):
        base = self.next
        self.next += self.STEP
        self.mem[base] = np.full(max(int(nbytes), 256), 0xFF, np.uint8)  # NaN bytes: uninitialised memory
        return base

    def free(self, ptr):
        del self.mem[ptr]

    def make_current(self):
        pass

    def _at(self, ptr, n):
        base = ptr - ptr % self.STEP
        arr, off = self.mem[base], ptr - base
        assert 0 <= off and off + n <= arr.size, f"out of bounds: {off}+{n} > {arr.size}"
        return arr[off: off + n]

    def htod(self, ptr, array):
        self._at(ptr, array.nbytes)[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def dtoh(self, array, ptr):
        self.down += array.nbytes
        array.reshape(-1).view(np.uint8)[:] = self._at(ptr, array.nbytes)

    htod_sync, dtoh_sync = htod, dtoh

    def copy2d(self, dst, dst_pitch, src, src_pitch, width, height):
        self.copies += 1
        for r in range(height):
            self._at(dst + r * dst_pitch, width)[:] = self._at(src + r * src_pitch, width)

    def zero(self, ptr, nbytes):
        self._at(ptr, nbytes)[:] = 0

    def scatter_kv(self, src_table, dst_table, tensors, pos, batch, heads, length, capacity, row_bytes):
        """What cuda_device's kernel does: present[t][b, h, l, :] -> cache[t][b, h, pos[b, l], :], pos < 0 skipped."""
        srcs = self._at(src_table, 8 * tensors).view(np.uint64)
        dsts = self._at(dst_table, 8 * tensors).view(np.uint64)
        p = self._at(pos, 8 * batch * length).view(np.int64).reshape(batch, length).copy()
        self.scatters.append(p)
        bi, li = np.nonzero((p >= 0) & (p < capacity))
        for s, d in zip(srcs.tolist(), dsts.tolist()):
            src = self._at(s, batch * heads * length * row_bytes).reshape(batch, heads, length, row_bytes)
            dst = self._at(d, batch * heads * capacity * row_bytes).reshape(batch, heads, capacity, row_bytes)
            dst[bi, :, p[bi, li]] = src[bi, :, li]

    def sync(self):
        pass

    # CUDA graphs: a capture records the engine's work (OrtContext defers it) and a launch replays it, reading
    # the memory at the captured addresses as it is then, like a real graph
    capturing = None

    def begin_capture(self):
        assert self.capturing is None, "nested capture"
        self.capturing = []

    def end_capture(self):
        graph, self.capturing = self.capturing, None
        return graph

    def launch_graph(self, graph):
        for work in graph:
            work()

    def destroy_graph(self, graph):
        pass


class OrtEngine:
    """The engine-side API the backend reads: the optimization profile (min, opt, max) per input."""

    def __init__(self, profile):
        self.profile = profile

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.profile[name]


class OrtContext:
    """IExecutionContext stand-in: set_input_shape / set_tensor_address / execute_async_v3 over ORT.
    The output shapes follow the contract: tokens/confidence [B, R], logits [B, R, V], presents [B, H, L, D]."""

    def __init__(self, device, session, profile):
        self.device, self.session, self.profile = device, session, profile
        self.shapes, self.addrs = {}, {}
        self.types = {i.name: _ONNX_NP[i.type] for i in session.get_inputs()}
        self.out_types = {o.name: _ONNX_NP[o.type] for o in session.get_outputs()}
        self.calls = []

    def set_input_shape(self, name, shape):
        lo, _, hi = self.profile[name]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        assert ptr, f"null address for {name}"
        self.addrs[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.device.capturing is not None:  # recorded with the shapes and addresses of now, run at each launch
            shapes, addrs = dict(self.shapes), dict(self.addrs)
            self.device.capturing.append(lambda: self._execute(shapes, addrs))
            return True
        return self._execute(self.shapes, self.addrs)

    def _execute(self, shapes, addrs):
        feeds = {}
        for name, shape in shapes.items():
            t = np.dtype(self.types[name])
            n = int(np.prod(shape)) * t.itemsize
            feeds[name] = self.device._at(addrs[name], n).view(t).reshape(shape).copy()
        past = feeds["past_key_values.0.key"]
        assert np.isfinite(past.astype(np.float32)).all(), "the past holds NaN: a cache was not zeroed"
        self.calls.append({k: v.shape for k, v in feeds.items() if not k.startswith("past")} |
                          {"past": past.shape[2], "past_ptr": addrs["past_key_values.0.key"]})
        outs = self.session.run(None, feeds)
        for o, value in zip(self.session.get_outputs(), outs):
            value = np.ascontiguousarray(value.astype(self.out_types[o.name]))
            self.device.htod(addrs[o.name], value)
        return True


def host_backend(onnx_dir: Path, batch=(1, 1, 4), query=(1, 16, 64), past=(0, 64, 128),
                 cuda_graph: bool = True) -> TrtBackend:
    """A TrtBackend over HostDevice + OrtContext with the given profile ranges (min, opt, max)."""
    import onnxruntime as ort

    meta = read_artifact_config(onnx_dir)
    config = config_from_artifact(meta)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    h, d = config.num_kv_heads, config.head_dim
    prof = {}
    for name in ("input_ids", "position_ids"):
        prof[name] = [(batch[i], query[i]) for i in range(3)]
    prof["logits_index"] = [(batch[0], 1), (batch[1], query[1]), (batch[2], query[2])]
    prof["attention_bias"] = [(batch[i], 1, query[i], past[i] + query[i]) for i in range(3)]
    for i in range(config.num_layers):
        for kv in ("key", "value"):
            prof[f"past_key_values.{i}.{kv}"] = [(batch[j], h, past[j], d) for j in range(3)]
    dev = HostDevice()
    ctx = OrtContext(dev, session, prof)
    kv = {"fp32": "float32", "fp16": "float16"}[meta["dtype"]]

    def dtype_of(name):
        if name.startswith(("past", "present")):
            return kv
        return {"input_ids": "int64", "position_ids": "int64", "attention_bias": "float32", "logits": "float32",
                "logits_index": "int64", "tokens": "int64", "confidence": "float32", "margin": "float32",
                "neg_entropy": "float32"}[name]

    return TrtBackend(onnx_dir, meta, config, dev, OrtEngine(prof), ctx, dtype_of, cuda_graph=cuda_graph)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """fp32 exports of the trained tiny checkpoints (no validation: test_export_ort covers it)."""
    pytest.importorskip("torch")
    from dllm_trt.export import export_onnx

    out = {}
    root = tmp_path_factory.mktemp("trt-host")
    for name in ("llada-tiny", "dream-tiny", "bd-tiny"):
        assert (CKPTS / name / "config.json").is_file(), f"bundled checkpoint {CKPTS / name} is missing"
        out[name] = root / name
        export_onnx(str(CKPTS / name), str(out[name]), dtype="fp32", validate=False, progress=False, log=lambda s: None)
    return out


def test_host_scatter_kv_writes_exactly_the_rows():
    """The stand-in's scatter (the kernel's contract): only rows with pos >= 0 move, at their positions."""
    dev = HostDevice()
    b, h, l, cap, d = 2, 3, 4, 10, 8
    src = np.arange(2 * b * h * l * d, dtype=np.float32).reshape(2, b, h, l, d)
    ptrs = [dev.alloc(src[0].nbytes) for _ in range(2)]
    caches = [dev.alloc(b * h * cap * d * 4) for _ in range(2)]
    for p, x in zip(ptrs, src):
        dev.htod(p, x)
    tables = dev.alloc(16), dev.alloc(16)
    dev.htod(tables[0], np.array(ptrs, np.uint64))
    dev.htod(tables[1], np.array(caches, np.uint64))
    pos = np.array([[5, -1, 7, 2], [-1, -1, 9, 0]], np.int64)
    pp = dev.alloc(pos.nbytes)
    dev.htod(pp, pos)
    dev.scatter_kv(*tables, 2, pp, b, h, l, cap, d * 4)
    for t in range(2):
        got = dev._at(caches[t], b * h * cap * d * 4).view(np.float32).reshape(b, h, cap, d)
        want = np.full((b, h, cap, d), np.nan, np.float32)
        for bi in range(b):
            for li in range(l):
                if pos[bi, li] >= 0:
                    want[bi, :, pos[bi, li]] = src[t, bi, :, li]
        np.testing.assert_array_equal(got, want)  # NaN (never written) exactly where nothing was written


# low_confidence with steps = gen_length unmasks one token per step, so the caches are exercised
# (the trained models finish a block in one step at threshold 0.9)
CASES = [("llada-tiny", "threshold", "none"), ("llada-tiny", "low_confidence", "dual"),
         ("llada-tiny", "low_confidence", "prefix"), ("dream-tiny", "low_confidence", "dual"),
         ("dream-tiny", "random", "prefix"), ("bd-tiny", "threshold", "sub_block"), ("bd-tiny", "threshold", "block"),
         ("bd-tiny", "factor", "none"), ("dream-tiny", "entropy", "none"), ("dream-tiny", "topk_margin", "dual"),
         ("bd-tiny", "sequential", "block")]  # Dream's statistics (margin / neg_entropy bound and downloaded), SDAR's


@pytest.mark.parametrize("name,strategy,cache", CASES)
def test_host_backend_matches_ort(exports, task_tokenizer, name, strategy, cache):
    """The pooled cache bound as the past and the in-place scatter give OrtBackend's tokens exactly
    (batch of mixed lengths); the cache is never copied, only B x R numbers come down per step."""
    onnx_dir = exports[name]
    ort_b = OrtBackend.from_pretrained(onnx_dir, intra_op_threads=1)
    trt_b = host_backend(onnx_dir)
    prompts = [task_tokenizer.encode(t) for t in ("add:457+368=", "rev:kernel=", "sort:dcba=")]
    gen = GenerationConfig(strategy=strategy, cache=cache, gen_length=16, block_length=8, steps=16, threshold=0.9,
                           **({"sub_block_length": 4} if name == "bd-tiny" else {}))
    want = generate(ort_b, prompts, gen)
    got = generate(trt_b, prompts, gen)
    assert got.tokens == want.tokens
    assert got.nfe == want.nfe == len(trt_b.context.calls)
    dev = trt_b.device
    assert dev.copies == 0
    rows = sum(c["logits_index"][0] * c["logits_index"][1] for c in trt_b.context.calls)
    # per read row: the token (int64) and its three statistics (confidence, margin, neg_entropy: float32)
    assert dev.down == rows * (8 + 4 + 4 + 4), "more than the rows' tokens and statistics came down"
    if cache != "none":
        cached = [c for c in trt_b.context.calls if c["past"] > 0]
        assert cached and len({(c["past"], c["past_ptr"]) for c in cached}) == 1  # one cache, bound whole
        assert cached[0]["past"] % 64 == 0  # pooled capacity rounded up
        assert dev.scatters and all(p.max() < cached[0]["past"] for p in dev.scatters)
    else:
        assert not dev.scatters
    if cache in ("none", "prefix", "dual"):  # block diffusion's cached prefill already binds the cache
        assert any(c["past"] == 0 for c in trt_b.context.calls)  # a full forward binds a 0-length past


def test_cuda_graphs_capture_each_bucket_once_and_replay_it(exports, task_tokenizer):
    """With CUDA graphs (the default) a bucket's first forward runs as is, its second is captured and later ones
    replay the graph without setting shapes or addresses; the tokens are those of the backend without graphs
    and of OrtBackend (the stand-in's graph replays the engine on the memory at the captured addresses)."""
    onnx_dir = exports["llada-tiny"]
    prompts = [task_tokenizer.encode(t) for t in ("add:457+368=", "rev:kernel=")]
    gen = GenerationConfig(strategy="low_confidence", cache="dual", gen_length=16, block_length=8, steps=16)
    want = generate(OrtBackend.from_pretrained(onnx_dir, intra_op_threads=1), prompts, gen)
    plain = host_backend(onnx_dir, cuda_graph=False)
    graphs = host_backend(onnx_dir)
    sets = {"plain": 0, "graphs": 0}
    for key, backend in (("plain", plain), ("graphs", graphs)):
        real = backend.context.set_input_shape

        def counted(name, shape, real=real, key=key):
            sets[key] += 1
            return real(name, shape)

        backend.context.set_input_shape = counted
        got = generate(backend, prompts, gen)
        assert (got.tokens, got.nfe) == (want.tokens, want.nfe), key
    assert plain.graph_stats == {"captured": 0, "replayed": 0, "failed": 0}
    stats = graphs.graph_stats
    # dual cache: a prefill and block steps of one shape per block -> few buckets, most steps replayed
    assert stats["captured"] >= 1 and stats["replayed"] >= want.nfe // 2 and stats["failed"] == 0
    assert stats["captured"] + stats["replayed"] < want.nfe
    assert sets["graphs"] < sets["plain"] * (want.nfe - stats["replayed"]) / want.nfe + 1
    # the same decode again: every bucket has been seen, so every forward goes through a graph (captured now, for
    # a bucket seen once so far, or replayed)
    before = dict(stats)
    assert generate(graphs, prompts, gen).tokens == want.tokens
    new = {k: graphs.graph_stats[k] - before[k] for k in before}
    assert new["captured"] + new["replayed"] == want.nfe and new["replayed"] > new["captured"]


def test_a_step_that_cannot_be_captured_runs_without_a_graph(exports, task_tokenizer):
    """An engine whose enqueue fails under capture: one warning, that bucket runs as is from then on, same
    tokens."""
    onnx_dir = exports["llada-tiny"]
    prompts = [task_tokenizer.encode("sort:dcba=")]
    gen = GenerationConfig(strategy="low_confidence", cache="dual", gen_length=16, block_length=8, steps=16)
    want = generate(OrtBackend.from_pretrained(onnx_dir, intra_op_threads=1), prompts, gen)
    backend = host_backend(onnx_dir)
    real = backend.context.execute_async_v3

    def refuses_capture(stream):
        if backend.device.capturing is not None:
            return False
        return real(stream)

    backend.context.execute_async_v3 = refuses_capture
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        got = generate(backend, prompts, gen)
    assert (got.tokens, got.nfe) == (want.tokens, want.nfe)
    assert backend.graph_stats["captured"] == backend.graph_stats["replayed"] == 0
    assert backend.graph_stats["failed"] >= 1
    assert backend.device.capturing is None  # every capture was ended
    # a context that says it cannot be captured is not tried
    backend = host_backend(onnx_dir)
    backend.context.is_stream_capturable = lambda stream: False
    with pytest.warns(RuntimeWarning, match="cannot be stream-captured"):
        assert generate(backend, prompts, gen).tokens == want.tokens
    assert backend.graph_stats["captured"] == 0 and backend.graph_stats["failed"] >= 1


def test_host_backend_outputs_and_cache(exports):
    """A prefill that writes, then a cached step over the whole (rounded) cache: tokens, confidences and
    logits equal ORT's; the cache holds the presents at their positions and zeros elsewhere."""
    onnx_dir = exports["llada-tiny"]
    ort_b = OrtBackend.from_pretrained(onnx_dir, intra_op_threads=1)
    trt_b = host_backend(onnx_dir)
    cfg = ort_b.config
    rng = np.random.default_rng(0)
    b, l = 2, 10
    ids = rng.integers(3, 40, (b, l))
    pos = np.tile(np.arange(l), (b, 1))
    bias = np.zeros((b, 1, l, l), np.float32)
    wm = np.ones((b, l), bool)
    wm[1, 7:] = False
    rows = np.array([[9, 0, 4], [2, 2, 6]], np.int64)
    c1, c2 = ort_b.allocate_cache(b, 24), trt_b.allocate_cache(b, 24)
    assert c2.capacity == 64 and c1.capacity == 24

    def same(x, y, logits, tol=0.0):  # tol: the cached step attends over 64 vs 24 keys (another float order)
        np.testing.assert_array_equal(x.tokens, y.tokens)
        np.testing.assert_allclose(x.confidence, y.confidence, rtol=tol, atol=0)
        if logits:
            np.testing.assert_allclose(x.logits, y.logits, rtol=tol, atol=0)
        else:
            assert x.logits is None and y.logits is None

    same(trt_b.forward(ids, pos, bias, c2, 0, wm, rows, True), ort_b.forward(ids, pos, bias, c1, 0, wm, rows, True),
         True)
    dev = trt_b.device
    h, d = cfg.num_kv_heads, cfg.head_dim
    for j in range(cfg.num_layers):
        for kv in (0, 1):
            got = dev._at(c2.layers[j][kv], b * h * 64 * d * 4).view(np.float32).reshape(b, h, 64, d)
            np.testing.assert_array_equal(got[:, :, :24], c1.layers[j][kv])
            assert (got[:, :, 24:] == 0).all()
            assert (got[1, :, 7:] == 0).all()  # not in the write mask
    ids2 = rng.integers(3, 40, (b, 4))
    pos2 = np.tile(np.arange(l, l + 4), (b, 1))
    outs = []
    for be, cache in ((trt_b, c2), (ort_b, c1)):
        cap = cache.capacity
        bias2 = np.zeros((b, 1, 4, cap + 4), np.float32)
        bias2[:, :, :, l:cap] = -1e9  # beyond the written positions
        bias2[1, :, :, 7:l] = -1e9  # never written: masked
        outs.append(be.forward(ids2, pos2, bias2, cache, cap, None, rows[:, :2] % 4, False))
    same(*outs, False, 1e-5)


def test_host_backend_needs_a_zero_past_profile(exports, task_tokenizer):
    """An engine whose profile starts at P = 2 cannot run the prefill (P = 0): it says to rebuild it."""
    trt_b = host_backend(exports["dream-tiny"], past=(2, 32, 66))
    gen = GenerationConfig(strategy="low_confidence", cache="dual", gen_length=16, block_length=8, steps=16)
    with pytest.raises(DllmError, match=r"past length 0 is outside the engine's range 2\.\.66.*rebuild.*--shapes"):
        generate(trt_b, [task_tokenizer.encode("add:12+34=")], gen)


def test_host_backend_profile_errors(exports):
    onnx_dir = exports["llada-tiny"]
    trt_b = host_backend(onnx_dir, batch=(1, 1, 2), query=(1, 8, 16), past=(0, 8, 16))
    with pytest.raises(DllmError, match="batch 3 is outside the engine's batch range 1..2.*--shapes"):
        trt_b.allocate_cache(3, 8)
    with pytest.raises(DllmError, match="needs 40 positions but the engine's profile allows a past of at most 16"):
        trt_b.allocate_cache(1, 40)
    cache = trt_b.allocate_cache(1, 12)
    assert cache.capacity == 16  # rounded up, within the profile
    ids = np.full((1, 20), 5)
    with pytest.raises(DllmError, match="query length 20 is outside the engine's range 1..16"):
        trt_b.forward(ids, np.arange(20)[None], np.zeros((1, 1, 20, 20), np.float32), cache, 0, None,
                      np.zeros((1, 1), np.int64))
    ids = np.full((1, 4), 5)
    with pytest.raises(DllmError, match="must be 0 or the cache capacity 16"):
        trt_b.forward(ids, np.arange(8, 12)[None], np.zeros((1, 1, 4, 12), np.float32), cache, 8, None,
                      np.zeros((1, 1), np.int64))
    with pytest.raises(DllmError, match="logits_index reads rows outside"):
        trt_b.forward(ids, np.arange(4)[None], np.zeros((1, 1, 4, 4), np.float32), cache, 0, None,
                      np.array([[4]], np.int64))


def test_trt_backend_imports_without_tensorrt_or_cuda():
    """The module (and load_backend's registry) import with tensorrt, tensorrt_rtx_bindings and cuda blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'tensorrt_rtx_bindings', 'cuda', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dllm_trt.runtime.backends.trt_backend\n"
        "import dllm_trt.runtime.backends.cuda_device as t\n"
        "import dllm_trt.engine, dllm_trt.engine.builder, dllm_trt.engine.check\n"
        "from dllm_trt.engine import api\n"
        "from dllm_trt.errors import DllmError\n"
        "try:\n"
        "    t._import_cuda()\n"
        "except DllmError as e:\n"
        "    assert 'pip install cuda-bindings' in str(e), e\n"
        "try:\n"
        "    api.load('trt-rtx')\n"
        "except DllmError as e:\n"
        "    assert 'tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings' in str(e), e\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------------- on a GPU
def _gpu_and(backend: str) -> tuple[bool, str]:
    from dllm_trt.engine import api
    from dllm_trt.engine.gpu import gpu_info, no_gpu_reason

    if not api.is_installed(backend):
        return False, f"{backend} is not installed ({api.install_hint(backend)})"
    try:
        import cuda.bindings.driver  # noqa: F401
    except ImportError:
        return False, "cuda-python (cuda.bindings) is not installed: pip install cuda-bindings"
    info = gpu_info(0)
    if info is None:
        return False, no_gpu_reason()
    if backend == "trt-rtx" and info["compute_capability"] not in api.RTX_TARGETS:
        return False, f"{info['name']} (sm {info['compute_capability']}) is not a TensorRT-RTX target"
    if backend == "trt-rtx" and info["compute_capability"] == "7.5":
        return False, "TensorRT-RTX builds no fp32 engine for Turing (7.5): no FP32 GEMM there"
    return True, ""


def _on_gpu(backend: str):
    ok, reason = _gpu_and(backend)
    return pytest.param(backend, marks=pytest.mark.skipif(not ok, reason=reason))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [_on_gpu("trt"), _on_gpu("trt-rtx")])
def test_engine_on_gpu_matches_ort(exports, tmp_path, task_tokenizer, backend):
    """Build an fp32 engine here (TF32 off), then decode: tokens equal ONNX Runtime CPU's."""
    from dllm_trt.engine.builder import build_engine
    from dllm_trt.engine.check import check_engine
    from dllm_trt.runtime.backends import load_backend

    for name, cache in (("llada-tiny", "dual"), ("dream-tiny", "prefix"), ("bd-tiny", "sub_block")):
        out = tmp_path / f"{name}-{backend}"
        build_engine(exports[name], out, backend=backend, shapes="B=1:2:4,L=1:16:64,P=0:32:64",
                     compute_capabilities="current" if backend == "trt-rtx" else None, cache_dir=tmp_path / "cache",
                     progress=False, log=lambda s: None)
        report = check_engine(out)
        assert report["ok"] and report["level"] == "gpu"
        trt_b = load_backend("trt", str(out))
        ort_b = OrtBackend.from_pretrained(exports[name], intra_op_threads=1)
        prompts = [task_tokenizer.encode(t) for t in ("add:457+368=", "rev:kernel=")]
        for c in ("none", cache):
            gen = GenerationConfig(strategy="threshold", cache=c, gen_length=16, block_length=8, threshold=0.9,
                                   **({"sub_block_length": 4} if name == "bd-tiny" else {}))
            assert generate(trt_b, prompts, gen).tokens == generate(ort_b, prompts, gen).tokens, (name, c)
        trt_b.close()


def test_profile_drives_the_trt_backend(exports):
    """`dllm-trt profile --backend trt` runs the profiler over the TensorRT backend (here its host stand-in):
    the same prompts and answers as on ONNX Runtime, the report names tensorrt and the cache writes are timed."""
    from dllm_trt.cli import build_parser
    from dllm_trt.profiling.session import profile_engine

    art = exports["llada-tiny"]
    argv = ["profile", "--engine", str(art), "--backend", "trt", "--n", "6", "--warmup", "0", "--no-progress",
            "--cache", "dual"]
    trt_report = profile_engine(build_parser().parse_args(argv), backend=host_backend(art))
    ort_report = profile_engine(build_parser().parse_args(argv[:4] + ["ort"] + argv[5:]))
    assert trt_report["backend"] == "tensorrt" and ort_report["backend"] == "onnxruntime"
    (t,), (o,) = trt_report["runs"], ort_report["runs"]
    assert t["status"] == o["status"] == "ok"
    assert t["predictions"] == o["predictions"] and t["exact_match"] == o["exact_match"] >= 5 / 6
    assert t["forwards"] == o["forwards"] and t["step_breakdown"]["cache_timed"]
