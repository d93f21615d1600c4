"""The decode loop's rules, with the torch backend on tiny random models and with a numpy stub backend
that makes windows, past lengths, cache writes and the logit shift directly observable."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import EOS_ID, FAMILIES, MASK_ID, REPO, rows_output, select_rows, tiny_config
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.settings import CACHE_MODES

STRATEGIES = ("low_confidence", "threshold", "factor")
PROMPT_LENGTHS = (5, 8, 11, 16)  # below, on and across block boundaries (block size 8)


def prompts_of(lengths, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 42, size=n).tolist() for n in lengths]


def cache_modes(variant: str) -> tuple[str, ...]:
    return CACHE_MODES[tiny_config(variant).attention]


def gen_cfg(variant: str, **kw) -> GenerationConfig:
    """gen_length 16; block_length 8 for the bidirectional families, sub-blocks of 4 for block diffusion."""
    # the prompt of exactly one block is read: these tests drive the loop's block-boundary paths with it (Fast-dLLM
    # v2's own behaviour, not reading it, is tests/test_upstream_quirks.py's)
    base = dict(gen_length=16, block_length=8, sub_block_length=4, read_one_block_prompt=True)
    base.update(kw)
    return GenerationConfig(**base)


# ============================================================================= stub backend
STUB_VOCAB = 64


def code(pos):
    """The token the stub predicts in the logits row of position ``pos`` (never EOS or mask)."""
    return 3 + np.asarray(pos) % (STUB_VOCAB - 3)


@dataclass
class Call:
    ids: np.ndarray
    pos: np.ndarray
    past_len: int
    past_visible: np.ndarray  # [B, P] cache positions some query may attend
    cache: np.ndarray | None  # the stub cache before this forward
    write: np.ndarray | None
    rows: np.ndarray  # logits_index
    want_logits: bool


class StubCache:
    """The stub's cache: the token id written at each position (-1 = never written)."""

    def __init__(self, batch: int, capacity: int):
        self.data = np.full((batch, capacity), -1, np.int64)
        self.capacity = capacity


class StubBackend:
    """A numpy backend. Row r of the logits has its argmax at ``code(position_ids[r])`` with a
    logit of ``height`` (0 elsewhere); the "cache" stores the token id written at each position
    (-1 = never written). :func:`assert_reads_written` checks no live sequence attends a
    never-written entry (finished sequences ride along in the batch; their rows are discarded)."""

    def __init__(self, variant: str, height: float = 8.0):
        self.config = tiny_config(variant, vocab=STUB_VOCAB)
        self.height = height
        self.calls: list[Call] = []
        self.allocations: list[tuple[int, int]] = []

    def allocate_cache(self, batch, capacity):
        self.allocations.append((batch, capacity))
        return StubCache(batch, capacity)

    def logits(self, input_ids, position_ids):
        """Full logits [B, L, V] of the window (subclasses bend them)."""
        B, L = input_ids.shape
        logits = np.zeros((B, L, STUB_VOCAB), np.float32)
        np.put_along_axis(logits, code(position_ids)[..., None], np.float32(self.height), axis=-1)
        return logits

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        B, L = input_ids.shape
        assert input_ids.dtype == np.int64 and position_ids.dtype == np.int64 and position_ids.shape == (B, L)
        assert attention_bias.shape == (B, 1, L, past_len + L) and attention_bias.dtype == np.float32
        assert logits_index.dtype == np.int64 and logits_index.shape[0] == B
        assert 0 <= logits_index.min() and logits_index.max() < L
        past_visible = (attention_bias[:, 0, :, :past_len] == 0).any(axis=1)
        if past_len:  # the whole cache is the past
            assert cache is not None and cache.capacity == past_len
        self.calls.append(Call(input_ids.copy(), position_ids.copy(), past_len, past_visible,
                               None if cache is None else cache.data.copy(),
                               None if write_mask is None else write_mask.copy(), logits_index.copy(), want_logits))
        logits = self.logits(input_ids, position_ids)
        if write_mask is not None:
            assert write_mask.shape == (B, L) and write_mask.dtype == bool
            bi, li = np.nonzero(write_mask)
            cache.data[bi, position_ids[bi, li]] = input_ids[bi, li]
        return rows_output(logits, logits_index, self.config.mask_token_id, want_logits)


