"""What crosses the backend boundary per step in the default path (temperature 0).

A counting proxy wraps a backend (torch, and ORT's bound path: the one CUDA uses, run on host
memory) while ``generate`` decodes the bundled tiny checkpoints with every strategy and cache mode.
Per forward: nothing vocabulary-sized goes in, only ``B x R`` token ids and confidences come out (no
logits: the loop does not ask for them and the backend does not return them), the cache handed in is
the one allocated (never a copy); on the bound path the cache buffers keep their addresses across
steps and requests, and the shape buckets are exactly the distinct step shapes, reused by a second run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.settings import STRATEGIES_FOR, cache_modes_for

REPO = Path(__file__).resolve().parents[1]
CKPTS = {n: REPO / "samples" / "checkpoints" / n for n in ("llada-tiny", "dream-tiny", "bd-tiny")}

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not all((p / "config.json").is_file() for p in CKPTS.values()),
                                reason="the trained tiny checkpoints are not in samples/checkpoints")


class Counting:
    """Delegates to a backend and records what crosses its boundary at every forward."""

    def __init__(self, inner):
        self.inner, self.config = inner, inner.config
        self.caches: list = []
        self.steps: list[dict] = []
        self.samples: list[dict] = []

    @property
    def samples_on_device(self):
        return getattr(self.inner, "samples_on_device", False)

    @property
    def samples_untempered(self):
        return getattr(self.inner, "samples_untempered", False)

    def sample(self, temperature, top_k, top_p, uniform):
        out = self.inner.sample(temperature, top_k, top_p, uniform)
        self.samples.append({"uniform": uniform, "out": out})
        return out

    def allocate_cache(self, batch, capacity):
        cache = self.inner.allocate_cache(batch, capacity)
        self.caches.append(cache)
        return cache

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        out = self.inner.forward(input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                                 want_logits)
        self.steps.append({"inputs": [input_ids, position_ids, attention_bias, write_mask, logits_index],
                           "cache": cache, "past_len": past_len, "want_logits": want_logits, "out": out,
                           "cache_ptrs": cache_pointers(cache)})
        return out


def cache_pointers(cache) -> tuple[int, ...] | None:
    """Addresses of the cache's buffers: torch tensors or the bound path's OrtValues."""
    if cache is None:
        return None
    ptrs = []
    for layer in cache:
        for t in layer:
            if hasattr(t, "data_ptr"):
                ptrs.append(int(t.data_ptr()))
            elif hasattr(t, "value"):
                ptrs.append(int(t.value.data_ptr()))
            else:
                ptrs.append(int(t.ctypes.data))
    return tuple(ptrs)


def assert_lean_steps(proxy: Counting, gen: GenerationConfig, label: str) -> None:
    cfg = proxy.config
    v = cfg.vocab_size
    span = max(gen.block_length, cfg.block_size or 0)  # rows a step reads: at most a block
    assert proxy.steps, label
    for i, s in enumerate(proxy.steps):
        ids, pos, bias, write, rows = s["inputs"]
        b, l = ids.shape
        r = rows.shape[1]
        where = f"{label}, forward {i}"
        assert s["want_logits"] is False, f"{where}: the loop asked for logits at temperature 0"
        assert s["out"].logits is None, f"{where}: the backend returned logits it was not asked for"
        assert 1 <= r <= span, f"{where}: reads {r} rows"
        for name in ("tokens", "confidence", "margin", "neg_entropy"):
            a = getattr(s["out"], name)
            assert isinstance(a, np.ndarray) and a.shape == (b, r), f"{where}: {name} {a.shape}"
            assert a.size <= b * r
        # inputs: ids/positions [B, L], the bias [B, 1, L, P + L], the row index [B, R]; nothing per vocabulary entry
        assert pos.shape == (b, l) and rows.shape == (b, r) and bias.shape == (b, 1, l, s["past_len"] + l), where
        assert write is None or write.shape == (b, l), where
        for a in (ids, pos, bias, write, rows):
            if a is not None:
                assert a.ndim < 3 or a.shape[-2:] != (l, v) or bias is a, f"{where}: a vocabulary-sized input"
                assert a.size < b * l * v or a is bias, f"{where}: an input of {a.size} elements"
        # the cache handed in is the one allocated, whole, never a copy
        if s["cache"] is not None:
            assert any(s["cache"] is c for c in proxy.caches), where
            assert s["past_len"] in (0, s["cache"].capacity), where
    ptrs = {s["cache_ptrs"] for s in proxy.steps if s["cache_ptrs"] is not None}
    assert len(ptrs) <= 1, f"{label}: the cache buffers moved between steps"


def settings(name: str, strategy: str, cache: str) -> GenerationConfig:
    return GenerationConfig(strategy=strategy, cache=cache, gen_length=16, block_length=8, steps=8, threshold=0.9,
                            factor=1.0, sub_block_length=4, seed=1)


PROMPTS = [[7, 12, 9, 30, 5], [11, 4, 8, 20, 21, 22, 3, 17, 6]]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """name -> (TorchBackend, OrtBackend bound path) of the three tiny checkpoints."""
    from dllm_trt.export import export_onnx
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    root = tmp_path_factory.mktemp("boundary")
    out = {}
    for name, ckpt in CKPTS.items():
        export_onnx(ckpt, root / name, validate=False, progress=False, log=lambda s: None)
        out[name] = (TorchBackend.from_pretrained(str(ckpt)),
                     OrtBackend.from_pretrained(root / name, io_binding=True, intra_op_threads=1))
    return out


@pytest.mark.parametrize("name", list(CKPTS))
def test_only_rows_cross_the_boundary_torch(backends, name):
    tb, _ = backends[name]
    for strategy in STRATEGIES_FOR[tb.config.attention]:
        for cache in cache_modes_for(strategy, tb.config.attention):
            proxy = Counting(tb)
            gen = settings(name, strategy, cache)
            res = generate(proxy, PROMPTS, gen)
            assert res.nfe == len(proxy.steps)
            assert_lean_steps(proxy, gen, f"torch/{name}/{strategy}/{cache}")


@pytest.mark.parametrize("name", list(CKPTS))
def test_only_rows_cross_the_boundary_ort_bound(backends, name):
    tb, ob = backends[name]
    assert ob.io_binding
    for strategy in STRATEGIES_FOR[ob.config.attention]:
        for cache in cache_modes_for(strategy, ob.config.attention):
            gen = settings(name, strategy, cache)
            proxy = Counting(ob)
            before = len(ob._buckets)
            res = generate(proxy, PROMPTS, gen)
            label = f"ort-bound/{name}/{strategy}/{cache}"
            assert_lean_steps(proxy, gen, label)
            # one bucket per distinct step shape (B, L, P, R), made at most once
            shapes = {(s["inputs"][0].shape, s["past_len"], s["inputs"][4].shape[1]) for s in proxy.steps}
            assert len(ob._buckets) - before <= len(shapes), label
            # the same request again: no new bucket, no new cache, the same cache buffers
            again = Counting(ob)
            buckets = len(ob._buckets)
            assert generate(again, PROMPTS, gen).tokens == res.tokens, label
            assert len(ob._buckets) == buckets, f"{label}: a second run made new shape buckets"
            if cache != "none":
                assert again.caches[0] is proxy.caches[0], f"{label}: the pooled cache was reallocated"
                assert {s["cache_ptrs"] for s in again.steps} == {s["cache_ptrs"] for s in proxy.steps}
    total = {(b, l, p, r) for (b, l, p, r, _) in ob._buckets}
    assert len(ob._buckets) == len(total)  # never two buckets for one shape
    assert len(ob._caches) <= 2  # one pooled cache per (batch, rounded capacity)


def test_sampling_asks_for_the_rows_logits_only(backends):
    """At temperature > 0 the torch backend (no device sampler) is asked for logits, and gives only the read
    rows' ([B, R, V]); ORT's bound path samples on the device: no logits cross, one [B, R] result per step."""
    tb, ob = backends["llada-tiny"]
    gen = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", temperature=1.0, seed=3)
    proxy = Counting(tb)
    host = generate(proxy, PROMPTS, gen)
    for s in proxy.steps:
        b, r = s["inputs"][4].shape
        assert s["want_logits"] is True and s["out"].logits.shape == (b, r, tb.config.vocab_size)
        assert r == 8  # a block of rows, not the sequence
    assert ob.samples_on_device
    proxy = Counting(ob)
    device = generate(proxy, PROMPTS, gen)
    assert_lean_steps(proxy, gen, "ort-bound/sampling")  # no logits asked for, none returned
    assert len(proxy.samples) == len(proxy.steps)  # one device sampling per forward
    for s, smp in zip(proxy.steps, proxy.samples):
        b, r = s["inputs"][4].shape
        assert smp["uniform"].shape == (b, r) and smp["out"].logits is None
        assert all(getattr(smp["out"], n).shape == (b, r) for n in ("tokens", "confidence", "margin", "neg_entropy"))
    assert device.tokens == host.tokens  # the same draws, sampled on the host from logits or on the device
