"""The continuous-batching engine (runtime/engine_loop.py), without HTTP: every request's tokens equal
its solo ``generate()``, requests join a running batch and leave it (finished, cancelled, failed), the
queue bound holds, and the engine can be stepped by hand (the server-agnostic interface)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from dllm_trt.errors import DllmError  # noqa: E402
from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate  # noqa: E402
from dllm_trt.runtime.backends.ort_backend import OrtBackend  # noqa: E402
from dllm_trt.runtime.engine_loop import BatchEngine, QueueFull  # noqa: E402
from dllm_trt.runtime.settings import family_generation_defaults, folder_generation_defaults  # noqa: E402

PROMPTS = ["add:457+368=", "rev:kernel=", "sort:tensorrt=", "add:1+2=", "rev:ab=", "add:99+1=", "sort:zyx=",
           "rev:diffusion=", "add:12+345=", "sort:onnx="]
MAX_TOKENS = [16, 8, 24, 5, 16, 32, 9, 16, 13, 40]


@pytest.fixture(scope="module")
def model(bundled_export):
    """Factory ``model(name, io_binding=False) -> (backend, tokenizer, the folder's GenerationConfig)``."""
    made: dict = {}

    def make(name: str, io_binding: bool = False):
        if (name, io_binding) not in made:
            d = bundled_export(name)
            be = OrtBackend.from_pretrained(d, io_binding=io_binding)
            gen = GenerationConfig(**{**family_generation_defaults(be.config), **folder_generation_defaults(d)})
            made[(name, io_binding)] = (be, TextTokenizer(d), gen)
        return made[(name, io_binding)]

    return make


def solo(engine: BatchEngine, ids: list[int], max_tokens: int, **overrides) -> list[int]:
    """What `dllm-trt run` gives for this request alone (gen_length = max_tokens in whole blocks)."""
    return generate(engine.backend, [ids], engine.request_gen(max_tokens, **overrides)).tokens[0][:max_tokens]


CASES = [("llada-tiny", dict()), ("llada-tiny", dict(cache="dual", strategy="threshold", threshold=0.7)),
         ("llada-tiny", dict(cache="prefix", stop_at_eos=False)), ("dream-tiny", dict()),
         ("dream-tiny", dict(cache="dual", stop_at_eos=False)), ("bd-tiny", dict()),
         ("bd-tiny", dict(cache="block", strategy="low_confidence", stop_at_eos=False)),
         ("bd-tiny", dict(cache="none"))]


@pytest.mark.parametrize("name,settings", CASES, ids=[f"{n}-{'-'.join(map(str, s.values())) or 'defaults'}"
                                                     for n, s in CASES])
def test_concurrent_requests_equal_their_solo_runs(model, name, settings):
    be, tok, gen = model(name)
    batches: list[int] = []
    engine = BatchEngine(be, replace(gen, **settings), max_batch=3, on_step=lambda s: batches.append(s.batch_size))
    engine.start()
    try:
        ids = [tok.encode(p) for p in PROMPTS]
        reqs = [engine.submit(i, m) for i, m in zip(ids, MAX_TOKENS)]  # 10 requests, 3 slots: most join later
        got = [r.result(timeout=120) for r in reqs]
    finally:
        engine.close()
    for i, m, (tokens, reason) in zip(ids, MAX_TOKENS, got):
        want = solo(engine, i, m)
        assert tokens == want, (tok.decode(i), m)
        assert reason == ("stop" if len(want) < m else "length")
    assert max(batches) == 3 and engine.active == 0
    if not settings.get("stop_at_eos", True):
        assert all(len(t) == m for (t, _), m in zip(got, MAX_TOKENS))


@pytest.mark.parametrize("cache", ["dual", "prefix", "none"])
def test_bound_path_and_sampling_equal_solo(model, cache):
    """The ORT bound path (the GPU's, on host memory): a cached forward over the first n busy slots binds those
    rows of the shared cache by address (batch n rounded to a power of two, not max_batch); sampling draws per
    request, so temperature > 0 with a seed also gives each request its solo tokens."""
    be, tok, gen = model("llada-tiny", io_binding=True)
    shapes = []
    real = be.forward
    be.forward = lambda *a, **k: shapes.append(a[0].shape) or real(*a, **k)
    engine = BatchEngine(be, replace(gen, cache=cache), max_batch=8).start()
    try:
        ids = [tok.encode(p) for p in PROMPTS[:3]]
        reqs = [engine.submit(i, 16, temperature=0.9, seed=s) for s, i in enumerate(ids)]
        got = [r.result(timeout=120)[0] for r in reqs]
    finally:
        engine.close()
        del be.forward
    assert got == [solo(engine, i, 16, temperature=0.9, seed=s) for s, i in enumerate(ids)]
    assert shapes and all(length % 32 == 0 for _, length in shapes), shapes  # few device shapes
    assert {b for b, _ in shapes} <= {1, 2, 4} and 4 in {b for b, _ in shapes}  # 3 busy slots: 4 rows, never 8


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny", "bd-tiny"])
def test_device_sampling_in_the_batch_equals_solo(model, name):
    """On the bound path the engine samples the batch's rows on the device (the export's sampler graph), one
    run per distinct setting, with each request's own stream: mixed temperatures / top-k / top-p in one batch
    give every request its solo tokens, and no forward downloads logits."""
    be, tok, gen = model(name, io_binding=True)
    assert be.samples_on_device
    asked = []
    real = be.forward

    def spy(*a, **k):
        asked.append(bool(a[7] if len(a) > 7 else k.get("want_logits", False)))
        return real(*a, **k)

    settings = [dict(temperature=0.9, seed=1), dict(temperature=0.5, top_k=5, seed=2),
                dict(temperature=1.2, top_p=0.8, seed=3), dict(temperature=0.9, seed=4), dict(seed=5)]
    be.forward = spy
    engine = BatchEngine(be, gen, max_batch=4).start()
    try:
        ids = [tok.encode(p) for p in PROMPTS[:5]]
        got = [r.result(timeout=120)[0] for r in [engine.submit(i, 16, **o) for i, o in zip(ids, settings)]]
    finally:
        engine.close()
        del be.forward
    assert asked and not any(asked)
    assert got == [solo(engine, i, 16, **o) for i, o in zip(ids, settings)]


def test_request_joins_a_running_batch_and_finishes_first(model):
    be, tok, gen = model("llada-tiny")
    engine = BatchEngine(be, replace(gen, stop_at_eos=False), max_batch=4).start()
    try:
        long = [engine.submit(tok.encode(p), 96) for p in PROMPTS[:2]]
        for ev in long[0].events(timeout=60):  # the batch is running
            break
        late = engine.submit(tok.encode("add:1+2="), 8)
        assert late.result(timeout=60)[0] == solo(engine, tok.encode("add:1+2="), 8)
        assert not long[0].finished and not long[1].finished  # answered before the first batch finished
        assert [r.result(timeout=60)[0] for r in long] == [solo(engine, tok.encode(p), 96) for p in PROMPTS[:2]]
    finally:
        engine.close()


def test_cancel_frees_the_slot_and_the_others_are_unaffected(model):
    be, tok, gen = model("bd-tiny")
    engine = BatchEngine(be, replace(gen, stop_at_eos=False), max_batch=2).start()
    try:
        keep = engine.submit(tok.encode("rev:kernel="), 64)
        gone = engine.submit(tok.encode("add:457+368="), 64)
        next(gone.events(timeout=60))
        gone.cancel()
        queued = engine.submit(tok.encode("sort:zyx="), 16)  # takes the freed slot
        assert gone.result(timeout=60)[1] == "cancelled"
        assert queued.result(timeout=60)[0] == solo(engine, tok.encode("sort:zyx="), 16)
        assert keep.result(timeout=60)[0] == solo(engine, tok.encode("rev:kernel="), 64)
        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 0 and sorted(engine._free) == [0, 1]
    finally:
        engine.close()


def test_max_model_len_past_the_engine_is_refused(model):
    """--max-model-len beyond the engine's positions was capped silently (clients met the smaller limit one
    request at a time); it is refused at start, and a smaller one is kept."""
    be, tok, gen = model("llada-tiny")
    with pytest.raises(DllmError, match="max_model_len 100000 is more than the 128 positions"):
        BatchEngine(be, gen, max_batch=1, capacity=100000)
    assert BatchEngine(be, gen, max_batch=1, capacity=64).max_positions == 64


def test_queue_bound_and_request_checks(model):
    be, tok, gen = model("llada-tiny")
    hold = threading.Event()
    engine = BatchEngine(be, gen, max_batch=1, max_queue=1).start()
    try:
        blocker = engine.submit(tok.encode("rev:kernel="), 16, on_event=lambda ev: hold.wait(30))
        deadline = time.monotonic() + 10
        while engine.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = engine.submit(tok.encode("add:1+2="), 8)  # the one queue place
        with pytest.raises(QueueFull, match="retry later"):
            engine.submit(tok.encode("add:1+2="), 8)
        hold.set()
        assert waiting.result(timeout=60)[0] == solo(engine, tok.encode("add:1+2="), 8)
        assert blocker.finished and blocker.tokens == solo(engine, tok.encode("rev:kernel="), 16)  # it held the slot
        with pytest.raises(DllmError, match="more than this engine's 128"):
            engine.submit(tok.encode("add:1+2="), 200)
        with pytest.raises(DllmError, match="max_tokens must be >= 1"):
            engine.submit(tok.encode("add:1+2="), 0)
        with pytest.raises(DllmError, match="prompt is empty"):
            engine.submit([], 8)
    finally:
        engine.close()
    assert engine.request_gen(5).gen_length == 8 and engine.request_gen(20).steps == 24  # whole blocks, 8 steps each


class _Flaky:
    """An ORT backend whose forwards fail while ``broken`` is set."""

    def __init__(self, inner):
        self.inner, self.config, self.broken = inner, inner.config, False
        self.max_positions = inner.max_positions

    def allocate_cache(self, batch, capacity):
        return self.inner.allocate_cache(batch, capacity)

    def forward(self, *args, **kwargs):
        if self.broken:
            raise RuntimeError("device lost")
        return self.inner.forward(*args, **kwargs)


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(model):
    be, tok, gen = model("llada-tiny")
    flaky = _Flaky(be)
    engine = BatchEngine(flaky, gen, max_batch=2).start()
    try:
        flaky.broken = True
        failed = engine.submit(tok.encode("add:1+2="), 8)
        events = list(failed.events(timeout=60))
        assert events[-1].finish_reason == "error" and "device lost" in events[-1].error
        flaky.broken = False
        assert engine.submit(tok.encode("add:1+2="), 8).result(timeout=60)[0] == solo(engine, tok.encode("add:1+2="), 8)
    finally:
        engine.close()


def test_an_escaped_exception_reaches_on_crash_and_a_new_engine_reuses_the_cache(model):
    """An exception that escapes the engine's loop (not a forward's, which fails only its requests) ends the
    thread: ``on_crash`` gets the engine and the error, ``crash`` keeps it, ``running`` turns False; an engine
    given the dead one's cache decodes in it (no second allocation) and gives the solo tokens."""
    import threading

    be, tok, gen = model("llada-tiny")
    gen = replace(gen, cache="dual")
    crashed = threading.Event()
    seen = []
    engine = BatchEngine(be, gen, max_batch=2, on_crash=lambda e, err: (seen.append((e, err)), crashed.set()))
    engine.step = lambda timeout=None: (_ for _ in ()).throw(RuntimeError("boom"))  # the loop's own code fails
    engine.start()
    try:
        engine.submit(tok.encode("add:1+2="), 8)
        assert crashed.wait(60)
        assert seen[0][0] is engine and str(seen[0][1]) == "boom" and engine.crash is seen[0][1]
        engine._thread.join(10)
        assert not engine.running
    finally:
        engine.close()
    calls = []
    be_alloc = be.allocate_cache
    be.allocate_cache = lambda *a: calls.append(a) or be_alloc(*a)
    try:
        again = BatchEngine(be, gen, max_batch=2, cache=engine.cache).start()
    finally:
        del be.allocate_cache
    try:
        assert again.cache is engine.cache and not calls
        ids = tok.encode("add:12+34=")
        assert again.submit(ids, 8).result(timeout=60)[0] == solo(again, ids, 8)
    finally:
        again.close()


def test_stepped_by_hand_without_a_thread(model):
    """The server-agnostic interface: submit, then step() until every request finished (as a Triton
    Python model's execute loop would), the tokens streamed as events."""
    be, tok, gen = model("dream-tiny")
    engine = BatchEngine(be, gen, max_batch=4)
    ids = [tok.encode(p) for p in PROMPTS[:5]]
    reqs = [engine.submit(i, 16) for i in ids]
    sizes = []
    while not all(r.finished for r in reqs):
        stats = engine.step(timeout=30)
        if stats is not None:
            sizes.append(stats.batch_size)
    streamed = [[t for ev in r.events(timeout=1) for t in ev.tokens] for r in reqs]
    assert streamed == [r.tokens for r in reqs] == [solo(engine, i, 16) for i in ids]
    assert max(sizes) == 4 and sizes[0] == 4  # four slots filled at once, the fifth joined later
    engine.close()


def test_committed_prefix_streams_before_the_end(model):
    """Tokens are sent as they are committed, not at the end: one token per step gives many events."""
    be, tok, gen = model("llada-tiny")
    engine = BatchEngine(be, replace(gen, stop_at_eos=False), max_batch=2).start()
    try:
        evs = list(engine.submit(tok.encode("rev:kernel="), 32).events(timeout=60))
    finally:
        engine.close()
    assert len(evs) > 4 and sum(len(e.tokens) for e in evs) == 32 and evs[-1].finish_reason == "length"
    assert np.all([e.finish_reason is None for e in evs[:-1]])


def test_engine_imports_no_server_and_no_torch():
    """The engine is the runtime's: importing it (and dllm_trt.serving's package) pulls in no HTTP stack,
    no Ray and no torch."""
    code = ("import sys, dllm_trt.runtime.engine_loop, dllm_trt.serving, dllm_trt.serving.cli; "
            "bad = [m for m in ('torch', 'transformers', 'fastapi', 'uvicorn', 'ray', 'openai') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


class _PointerCache:
    """TensorRT's cache shape: per-layer (key, value) addresses of [B, Hkv, C, D] storage, and a batch."""

    def __init__(self, layers, batch, capacity):
        self.layers, self.batch, self.capacity = layers, batch, capacity

    def flat(self):
        return [p for layer in self.layers for p in layer]


class _PointerBackend:
    """The ORT host backend behind TensorRT's cache interface: integer 'addresses' of numpy arrays; a
    forward runs as many rows as the cache object says, from row 0 of the same storage."""

    def __init__(self, inner):
        self.inner, self.config, self.max_positions = inner, inner.config, inner.max_positions
        self.memory: dict[int, np.ndarray] = {}
        self.batches: list[int] = []

    def allocate_cache(self, batch, capacity):
        real = self.inner.allocate_cache(batch, capacity)
        layers = []
        for k, v in real.layers:
            layers.append([id(k), id(v)])
            self.memory[id(k)], self.memory[id(v)] = k, v
        return _PointerCache(layers, batch, real.capacity)

    def forward(self, ids, pos, bias, cache, past_len, write, index, want_logits=False):
        self.batches.append(ids.shape[0])
        real = None
        if cache is not None:
            from dllm_trt.runtime.backends.ort_backend import OrtCache

            assert ids.shape[0] == cache.batch
            real = OrtCache([[self.memory[k][: cache.batch], self.memory[v][: cache.batch]] for k, v in cache.layers],
                            cache.batch, cache.capacity)
        return self.inner.forward(ids, pos, bias, real, past_len, write, index, want_logits)


def test_pointer_caches_run_only_the_busy_rows(model):
    """TensorRT's path: a forward over the first n slots passes the same addresses with batch n (rounded
    to a power of two), not the whole batch; the tokens still equal each request's solo run."""
    be, tok, gen = model("bd-tiny")
    ptr = _PointerBackend(be)
    engine = BatchEngine(ptr, replace(gen, cache="block"), max_batch=8).start()
    try:
        ids = [tok.encode(p) for p in PROMPTS[:3]]
        got = [r.result(timeout=60)[0] for r in [engine.submit(i, 24) for i in ids]]
    finally:
        engine.close()
    assert got == [solo(engine, i, 24) for i in ids]
    assert set(ptr.batches) <= {1, 2, 4} and 4 in ptr.batches  # three busy slots -> 4 rows, never all 8
