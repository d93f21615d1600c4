"""ONNX Runtime's CUDA path (IO binding, pooled device caches, the NVRTC ``scatter_kv`` kernel, CUDA
graphs) against the CPU host path, on the bundled tiny checkpoints. GPU only: every test is marked
``gpu`` and skips, with the reason, where there is no CUDA device, no onnxruntime-gpu CUDA provider
or no cuda-python. Each test takes seconds on a GPU (tiny models).

Run on a GPU machine: ``python -m pytest -q -m gpu tests/test_gpu_decode.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate
from dllm_trt.runtime.settings import CACHE_MODES, STRATEGIES_FOR, cache_modes_for

REPO = Path(__file__).resolve().parents[1]
CKPTS = {n: REPO / "samples" / "checkpoints" / n for n in ("llada-tiny", "dream-tiny", "bd-tiny")}
NO_TF32 = {"use_tf32": 0}  # fp32 on the GPU as fp32, so tokens can equal the fp32 CPU reference


def gpu_skip_reason() -> str | None:
    """Why the CUDA path cannot run here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("needs onnxruntime-gpu (CUDAExecutionProvider): pip uninstall -y onnxruntime && "
                "pip install onnxruntime-gpu")
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        try:
            from cuda import cuda  # noqa: F401
        except ImportError:
            return "needs cuda-python for the device caches and the scatter kernel: pip install cuda-bindings"
    from dllm_trt.runtime.backends.gpu import gpu_info, no_gpu_reason

    if gpu_info(0) is None:
        return f"needs a CUDA GPU: {no_gpu_reason()}"
    if not all((p / "config.json").is_file() for p in CKPTS.values()):
        return "the trained tiny checkpoints are not in samples/checkpoints"
    return None


_REASON = gpu_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(name, dtype) -> export folder: the three checkpoints in fp32, llada-tiny also in fp16."""
    pytest.importorskip("torch")
    from dllm_trt.export import export_onnx

    root = tmp_path_factory.mktemp("gpu-exports")
    out = {}
    for name, dtype in [(n, "fp32") for n in CKPTS] + [("llada-tiny", "fp16")]:
        out[name, dtype] = root / f"{name}-{dtype}"
        export_onnx(CKPTS[name], out[name, dtype], dtype=dtype, validate=False, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def backends(exports):
    """(name, dtype) -> {"cpu": host path, "graph": CUDA + CUDA graphs, "eager": CUDA without graphs}."""
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    made: dict = {}

    def make(name: str, dtype: str = "fp32"):
        if (name, dtype) not in made:
            art = exports[name, dtype]
            opts = NO_TF32 if dtype == "fp32" else None
            made[name, dtype] = {
                "cpu": OrtBackend.from_pretrained(art),
                "graph": OrtBackend.from_pretrained(art, provider="cuda", cuda_graph=True, provider_options=opts),
                "eager": OrtBackend.from_pretrained(art, provider="cuda", cuda_graph=False, provider_options=opts),
            }
        return made[name, dtype]

    return make


def prompts_for(art: Path) -> list[list[int]]:
    tok = TextTokenizer(art)
    return [tok.encode(t) for t in ("add:457+368=", "rev:kernel=", "sort:dcba=")]


def gen(strategy: str, cache: str, **kw) -> GenerationConfig:
    return GenerationConfig(**dict(dict(strategy=strategy, cache=cache, gen_length=16, block_length=8, steps=16,
                                        threshold=0.9, factor=1.0, sub_block_length=4, seed=3), **kw))


def assert_same(ref, got, label):
    assert got.tokens == ref.tokens, label
    assert [(s.kind, s.query_len, s.past_len, s.unmasked) for s in got.steps] == \
        [(s.kind, s.query_len, s.past_len, s.unmasked) for s in ref.steps], label


@pytest.mark.parametrize("name", list(CKPTS))
def test_cuda_equals_cpu_every_strategy_and_cache(backends, exports, name):
    """fp32, temperature 0: CUDA with and without CUDA graphs gives the CPU host path's tokens."""
    b = backends(name)
    assert b["graph"].cuda_graph and b["graph"].io_binding and not b["eager"].cuda_graph
    prompts = prompts_for(exports[name, "fp32"])
    for strategy in STRATEGIES_FOR[b["cpu"].config.attention]:
        for cache in cache_modes_for(strategy, b["cpu"].config.attention):
            g = gen(strategy, cache)
            ref = generate(b["cpu"], prompts, g)
            for mode in ("graph", "eager"):
                assert_same(ref, generate(b[mode], prompts, g), f"{name}/{strategy}/{cache}/{mode}")
    # the graphs were replayed, not re-captured: one bucket per step shape
    buckets = b["graph"]._buckets
    assert buckets and all(bk.graph_id >= 0 for bk in buckets.values())
    assert len({bk.graph_id for bk in buckets.values()}) == len(buckets)
    assert max(bk.runs for bk in buckets.values()) > 1