def assert_reads_written(res, stub: StubBackend) -> None:
    assert len(res.steps) == len(stub.calls)
    for i, (step, call) in enumerate(zip(res.steps, stub.calls)):
        for b in np.flatnonzero(step.live):
            seen = call.cache[b, : call.past_len][call.past_visible[b]] if call.past_len else np.zeros(0)
            assert (seen >= 0).all(), f"forward {i} ({step.kind}): sequence {b} attends a cache entry never written"


def expected_tokens(prompt_len: int, n: int, shift: int) -> list[int]:
    return code(np.arange(prompt_len, prompt_len + n) - shift).tolist()


@pytest.mark.parametrize("strategy", ["low_confidence", "threshold"])
@pytest.mark.parametrize("variant", ["llada", "dream", "block_diffusion", "sdar"])
def test_stub_prediction_for_position_i_is_read_from_row_i_minus_shift(variant, strategy):
    """Dream / Fast-dLLM v2 read the prediction for position i from logits row i - 1; LLaDA and
    SDAR from row i. Checked in every cache mode with a batch of mixed prompt lengths."""
    shift = 1 if tiny_config(variant).logits_shift else 0
    assert shift == (variant in ("dream", "block_diffusion"))
    for cache in cache_modes(variant):
        stub = StubBackend(variant)
        res = generate(stub, prompts_of(PROMPT_LENGTHS), gen_cfg(variant, cache=cache, strategy=strategy,
                                                                 stop_at_eos=False))
        for n, toks in zip(PROMPT_LENGTHS, res.tokens):
            assert toks == expected_tokens(n, 16, shift), (cache, n)
        assert_reads_written(res, stub)
        assert (stub.allocations == []) == (cache == "none")


def rec(kind, q, p, n=1):
    return [(kind, q, p)] * n


def steps_of(res):
    return [(s.kind, s.query_len, s.past_len) for s in res.steps]


# Hand-derived from the decode loop's documentation, prompt of 5 tokens, gen_length 8,
# block_length 4, one token per step. Bidirectional: total length 13, blocks [5, 9) and [9, 13).
BIDIRECTIONAL_STEPS = {
    ("llada", "none"): rec("full", 13, 0, 8),
    ("llada", "prefix"): rec("full", 13, 0) + rec("prefix", 8, 5, 3) + rec("full", 13, 0) + rec("prefix", 4, 9, 3),
    # dual: the past extent is the last visible cache position + 1 (the last block has no suffix)
    ("llada", "dual"): rec("full", 13, 0) + rec("dual", 4, 13, 3) + rec("full", 13, 0) + rec("dual", 4, 9, 3),
    # shifted: the windows start one position early
    ("dream", "none"): rec("full", 13, 0, 8),
    ("dream", "prefix"): rec("full", 13, 0) + rec("prefix", 9, 4, 3) + rec("full", 13, 0) + rec("prefix", 5, 8, 3),
    ("dream", "dual"): rec("full", 13, 0) + rec("dual", 5, 13, 3) + rec("full", 13, 0) + rec("dual", 5, 8, 3),
}


