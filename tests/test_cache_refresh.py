"""Cache-refresh policies of the prefix/dual caches (runtime/cache_refresh.py): dLLM-Cache's interval schedule
with its partial refresh, and Elastic-Cache's window with its drift-triggered refresh.

A numpy model whose "keys/values" are the tokens themselves checks each policy's schedule: which forwards run,
which rows each one computes and writes, what a row sees of the cache (stale entries included). On the tiny
models: the exact invariants (refresh every step = no cache; no refresh at all with one block = Fast-dLLM's
dual/prefix cache), batch = alone, and ONNX Runtime (host and bound path) = PyTorch token for token on the
bundled checkpoints, and the batching engine = solo runs."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import MASK_ID, REPO, tiny_config
from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.backends import StepOutput
from dllm_trt.runtime.cache_refresh import dllm_cache_due, drift_similarity, merge_outputs, stale_order


# ----------------------------------------------------------------------------- the pieces
def test_dllm_cache_schedule_counts_steps_over_the_whole_generation():
    due = [dllm_cache_due(n, 3, 5) for n in range(16)]
    assert [n for n, (p, r) in enumerate(due) if p and r] == [0, 15]
    assert [n for n, (p, r) in enumerate(due) if r and not p] == [5, 10]
    assert [n for n, (p, r) in enumerate(due) if p and not r] == [3, 6, 9, 12]
    assert all(dllm_cache_due(n, 1, 1) == (True, True) for n in range(5))


def test_stale_order_puts_changed_tokens_first_then_the_oldest():
    pos = np.array([10, 11, 12, 13, 14, 15])
    changed = np.array([False, True, False, False, True, False])
    written = np.array([3, 2, 1, 1, 5, 0])
    assert pos[stale_order(pos, changed, written)].tolist() == [11, 14, 15, 12, 13, 10]


def test_drift_similarity():
    prev = {5: (7, 0.8), 6: (9, 0.5), 7: (4, 0.9)}
    # 5: same token 0.8 -> 0.4: 0.5; 6: token changed: 0; 7: same 0.9 -> 0.9: 1; 8: not read before (ignored)
    got = drift_similarity(prev, np.array([5, 6, 7, 8]), np.array([7, 3, 4, 2]), np.array([0.4, 0.5, 0.9, 0.1]))
    assert got == pytest.approx(0.5)
    assert drift_similarity({}, np.array([5]), np.array([7]), np.array([0.4])) == 1.0  # nothing to compare


def test_merge_outputs_takes_whole_sequences():
    a = StepOutput(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32), None, np.zeros((2, 3)), None)
    b = StepOutput(np.ones((2, 3), np.int64), np.ones((2, 3), np.float32), None, np.ones((2, 3)), None)
    m = merge_outputs(a, b, np.array([False, True]))
    assert m.tokens.tolist() == [[0, 0, 0], [1, 1, 1]] and m.logits is None and m.neg_entropy is None
    assert m.margin.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_settings_are_checked():
    ok = dict(gen_length=16, block_length=8, steps=16, cache="dual")
    for policy in ("dllm_cache", "elastic"):
        GenerationConfig(**ok, cache_refresh=policy).resolved("bidirectional")
        GenerationConfig(**dict(ok, cache="prefix"), cache_refresh=policy).resolved("bidirectional")
        with pytest.raises(DllmError, match="prefix or dual"):
            GenerationConfig(**dict(ok, cache="none"), cache_refresh=policy).resolved("bidirectional")
        with pytest.raises(DllmError, match="block diffusion"):
            GenerationConfig(cache="block", cache_refresh=policy).resolved("block_causal")
        with pytest.raises(DllmError, match="prefix or dual"):  # FreeDave runs without a cache
            GenerationConfig(**dict(ok, cache="none"), strategy="freedave", cache_refresh=policy).resolved(
                "bidirectional")
    for bad in (dict(cache_refresh="always"), dict(dllm_prompt_interval=0), dict(dllm_response_interval=-1),
                dict(dllm_refresh_ratio=1.5), dict(dllm_refresh_ratio=-0.1), dict(elastic_window=0),
                dict(elastic_gamma=float("nan")), dict(elastic_gamma=-1.0)):
        with pytest.raises(DllmError):
            GenerationConfig(**ok, **bad).resolved("bidirectional")


def test_command_line_refuses_knobs_without_their_policy():
    from dllm_trt.options import check_decode_options, check_decode_values

    cfg = tiny_config("llada")
    base = {f: None for f in GenerationConfig.__dataclass_fields__}
    args = argparse.Namespace(**dict(base, elastic_gamma=0.5))
    with pytest.raises(DllmError, match="--elastic-gamma applies to --cache-refresh elastic"):
        check_decode_options(args, GenerationConfig(cache="dual", cache_refresh="dllm_cache"), cfg, 5)
    check_decode_options(args, GenerationConfig(cache="dual", cache_refresh="elastic"), cfg, 5)
    with pytest.raises(DllmError, match="--dllm-refresh-ratio"):
        check_decode_values(argparse.Namespace(**dict(base, dllm_refresh_ratio=2.0)))
    with pytest.raises(DllmError, match="--elastic-window"):
        check_decode_values(argparse.Namespace(**dict(base, elastic_window=0)))


# ----------------------------------------------------------------------------- a model whose keys are its tokens
def code(pos):
    return 3 + np.asarray(pos) % 30


class TokenCache:
    def __init__(self, batch: int, capacity: int):
        self.capacity = capacity
        self.tok = np.full((batch, capacity), -1, np.int64)


class ContextBackend:
    """A numpy LLaDA-layout model with a cache of tokens (a position's "keys/values" are the token written there).
    Row i predicts code(its position) with probability ``conf_of(context, position)``, the context being what
    the row sees: the cached tokens of the past positions its bias admits (stale when they were written before
    the token changed) and the tokens of the query rows it sees. Records every forward."""

    def __init__(self, conf_of):
        self.config = tiny_config("llada")
        self.conf_of = conf_of
        self.calls: list[dict] = []

    def allocate_cache(self, batch, capacity):
        return TokenCache(batch, capacity)

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        assert not want_logits
        b_, l_ = input_ids.shape
        conf = np.zeros((b_, l_))
        seen = []
        for b in range(b_):
            rows = []
            for i in range(l_):
                keys = attention_bias[b, 0, i] == 0
                ctx = {int(p): int(cache.tok[b, p]) for p in np.flatnonzero(keys[:past_len])}
                ctx.update({int(position_ids[b, j]): int(input_ids[b, j]) for j in np.flatnonzero(keys[past_len:])})
                conf[b, i] = self.conf_of(ctx, int(position_ids[b, i]))
                rows.append(ctx)
            seen.append(rows)
        written = [[] for _ in range(b_)]
        if write_mask is not None:
            for b, i in zip(*np.nonzero(write_mask)):
                cache.tok[b, position_ids[b, i]] = input_ids[b, i]
                written[b].append(int(position_ids[b, i]))
        self.calls.append({"written": [sorted(w) for w in written], "past_len": past_len, "seen": seen,
                           "pos": position_ids.copy(), "index": logits_index.copy()})
        c = np.take_along_axis(conf, logits_index, axis=1).astype(np.float32)
        pos = np.take_along_axis(position_ids, logits_index, axis=1)
        return StepOutput(code(pos).astype(np.int64), c, None, 2 * c - 1, None)


PROMPT = [5, 9, 12, 7]  # positions 0..3; the answer is positions 4..19


def left_to_right(ctx, pos):
    return 0.9 - 0.01 * pos  # the lowest masked position is always the most confident


def run(conf_of, prompts=(PROMPT,), **kw):
    g = GenerationConfig(**dict(dict(gen_length=16, block_length=4, steps=16, cache="dual", stop_at_eos=False), **kw))
    be = ContextBackend(conf_of)
    r = generate(be, [list(p) for p in prompts], g)
    for b, p in enumerate(prompts):
        assert r.tokens[b] == code(np.arange(len(p), len(p) + 16)).tolist()
    return r, be.calls


def test_dllm_cache_refreshes_on_schedule_and_recomputes_the_stalest_rows():
    r, calls = run(left_to_right, cache_refresh="dllm_cache", dllm_prompt_interval=3, dllm_response_interval=5,
                   dllm_refresh_ratio=0.25)
    assert [s.kind for s in r.steps] == ["full", "partial", "partial", "prompt", "partial", "response", "prompt",
                                         "partial", "partial", "prompt", "response", "partial", "prompt", "partial",
                                         "partial", "full"]
    assert r.nfe == 16 and [s.unmasked[0] for s in r.steps] == [1] * 16
    written = [c["written"][0] for c in calls]
    assert written[0] == list(range(20))  # the first step: a full forward writes every position
    # then the block (4..7) and int(16 * 0.25) = 4 response positions outside it, oldest first (all written at
    # step 0: by position), written at this step
    assert written[1] == list(range(4, 12))
    assert written[2] == list(range(4, 8)) + list(range(12, 16))  # 8..11 were refreshed at step 1
    assert written[3] == list(range(0, 8)) + list(range(16, 20))  # the prompt is due; 16..19 the oldest
    # block 8..11: position 7 was decoded after its last write (a changed token comes first), then the oldest
    # (12..14, written at step 2)
    assert written[4] == list(range(7, 15))
    assert written[5] == list(range(4, 20))  # the response is due: all of it, over the cached prompt
    assert all(c["past_len"] == 0 for c in (calls[0], calls[15])) and calls[1]["past_len"] > 0
    # what a row sees: at step 1 position 4 (decoded at step 0) is a query row; positions 12..19 are cached masks
    ctx = calls[1]["seen"][0][0]
    assert ctx[4] == code(4) and ctx[12] == MASK_ID and ctx[0] == PROMPT[0] and len(ctx) == 20


def test_dllm_cache_reads_stale_entries_between_refreshes():
    """With no refresh after the first forward a block's keys are last written by its own last step, before that
    step's token was decoded: later blocks see the block's last decoded position as a mask."""
    r, calls = run(left_to_right, cache_refresh="dllm_cache", dllm_prompt_interval=100, dllm_response_interval=100,
                   dllm_refresh_ratio=0.0)
    assert [s.kind for s in r.steps] == ["full"] + ["partial"] * 15
    ctx = calls[8]["seen"][0][0]  # step 8: block 12..15
    # 4..6 were rewritten as block rows after they were decoded; 7 was decoded at step 3, the block's last
    assert [ctx[p] for p in range(4, 8)] == [code(4), code(5), code(6), MASK_ID]
    assert ctx[11] == MASK_ID and ctx[10] == code(10)  # the same in block 8..11
    assert [c["written"][0] for c in calls[1:4]] == [list(range(4, 8))] * 3  # the block only (ratio 0)


def test_elastic_computes_the_window_and_the_changed_positions():
    r, calls = run(left_to_right, block_length=16, cache_refresh="elastic", elastic_window=2, elastic_gamma=0.0)
    assert [s.kind for s in r.steps] == ["full"] + ["elastic"] * 15
    written = [c["written"][0] for c in calls]
    assert written[0] == list(range(20))
    assert written[1] == [4, 5, 6]  # decoded at step 0, and the window: the first 2 masks
    assert written[2] == [5, 6, 7]
    assert written[15] == [18, 19]  # the last mask (window of one) and the position decoded before it
    ctx = calls[3]["seen"][0][2]  # step 3, row of position 7 (rows 6, 7, 8): 4 and 5 are cached, written decoded
    assert ctx[4] == code(4) and ctx[5] == code(5) and ctx[12] == MASK_ID
    # a window of 2 masks: the candidates are only those (threshold 0: everything it may fill, 2 per step)
    r, _ = run(left_to_right, block_length=16, cache_refresh="elastic", elastic_window=2, elastic_gamma=0.0,
               strategy="threshold", threshold=0.0)
    assert [s.unmasked[0] for s in r.steps] == [2] * 8


def flicker(ctx, pos):
    """A mask's probability flips between 0.9 and 0.5 with the parity of the answer tokens it sees decoded."""
    decoded = sum(1 for p, t in ctx.items() if p >= 4 and t != MASK_ID)
    return 0.9 if decoded % 2 == 0 else 0.5


def test_elastic_refreshes_when_the_window_drifts():
    # consecutive steps see one more decoded token: a mask's probability 0.9 <-> 0.5, similarity 0.556
    r, calls = run(flicker, block_length=16, cache_refresh="elastic", elastic_window=4, elastic_gamma=0.9)
    assert [s.kind for s in r.steps] == ["full"] + ["elastic", "full"] * 15
    assert all(c["written"][0] == list(range(20)) for c in calls[2::2])  # the refresh rewrites every position
    r, calls = run(flicker, block_length=16, cache_refresh="elastic", elastic_window=4, elastic_gamma=0.5)
    assert [s.kind for s in r.steps] == ["full"] + ["elastic"] * 15
    # gamma > 1: every step refreshes, the window's forward is skipped
    r, calls = run(flicker, block_length=16, cache_refresh="elastic", elastic_window=4, elastic_gamma=1.5)
    assert [s.kind for s in r.steps] == ["full"] * 16


def test_elastic_refresh_carries_only_the_drifting_sequence():
    def conf(ctx, pos):
        return flicker(ctx, pos) if ctx.get(0) == 5 else left_to_right(ctx, pos)

    other = [11, 4, 8, 20]
    r, calls = run(conf, prompts=(PROMPT, other), block_length=16, cache_refresh="elastic", elastic_window=4,
                   elastic_gamma=0.9)
    kinds = [s.kind for s in r.steps]
    assert kinds == ["full"] + ["elastic", "full"] * 15
    for c, k in zip(calls, kinds):
        if k == "full" and c is not calls[0]:
            assert c["written"][1] == [] and c["written"][0] == list(range(20))  # sequence 1 rides along
    forwards = [sum(s.live[b] for s in r.steps) for b in range(2)]
    assert forwards == [31, 16]
    for b, p in enumerate((PROMPT, other)):
        alone, _ = run(conf, prompts=(p,), block_length=16, cache_refresh="elastic", elastic_window=4,
                       elastic_gamma=0.9)
        assert alone.tokens[0] == r.tokens[b] and alone.nfe == forwards[b]


# ----------------------------------------------------------------------------- the tiny models
PROMPTS = [[5, 9, 12, 7, 30], [11, 4, 8, 20, 21, 22, 3, 17, 6], [14, 3, 25]]
BASE = dict(gen_length=16, steps=16, stop_at_eos=False)


def same(a, b, label):
    assert a.tokens == b.tokens, label
    assert a.nfe == b.nfe and a.decoded_tokens == b.decoded_tokens, label


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_refreshing_every_step_is_the_uncached_decode(variant, tiny_backend):
    """dLLM-Cache with both intervals 1, or with the prompt every step and the whole response as its fraction,
    and Elastic-Cache with gamma > 1 and a window of the whole block, run a full forward every step: exactly the
    tokens and forwards of no cache."""
    be = tiny_backend(variant, sharpen=3.0)
    for strategy in (dict(strategy="low_confidence"), dict(strategy="threshold", threshold=0.7),
                     dict(strategy="low_confidence", steps=8)):
        for block in (16, 8):
            g = dict(BASE, block_length=block, **strategy)
            ref = generate(be, PROMPTS, GenerationConfig(**g, cache="none"))
            for cache in ("dual", "prefix"):
                for policy in (dict(cache_refresh="dllm_cache", dllm_prompt_interval=1, dllm_response_interval=1),
                               dict(cache_refresh="dllm_cache", dllm_prompt_interval=1, dllm_response_interval=50,
                                    dllm_refresh_ratio=1.0),
                               dict(cache_refresh="elastic", elastic_gamma=1.01, elastic_window=block)):
                    got = generate(be, PROMPTS, GenerationConfig(**g, cache=cache, **policy))
                    same(ref, got, (variant, strategy, block, cache, policy))
                    assert {s.kind for s in got.steps} == {"full"}


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_never_refreshing_one_block_is_fast_dllm(variant, tiny_backend):
    """One block (block_length = gen_length): Fast-dLLM's dual/prefix cache refreshes only at the first step, and
    so does dLLM-Cache with intervals past the last step and no partial refresh; the later steps compute the
    same rows over the same cache, so the tokens and forwards are the same."""
    be = tiny_backend(variant, sharpen=3.0)
    for strategy in (dict(strategy="low_confidence"), dict(strategy="threshold", threshold=0.7)):
        g = dict(BASE, block_length=16, **strategy)
        for cache in ("dual", "prefix"):
            ref = generate(be, PROMPTS, GenerationConfig(**g, cache=cache))
            got = generate(be, PROMPTS, GenerationConfig(**g, cache=cache, cache_refresh="dllm_cache",
                                                         dllm_prompt_interval=99, dllm_response_interval=99,
                                                         dllm_refresh_ratio=0.0))
            same(ref, got, (variant, strategy, cache))
            def live_rows(res):  # a sequence that is done rides along (Fast-dLLM's windows keep its rows)
                return [[n if live else 0 for n, live in zip(s.rows, s.live)] for s in res.steps]

            assert live_rows(got) == live_rows(ref), (variant, strategy, cache)


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_policies_deterministic_and_batch_equals_alone(variant, tiny_backend):
    be = tiny_backend(variant, sharpen=3.0)
    settings = [dict(cache_refresh="dllm_cache", dllm_prompt_interval=3, dllm_response_interval=4),
                dict(cache_refresh="dllm_cache", dllm_prompt_interval=2, dllm_response_interval=100,
                     dllm_refresh_ratio=0.5),
                dict(cache_refresh="elastic", elastic_window=3, elastic_gamma=0.9),
                dict(cache_refresh="elastic", elastic_window=8, elastic_gamma=1.0)]
    refreshed = False
    for cache in ("dual", "prefix"):
        for strategy in (dict(strategy="low_confidence"), dict(strategy="threshold", threshold=0.6),
                         dict(strategy="hierarchy", threshold=0.6), dict(strategy="confidence_threshold", threshold=0.6),
                         dict(strategy="entropy")):
            for s in settings:
                g = GenerationConfig(**BASE, block_length=8, cache=cache, **strategy, **s)
                label = (cache, strategy, s)
                batch = generate(be, PROMPTS, g)
                assert generate(be, PROMPTS, g).tokens == batch.tokens, label
                for b, p in enumerate(PROMPTS):
                    alone = generate(be, [p], g)
                    assert alone.tokens[0] == batch.tokens[b], (label, b)
                    assert alone.nfe == sum(st.live[b] for st in batch.steps), (label, b)
                refreshed |= s["cache_refresh"] == "elastic" and sum(k.kind == "full" for k in batch.steps) > 1
    assert refreshed, "the drift test never triggered a refresh"


# ----------------------------------------------------------------------------- ONNX Runtime = PyTorch
ORT_SETTINGS = [dict(cache="dual", cache_refresh="dllm_cache", dllm_prompt_interval=3, dllm_response_interval=4),
                dict(cache="prefix", cache_refresh="dllm_cache", dllm_prompt_interval=2, dllm_response_interval=5,
                     dllm_refresh_ratio=0.5),
                dict(cache="dual", cache_refresh="elastic", elastic_window=4, elastic_gamma=0.9),
                dict(cache="dual", cache_refresh="elastic", elastic_window=4, elastic_gamma="drift",
                     strategy="threshold", threshold=0.7),
                dict(cache="prefix", cache_refresh="elastic", elastic_window=6, elastic_gamma="drift")]
# A gamma that makes the drift test refresh some steps. The trained tiny models are sure of themselves: their
# window similarities stay above 0.9997 (llada/dream-tiny: > 1 refreshes every step); carry-tiny's dip to 0.997 and
# 0.982 on these prompts, and no similarity lies within 1e-4 of 0.9995 (ORT and PyTorch differ by ~1e-6), so both
# backends take the same decisions.
DRIFT_GAMMA = {"llada-tiny": 1.5, "dream-tiny": 1.5, "carry-tiny": 0.9995}


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny", "carry-tiny"])
def test_ort_equals_torch_on_the_bundled_checkpoints(name, bundled_export):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from dllm_trt.runtime import TextTokenizer
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.runtime.backends.torch_backend import TorchBackend
    from dllm_trt.tasks import make_examples

    art = bundled_export(name)
    tb = TorchBackend.from_pretrained(str(REPO / "samples" / "checkpoints" / name))
    host, bound = OrtBackend.from_pretrained(art), OrtBackend.from_pretrained(art, io_binding=True)
    tok = TextTokenizer(art)
    if name == "carry-tiny":
        prompts = [tok.encode(e.prompt) for e in make_examples(3, 12345, "carry_chain")]
        base = dict(gen_length=40, block_length=40, steps=40)
    else:
        prompts = [tok.encode(t) for t in ("add:457+368=", "rev:kernel=", "sort:tensorrt=")]
        base = dict(gen_length=16, block_length=8, steps=16)
    refreshes = 0
    for s in ORT_SETTINGS:
        if s.get("elastic_gamma") == "drift":
            s = dict(s, elastic_gamma=DRIFT_GAMMA[name])
        g = GenerationConfig(**dict(base, **s))
        ref = generate(tb, prompts, g)
        refreshes += sum(st.kind == "full" for st in ref.steps) - 1
        for path, be in (("host", host), ("bound", bound)):
            got = generate(be, prompts, g)
            assert got.tokens == ref.tokens, (name, s, path)
            # (not the rows: which of two positions both at p = 0.9999995 goes first is float noise, and a row
            # set follows the order of decoding; the tokens and the forwards do not)
            assert [(st.kind, st.unmasked) for st in got.steps] == [(st.kind, st.unmasked) for st in ref.steps], \
                (name, s, path)
    assert refreshes > 0


def test_batching_engine_equals_solo(bundled_export):
    pytest.importorskip("onnxruntime")
    from dllm_trt.runtime import TextTokenizer
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.runtime.engine_loop import BatchEngine

    art = bundled_export("llada-tiny")
    be, tok = OrtBackend.from_pretrained(art), TextTokenizer(art)
    texts = ["add:457+368=", "rev:kernel=", "sort:tensorrt=", "add:1+2=", "rev:diffusion="]
    lengths = [16, 8, 24, 5, 16]
    for s in (dict(cache="dual", cache_refresh="dllm_cache", dllm_prompt_interval=3, dllm_response_interval=4),
              dict(cache="prefix", cache_refresh="elastic", elastic_window=4, elastic_gamma=1.0)):
        gen = GenerationConfig(gen_length=16, block_length=8, steps=16, **s)
        engine = BatchEngine(be, gen, max_batch=2).start()
        try:
            ids = [tok.encode(t) for t in texts]
            got = [r.result(timeout=120)[0] for r in [engine.submit(i, m) for i, m in zip(ids, lengths)]]
        finally:
            engine.close()
        for i, m, tokens in zip(ids, lengths, got):
            want = generate(be, [i], engine.request_gen(m)).tokens[0][:m]
            assert tokens == want, (s, tok.decode(i), m)