@pytest.mark.parametrize("name", list(CKPTS))
def test_cuda_random_and_sampling_equal_cpu(backends, exports, name):
    """The counter-based stream: random remasking and seeded sampling give the CPU's tokens on the GPU, where
    sampling runs in the sampler graph on the device (every node on CUDA: the session refuses CPU fallback)."""
    b = backends(name)
    assert b["graph"].samples_on_device and b["eager"].samples_on_device, b["graph"].sampler_error
    assert not b["cpu"].samples_on_device
    if b["cpu"].config.family == "dream":  # Dream's sample_tokens (top_p below) on the device too
        assert b["graph"].samples_dream_on_device, b["graph"].sampler_error
    prompts = prompts_for(exports[name, "fp32"])
    for cache in CACHE_MODES[b["cpu"].config.attention]:
        for g in (gen("random", cache, seed=5), gen("low_confidence", cache, temperature=1.0, top_k=8, seed=7),
                  gen("threshold", cache, temperature=0.8, top_p=0.9, seed=9),
                  gen("threshold", cache, temperature=0.5, top_k=20, top_p=0.8, seed=4)):
            ref = generate(b["cpu"], prompts, g)
            for mode in ("graph", "eager"):
                assert_same(ref, generate(b[mode], prompts, g), f"{name}/{g.strategy}/{cache}/T={g.temperature}/{mode}")


def test_cuda_fp16(backends, exports):
    """fp16: CUDA graphs replay exactly what the eager CUDA path computes, and the tokens match the CPU's."""
    b = backends("llada-tiny", "fp16")
    prompts = prompts_for(exports["llada-tiny", "fp16"])
    for cache in CACHE_MODES["bidirectional"]:
        g = gen("threshold", cache)
        eager = generate(b["eager"], prompts, g)
        assert_same(eager, generate(b["graph"], prompts, g), f"fp16/{cache}/graph")
        assert_same(generate(b["cpu"], prompts, g), eager, f"fp16/{cache}/cpu")


@pytest.mark.parametrize("dtype,elem", [(np.float32, "float32"), (np.float16, "float16")])
def test_scatter_kv_writes_exactly_the_rows(dtype, elem):
    """The NVRTC kernel: present[t][b, h, l] -> cache[t][b, h, pos[b, l]] for pos >= 0 (and < capacity);
    every other cache row, poisoned with NaN, stays bit-for-bit as it was."""
    from dllm_trt.runtime.backends.ort_backend import _CudaMemory

    mem = _CudaMemory(0)
    rng = np.random.default_rng(0)
    b, h, l, cap, d = 3, 2, 5, 70, 16
    presents = [mem.empty((b, h, l, d), elem) for _ in range(4)]
    caches = [mem.empty((b, h, cap, d), elem) for _ in range(4)]
    src = [rng.standard_normal((b, h, l, d)).astype(dtype) for _ in presents]
    for t, x in zip(presents, src):
        mem.upload(t, x)
    poison = np.full((b, h, cap, d), np.nan, dtype)
    for t in caches:
        mem.upload(t, poison)
    want = [poison.copy() for _ in caches]  # a numpy scatter of the same writes
    steps = [np.array([[3, 4, 5, 6, 7], [-1, 20, -1, 69, 0], [-1, -1, -1, -1, -1]], np.int64),
             np.array([[8, -1, -1, -1, 70], [-1, -1, 1, -1, -1], [10, 11, 12, 13, 14]], np.int64)]  # 70: beyond C
    for step, pos in enumerate(steps):  # twice: the pointer tables are made once and reused
        src = [rng.standard_normal((b, h, l, d)).astype(dtype) for _ in presents]
        for t, x in zip(presents, src):
            mem.upload(t, x)
        staged = mem.block(pos.nbytes)  # the positions travel to the device with the step's other inputs
        staged.view(0, pos.shape, np.int64)[...] = pos
        mem.upload_block(staged, pos.nbytes)
        mem.scatter(presents, caches, pos, staged.ptr)
        bi, li = np.nonzero((pos >= 0) & (pos < cap))
        for w, x in zip(want, src):
            w[bi, :, pos[bi, li]] = x[bi, :, li]
        for i, (t, w) in enumerate(zip(caches, want)):
            got = mem.download(t)
            # the written rows hold their presents; every other row is the untouched NaN poison
            np.testing.assert_array_equal(got, w, err_msg=f"tensor {i}, step {step}")
            assert np.isnan(got).sum() == np.isnan(w).sum() > 0
    assert len(mem._tables) == 1