@pytest.mark.parametrize("variant,cache", list(BIDIRECTIONAL_STEPS))
def test_stub_step_records_bidirectional(variant, cache):
    stub = StubBackend(variant)
    prompt = prompts_of([5])[0]
    res = generate(stub, [prompt], GenerationConfig(gen_length=8, block_length=4, cache=cache, stop_at_eos=False))
    assert steps_of(res) == BIDIRECTIONAL_STEPS[(variant, cache)]
    assert [s.unmasked for s in res.steps] == [[1]] * 8 and res.nfe == 8 == len(stub.calls)
    assert all(s.live == [True] for s in res.steps)
    assert_reads_written(res, stub)
    final = np.array(prompt + res.tokens[0])
    total = 13
    for step, call in zip(res.steps, stub.calls):
        # the cache is written by (and only by) the full forward that opens each block
        assert (call.write is not None) == (cache != "none" and step.kind == "full")
        if call.write is not None:
            assert call.write.all()
        if step.kind == "full":
            assert call.pos[0].tolist() == list(range(total))
            continue
        start = int(call.pos[0, 0])
        s = start + (1 if stub.config.logits_shift else 0)  # first position of the block
        e = s + 4
        visible = np.flatnonzero(call.past_visible[0]).tolist()
        if cache == "prefix":
            assert call.pos[0].tolist() == list(range(start, total))
            assert visible == list(range(start))
        else:
            assert call.pos[0].tolist() == list(range(start, e))
            assert visible == [p for p in range(total) if not start <= p < e]
            assert (call.cache[0, e:total] == MASK_ID).all()  # suffix keys from the block's first step
        assert (call.cache[0, :start] == final[:start]).all()  # the prefix is final


# Block diffusion, bd_size 8, sub-blocks of 4, gen_length 16, one token per step.
# (kind, query_len, past_len); block k covers [8k, 8k + 8).
BLOCK_STEPS = {
    # prompt of 11 tokens: block 1 holds 3 prompt tokens; blocks 1..3 are decoded (32 - 11 >= 16)
    ("block_diffusion", 11, "none"):
        rec("full", 16, 0, 5) + rec("commit", 16, 0) + rec("full", 24, 0, 7) + rec("commit", 24, 0)
        + rec("full", 32, 0, 7),
    ("block_diffusion", 11, "block"):
        rec("prefill+block", 16, 0) + rec("block", 8, 8, 4) + rec("commit", 8, 8) + rec("block", 8, 16, 7)
        + rec("commit", 8, 16) + rec("block", 8, 24, 7),
    # a sub-block step sees the cache up to the block's end, except its own window: the past extent
    # is the block's end, or the window's start for the block's last sub-block (nothing after it).
    # No lead row: a sub-block step runs only once the sub-block's first position is decoded (Fast-dLLM
    # v2's refresh rule), so the row predicting it is never read.
    ("block_diffusion", 11, "sub_block"):
        rec("prefill+block", 16, 0) + rec("block", 8, 8) + rec("sub_block", 4, 12, 3) + rec("commit", 8, 8)
        + rec("block", 8, 16) + rec("sub_block", 4, 24, 2) + rec("block", 8, 16) + rec("sub_block", 4, 20, 3)
        + rec("commit", 8, 16)
        + rec("block", 8, 24) + rec("sub_block", 4, 32, 2) + rec("block", 8, 24) + rec("sub_block", 4, 28, 3),
    # prompt on a block boundary: prefill on its own to read the token that opens block 1
    ("block_diffusion", 8, "sub_block"):
        rec("prefill", 8, 0)
        + rec("block", 8, 8) + rec("sub_block", 4, 16, 2) + rec("block", 8, 8) + rec("sub_block", 4, 12, 3)
        + rec("commit", 8, 8)
        + rec("block", 8, 16) + rec("sub_block", 4, 24, 2) + rec("block", 8, 16) + rec("sub_block", 4, 20, 3),
    ("block_diffusion", 8, "none"):
        rec("prefill", 8, 0) + rec("full", 16, 0, 7) + rec("commit", 16, 0) + rec("full", 24, 0, 7),
    # prompt shorter than a block: nothing to prefill, the first sub-block is all prompt
    ("block_diffusion", 5, "sub_block"):
        rec("block", 8, 0) + rec("sub_block", 4, 4, 2) + rec("commit", 8, 0)
        + rec("block", 8, 8) + rec("sub_block", 4, 16, 2) + rec("block", 8, 8) + rec("sub_block", 4, 12, 3)
        + rec("commit", 8, 8)
        + rec("block", 8, 16) + rec("sub_block", 4, 24, 2) + rec("block", 8, 16) + rec("sub_block", 4, 20, 3),
    # SDAR reads logits in place: no AR token at block starts, windows never lead, commits decode nothing
    ("sdar", 11, "sub_block"):
        rec("prefill+block", 16, 0) + rec("block", 8, 8) + rec("sub_block", 4, 12, 3) + rec("commit", 8, 8)
        + rec("block", 8, 16) + rec("sub_block", 4, 24, 3) + rec("block", 8, 16) + rec("sub_block", 4, 20, 3)
        + rec("commit", 8, 16)
        + rec("block", 8, 24) + rec("sub_block", 4, 32, 3) + rec("block", 8, 24) + rec("sub_block", 4, 28, 3),
    ("sdar", 8, "block"):
        rec("prefill+block", 16, 0) + rec("block", 8, 8, 7) + rec("commit", 8, 8) + rec("block", 8, 16, 8),
}
WRITES = {"none": set(), "block": {"prefill", "prefill+block", "commit"},
          "sub_block": {"prefill", "prefill+block", "block", "commit"}}


@pytest.mark.parametrize("variant,prompt_len,cache", list(BLOCK_STEPS))
def test_stub_step_records_block_diffusion(variant, prompt_len, cache):
    stub = StubBackend(variant)
    shift = 1 if stub.config.logits_shift else 0
    prompt = prompts_of([prompt_len])[0]
    res = generate(stub, [prompt], gen_cfg(variant, cache=cache, stop_at_eos=False))
    assert steps_of(res) == BLOCK_STEPS[(variant, prompt_len, cache)]
    assert res.nfe == len(stub.calls) == len(res.steps)
    assert res.tokens[0] == expected_tokens(prompt_len, 16, shift)
    # every forward decodes one token (prefill and commit read the block's AR token), except SDAR's commits
    for s in res.steps:
        decodes = not (s.kind == "commit" and not shift)
        assert s.unmasked == [1 if decodes else 0], s
    end = (prompt_len + 16 + 7) // 8 * 8  # the loop decodes whole blocks
    assert res.decoded_tokens == end - prompt_len
    assert (stub.allocations == []) == (cache == "none")
    assert_reads_written(res, stub)
    final = np.concatenate([prompt, expected_tokens(prompt_len, end - prompt_len, shift)])
    for step, call in zip(res.steps, stub.calls):
        assert (call.write is not None) == (step.kind in WRITES[cache]), step
        start = int(call.pos[0, 0])
        visible = np.flatnonzero(call.past_visible[0]).tolist()
        if step.kind in ("block", "commit") and cache != "none":
            # finished blocks come from the cache, and they hold the final tokens (exact cache)
            assert call.pos[0].tolist() == list(range(start, start + 8)) and start % 8 == 0
            assert visible == list(range(start))
            assert (call.cache[0, :start] == final[:start]).all()
        elif step.kind == "sub_block":
            assert call.past_len == stub.allocations[0][1]  # the backend gets the whole cache
            z = start + step.query_len
            e = -(-z // 8) * 8  # end of the block
            s = e - 8
            assert step.past_len == (e if z < e else start)  # the visible extent
            assert visible == [p for p in range(e) if not start <= p < z]
            assert (call.cache[0, :start] == final[:start]).all()  # earlier sub-blocks are done
            assert (call.cache[0, z:e] == MASK_ID).all()  # later sub-blocks still masked
            assert z % 4 == 0 and s <= start
        elif step.kind in ("full", "commit", "prefill", "prefill+block"):
            assert start == 0 and step.past_len == 0 and not visible


def test_stub_threshold_and_ties():
    """Confident stub (softmax 0.98 > 0.9): a whole block per forward. Unconfident stub
    (every candidate 0.10): one token per forward, ties broken toward the lowest position."""
    prompts = prompts_of([5, 9])
    res = generate(StubBackend("llada"), prompts, GenerationConfig(gen_length=16, block_length=8, strategy="threshold",
                                                                   stop_at_eos=False))
    assert res.nfe == 2 and [s.unmasked for s in res.steps] == [[8, 8], [8, 8]]
    assert res.tokens_per_forward == 8.0
    stub = StubBackend("dream", height=2.0)
    res = generate(stub, prompts, GenerationConfig(gen_length=16, block_length=8, strategy="threshold",
                                                   stop_at_eos=False))
    assert res.nfe == 16 and all(s.unmasked == [1, 1] for s in res.steps)
    for i, call in enumerate(stub.calls[1:], start=1):  # left to right
        for b, n in enumerate((5, 9)):
            decoded = np.flatnonzero(call.ids[b, n: n + 16] != MASK_ID).tolist()
            assert decoded == list(range(i)), (i, b)
    # block diffusion: sub-block by sub-block; the commit reads the token opening the next block
    res = generate(StubBackend("block_diffusion"), [prompts[0]], gen_cfg("block_diffusion", strategy="threshold",
                                                                        stop_at_eos=False))
    assert [(s.kind, s.unmasked[0]) for s in res.steps] == [
        ("block", 3), ("commit", 1), ("block", 3), ("block", 4), ("commit", 1), ("block", 3), ("block", 4)]


def test_stub_eos_in_batch_rides_along():
    """A sequence that produced EOS stops being live after its block; the others continue."""

    class EosStub(StubBackend):
        def logits(self, input_ids, position_ids):
            logits = super().logits(input_ids, position_ids)
            logits[0, position_ids[0] == 7, EOS_ID] = 100.0  # sequence 0 says EOS at position 7
            return logits

    stub = EosStub("llada")
    res = generate(stub, prompts_of([5, 9]), GenerationConfig(gen_length=16, block_length=8))
    assert res.tokens[0] == expected_tokens(5, 2, 0)
    assert res.tokens[1] == expected_tokens(9, 16, 0)
    assert res.nfe == 16
    assert [s.live for s in res.steps] == [[True, True]] * 8 + [[False, True]] * 8
    assert all(s.unmasked == [0, 1] for s in res.steps[8:])
    # each sequence counts only its own forwards: 8 tokens in 8 forwards, 16 in 16
    assert res.tokens_per_forward == 1.0


@pytest.mark.parametrize("strategy", ["low_confidence", "threshold", "factor"])
@pytest.mark.parametrize("variant", ["llada", "dream", "block_diffusion", "sdar"])
def test_mask_token_is_never_proposed(variant, strategy):
    """A model whose argmax is the mask token (an untrained or broken one) must not stall the loop:
    a position "filled" with the mask id would stay masked forever. The runner-up is used."""

    class MaskLover(StubBackend):
        def logits(self, input_ids, position_ids):
            assert len(self.calls) < 200, "the decode loop does not terminate"
            logits = super().logits(input_ids, position_ids)
            logits[..., MASK_ID] = 100.0
            return logits

    shift = 1 if tiny_config(variant).logits_shift else 0
    res = generate(MaskLover(variant), prompts_of([5, 8, 11]), gen_cfg(variant, strategy=strategy, stop_at_eos=False))
    for n, toks in zip((5, 8, 11), res.tokens):
        assert toks == expected_tokens(n, 16, shift)


# ============================================================================= torch backend
SHARP = 4.0  # LM head scale of the random models: confident enough for parallel decoding


@pytest.mark.parametrize("variant", FAMILIES)
def test_threshold_one_is_one_token_per_step(variant, tiny_backend):
    """threshold 1.0 decodes exactly the tokens of low_confidence with steps = gen_length (one
    token per step), and every forward decodes exactly one token: nfe == decoded tokens."""
    be = tiny_backend(variant, sharpen=SHARP)
    prompts = prompts_of(PROMPT_LENGTHS, seed=1)
    lc = generate(be, prompts, gen_cfg(variant, strategy="low_confidence", steps=16, stop_at_eos=False))
    t1 = generate(be, prompts, gen_cfg(variant, strategy="threshold", threshold=1.0, stop_at_eos=False))
    assert lc.tokens == t1.tokens
    assert steps_of(lc) == steps_of(t1)
    assert all(MASK_ID not in t for t in t1.tokens) and all(len(t) == 16 for t in t1.tokens)
    for p in prompts:
        r = generate(be, [p], gen_cfg(variant, strategy="threshold", threshold=1.0, stop_at_eos=False))
        assert r.nfe == r.decoded_tokens and all(s.unmasked == [1] for s in r.steps)
        if variant != "block_diffusion":
            assert r.nfe == 16
        assert r.tokens[0] == t1.tokens[prompts.index(p)]


@pytest.mark.parametrize("variant", FAMILIES)
def test_threshold_above_one_still_progresses(variant, tiny_backend):
    """No confidence exceeds 1.5, yet every forward decodes its most confident token."""
    be = tiny_backend(variant, sharpen=SHARP)
    prompt = prompts_of([11], seed=2)
    r = generate(be, prompt, gen_cfg(variant, strategy="threshold", threshold=1.5, stop_at_eos=False))
    ref = generate(be, prompt, gen_cfg(variant, strategy="threshold", threshold=1.0, stop_at_eos=False))
    assert r.tokens == ref.tokens and r.nfe == ref.nfe
    assert r.nfe == r.decoded_tokens and all(s.unmasked == [1] for s in r.steps)
    r = generate(be, prompt, gen_cfg(variant, strategy="factor", factor=0.0, stop_at_eos=False))
    # factor 0: one token per step, except that the last two masks of a span go together (upstream's
    # get_transfer_index_dynamic takes all n when only the least confident fails)
    assert all(s.unmasked in ([1], [2]) for s in r.steps) and r.decoded_tokens > r.nfe
    assert [s.unmasked for s in r.steps].count([1]) >= r.nfe // 2


@pytest.mark.parametrize("strategy", STRATEGIES + ("random",))
@pytest.mark.parametrize("cache_index", [0, 1, 2])
@pytest.mark.parametrize("variant", FAMILIES)
def test_batch_of_mixed_prompts_equals_each_alone(variant, cache_index, strategy, tiny_backend):
    be = tiny_backend(variant, sharpen=SHARP)
    cache = cache_modes(variant)[cache_index]
    prompts = prompts_of(PROMPT_LENGTHS, seed=3)
    gen = gen_cfg(variant, cache=cache, strategy=strategy)
    batch = generate(be, prompts, gen)
    alone = [generate(be, [p], gen) for p in prompts]
    for b, r in enumerate(alone):
        assert batch.tokens[b] == r.tokens[0], (b, len(prompts[b]))
        # per-sequence accounting matches too: the same tokens decoded in as many live forwards
        assert sum(s.unmasked[b] for s in batch.steps) == r.decoded_tokens
        assert sum(s.live[b] for s in batch.steps) == r.nfe, b
    if strategy in ("threshold", "factor"):  # the model is confident enough to exercise parallel decoding
        assert max(max(s.unmasked) for s in batch.steps) > 1


class EosAt:
    """Wraps a backend: the logits row that predicts position ``at[b]`` of sequence b gets a large
    EOS logit, every other row a very negative one (an LM head biased toward EOS at one place)."""

    def __init__(self, inner, at: dict[int, int]):
        self.inner, self.config, self.at = inner, inner.config, at
        self.shift = 1 if inner.config.logits_shift else 0

    def allocate_cache(self, batch, capacity):
        return self.inner.allocate_cache(batch, capacity)

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        out = self.inner.forward(input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                                 True)
        logits = out.logits.copy()
        row_pos = np.take_along_axis(position_ids, logits_index, axis=1)  # positions of the read rows
        hit = np.zeros(row_pos.shape, bool)
        for b, p in self.at.items():
            hit[b] = row_pos[b] == p - self.shift
        logits[..., EOS_ID] = np.where(hit, 1e4, -1e4)
        return select_rows(logits, self.config.mask_token_id, want_logits)


@pytest.mark.parametrize("variant", FAMILIES)
def test_stop_at_eos(variant, tiny_backend):
    be = tiny_backend(variant, sharpen=SHARP)
    pa, pb = prompts_of([6, 13], seed=4)
    at = len(pa) + 3  # the 4th generated token is EOS
    gen = dict(gen_length=32, block_length=8)
    nostop = generate(EosAt(be, {0: at}), [pa], gen_cfg(variant, stop_at_eos=False, **gen))
    assert nostop.tokens[0].index(EOS_ID) == 3 and nostop.tokens[0].count(EOS_ID) == 1
    stop = generate(EosAt(be, {0: at}), [pa], gen_cfg(variant, **gen))
    assert stop.tokens[0] == nostop.tokens[0][:3]  # cut before EOS
    assert stop.nfe < nostop.nfe
    if variant != "block_diffusion":
        assert (stop.nfe, nostop.nfe) == (8, 32)  # only the first block of 8 steps is decoded
    # in a batch, the finished sequence rides along while the other one continues
    both = generate(EosAt(be, {0: at}), [pa, pb], gen_cfg(variant, **gen))
    other = generate(EosAt(be, {}), [pb], gen_cfg(variant, **gen))
    assert both.tokens == [stop.tokens[0], other.tokens[0]]
    assert len(other.tokens[0]) == 32
    live0 = [s.live[0] for s in both.steps]
    last = max(i for i, s in enumerate(both.steps) if s.unmasked[0])
    assert sum(live0) == stop.nfe and not any(live0[last + 1:])  # finished: never live again
    assert last + 1 < len(both.steps)
    assert all(s.unmasked[0] == 0 for s in both.steps if not s.live[0])
    assert sum(s.live[1] for s in both.steps) == other.nfe == both.nfe


@pytest.mark.parametrize("variant", FAMILIES)
def test_seeded_sampling_is_reproducible(variant, tiny_backend):
    be = tiny_backend(variant)
    prompts = prompts_of([7, 10], seed=5)

    def run(seed):
        return generate(be, prompts, gen_cfg(variant, temperature=1.0, seed=seed, stop_at_eos=False))

    a, b, c = run(11), run(11), run(12)
    assert a.tokens == b.tokens and steps_of(a) == steps_of(b)
    assert a.tokens != c.tokens
    greedy = generate(be, prompts, gen_cfg(variant, stop_at_eos=False))
    assert a.tokens != greedy.tokens  # it really samples


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_block_diffusion_block_cache_equals_no_cache(strategy, tiny_backend):
    """The block cache is exact under block-causal attention: identical tokens to no cache."""
    be = tiny_backend("block_diffusion", sharpen=SHARP)
    prompts = prompts_of(PROMPT_LENGTHS, seed=6)
    none = generate(be, prompts, gen_cfg("block_diffusion", cache="none", strategy=strategy, stop_at_eos=False))
    block = generate(be, prompts, gen_cfg("block_diffusion", cache="block", strategy=strategy, stop_at_eos=False))
    assert none.tokens == block.tokens
    assert {s.kind for s in none.steps} <= {"full", "commit", "prefill"}
    assert {"block", "commit"} <= {s.kind for s in block.steps}
    assert all(s.query_len == 8 for s in block.steps if s.kind in ("block", "commit"))  # one block per forward
    sub = generate(be, prompts, gen_cfg("block_diffusion", cache="sub_block", strategy=strategy, stop_at_eos=False))
    kinds = [s.kind for s in sub.steps]
    assert "sub_block" in kinds
    assert all(s.query_len <= 5 for s in sub.steps if s.kind == "sub_block")
    assert all(len(t) == 16 and MASK_ID not in t for t in sub.tokens)
    assert sub.decoded_tokens == none.decoded_tokens


def test_runtime_imports_without_torch():
    """The lean runtime needs only numpy + tokenizers: it imports (and decodes, with a numpy
    backend) in a process where importing torch fails, and never imports transformers."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` raises ImportError
        import numpy as np
        import dllm_trt.runtime
        from dllm_trt.runtime import GenerationConfig, generate
        from dllm_trt.config import ModelConfig
        from dllm_trt.runtime.backends import StepOutput

        class Numpy:
            config = ModelConfig.from_dict({"model_type": "llada", "d_model": 8, "n_heads": 2, "n_layers": 1,
                                            "mlp_hidden_size": 8, "vocab_size": 16, "mask_token_id": 1,
                                            "eos_token_id": 0})
            def allocate_cache(self, batch, capacity):
                return None
            def forward(self, ids, pos, bias, cache, past_len, write, rows, want_logits=False):
                assert not want_logits  # temperature 0: tokens and confidences only
                tokens = np.take_along_axis(pos % 13 + 2, rows, axis=1)
                return StepOutput(tokens, np.full(tokens.shape, 0.99, np.float32), None)

        r = generate(Numpy(), [[3, 4, 5]], GenerationConfig(gen_length=8, block_length=4, strategy="threshold"))
        assert r.tokens == [[5, 6, 7, 8, 9, 10, 11, 12]], r.tokens
        assert sys.modules["torch"] is None
        assert "transformers" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("variant", ["llada", "block_diffusion"])
def test_attention_bias_built_once_per_window(variant, monkeypatch):
    """Consecutive steps over the same window reuse one bias array (built once, the same object, so a
    device backend uploads it once): the number of builds equals the number of distinct windows, and
    the tokens are those of a bias rebuilt at every step."""
    import dllm_trt.runtime.decode as decode_mod
    from dllm_trt.runtime.layout import attention_bias

    builds = []

    def counting(*args, **kw):
        builds.append(1)
        return attention_bias(*args, **kw)

    prompts = prompts_of([5, 9, 7])
    for cache in cache_modes(variant):
        gen = gen_cfg(variant, cache=cache, strategy="low_confidence")
        stub = StubBackend(variant)
        want = generate(stub, prompts, gen)
        builds.clear()
        monkeypatch.setattr(decode_mod, "attention_bias", counting)
        stub = StubBackend(variant)
        got = generate(stub, prompts, gen)
        monkeypatch.setattr(decode_mod, "attention_bias", attention_bias)
        assert got.tokens == want.tokens and got.nfe == want.nfe
        windows = []  # the distinct consecutive windows the stub saw (positions, past visibility)
        for c in stub.calls:
            key = (c.pos.tobytes(), c.ids.shape, c.past_len, c.past_visible.tobytes())
            if not windows or windows[-1] != key:
                windows.append(key)
        assert len(builds) == len(windows) < got.nfe, (cache, len(builds), len(windows), got.nfe)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_nan_model_output_stops_with_an_error(temperature):
    """Logits with NaN (broken weights or graph) stop decoding with an error naming the forward,
    instead of an empty or garbage answer; at temperature 0 (device-side selection) and when sampling."""
    from dllm_trt.errors import DllmError

    class NanAtThirdForward(StubBackend):
        def logits(self, input_ids, position_ids):
            out = super().logits(input_ids, position_ids)
            if len(self.calls) == 3:
                out[:, :, 5] = np.nan
            return out

    gen = gen_cfg("llada", strategy="low_confidence", temperature=temperature, seed=1)
    with pytest.raises(DllmError, match=r"NaN/Inf logits at forward 3"):
        generate(NanAtThirdForward("llada"), prompts_of([6]), gen)
    assert generate(StubBackend("llada"), prompts_of([6]), gen).tokens  # the same decode without NaN succeeds