# ---------------------------------------------------------------------- the fused graph (--ops ort)
@pytest.fixture(scope="module")
def fused_exports(tmp_path_factory):
    """variant -> (fp32 export, bf16 export) of a random tiny model with as many K/V heads as query heads
    (so MultiHeadAttention is in the graph), exported with --ops ort; bf16 validated on the GPU."""
    pytest.importorskip("torch")
    import json

    from conftest import build_tiny_model
    from dllm_trt.export import export_onnx
    from dllm_trt.models import save_model
    from dllm_trt.tasks import build_tokenizer_json

    root = tmp_path_factory.mktemp("gpu-fused")
    out = {}
    for variant in ("llada", "sdar"):
        model = build_tiny_model(variant, seed=2, sharpen=4.0, kv_heads=4)
        ckpt = root / f"{variant}-ckpt"
        save_model(model, ckpt, extra_files={"tokenizer.json": build_tokenizer_json(),
                                             "generation_config.json": json.dumps({"eos_token_id": 0})})
        fp32 = export_onnx(ckpt, root / f"{variant}-fp32", ops="ort", progress=False, log=lambda s: None)
        export_onnx(ckpt, root / f"{variant}-bf16", ops="ort", dtype="bf16", validate=False, progress=False,
                    log=lambda s: None)
        assert fp32["validation"]["status"] == "passed"
        out[variant] = (root / f"{variant}-fp32", root / f"{variant}-bf16")
    return out


@pytest.mark.parametrize("variant", ["llada", "sdar"])
def test_fused_graph_cuda_equals_cpu(fused_exports, variant):
    """--ops ort in fp32: MultiHeadAttention / RotaryEmbedding / SkipSimplifiedLayerNormalization on CUDA,
    with and without CUDA graphs, give the CPU's tokens in every cache mode; in bf16 the CUDA graph
    replays exactly what the eager CUDA path computes."""
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    fp32, bf16 = fused_exports[variant]
    cpu = OrtBackend.from_pretrained(fp32)
    attention = cpu.config.attention
    prompts = [[5, 9, 12, 7, 30], [11, 4, 8, 20, 21, 22, 3, 17, 6]]
    for art, opts, ref_of in ((fp32, NO_TF32, "cpu"), (bf16, None, "eager")):
        graph = OrtBackend.from_pretrained(art, provider="cuda", cuda_graph=True, provider_options=opts)
        eager = OrtBackend.from_pretrained(art, provider="cuda", cuda_graph=False, provider_options=opts)
        for cache in CACHE_MODES[attention]:
            for g in (gen("low_confidence", cache), gen("threshold", cache, threshold=0.6)):
                e = generate(eager, prompts, g)
                assert_same(e, generate(graph, prompts, g), f"{art.name}/{g.strategy}/{cache}/graph")
                if ref_of == "cpu":
                    assert_same(generate(cpu, prompts, g), e, f"{art.name}/{g.strategy}/{cache}/cpu")


# ---------------------------------------------------------------------- the serving engine on CUDA
@pytest.mark.parametrize("name,settings", [("llada-tiny", dict(cache="dual", strategy="threshold")),
                                           ("llada-tiny", dict(cache="prefix")), ("llada-tiny", dict(cache="none")),
                                           ("bd-tiny", dict())])
def test_batch_engine_on_cuda_equals_solo(backends, exports, name, settings):
    """runtime/engine_loop.py on ORT CUDA with CUDA graphs (windows padded to 32, batches to powers of two):
    concurrent requests, more than the slots, each give the tokens of their solo run on the same backend.
    The engine drives the backend from its own thread: the backend makes its CUDA context current there (the
    no-cache mode failed on the H200 before that, 2026-11-29, because its first driver call in that thread had
    no context; the same scenario, run by a diagnostic script, passed eager and with CUDA graphs after the fix).
    Cached forwards over few busy slots bind those rows of the shared cache by address (batch < max_batch)."""
    from dataclasses import replace

    from dllm_trt.runtime.engine_loop import BatchEngine
    from dllm_trt.runtime.settings import family_generation_defaults, folder_generation_defaults

    art = exports[name, "fp32"]
    be = backends(name)["graph"]
    gen = GenerationConfig(**{**family_generation_defaults(be.config), **folder_generation_defaults(art)})
    tok = TextTokenizer(art)
    texts = ["add:457+368=", "rev:kernel=", "sort:tensorrt=", "add:1+2=", "rev:ab=", "add:99+1=", "sort:zyx="]
    lengths = [16, 8, 24, 5, 16, 32, 9]
    engine = BatchEngine(be, replace(gen, **settings), max_batch=3).start()
    try:
        ids = [tok.encode(t) for t in texts]
        got = [r.result(timeout=300)[0] for r in [engine.submit(i, m) for i, m in zip(ids, lengths)]]
    finally:
        engine.close()
    for i, m, tokens in zip(ids, lengths, got):
        want = generate(be, [i], engine.request_gen(m)).tokens[0][:m]
        assert tokens == want, (tok.decode(i), m)
