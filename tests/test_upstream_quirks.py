"""Upstream behaviours a single request meets that look like bugs but are the authors' tokens, reproduced
(docs/upstream_semantics.md rows 5 and 11), each with a warning that says what to change; the fixture cases in
tests/test_upstream_fidelity.py check the tokens against the upstream code, these check the warnings and that the
serving engine gives the same tokens as generate()."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from dllm_trt.runtime import GenerationConfig, generate

from test_upstream_fidelity import FIXTURES

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def backends():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    return {f: TorchBackend.from_pretrained(str(FIXTURES / f)) for f in ("fast_dllm_v2", "dream")}


def v2_gen(n: int = 16, **kw) -> GenerationConfig:
    return GenerationConfig(gen_length=n, strategy="threshold", threshold=0.9, cache="block", sub_block_length=4,
                            block_size=8, temperature=0.0, **kw)


def test_fast_dllm_v2_does_not_read_a_prompt_of_exactly_one_block(backends):
    """A prompt of exactly block_size tokens decodes as no prompt (upstream: no prefill, the first block alone):
    two different such prompts give the same tokens, with the warning; one token more or less is read."""
    be = backends["fast_dllm_v2"]
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 250, 8).tolist() for _ in range(2))
    with pytest.warns(UserWarning, match="exactly block_size = 8 tokens is not read"):
        ta = generate(be, [a], v2_gen()).tokens[0]
    with pytest.warns(UserWarning):
        tb = generate(be, [b], v2_gen()).tokens[0]
    assert ta == tb
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: these prompts are read
        longer = generate(be, [a + [5]], v2_gen()).tokens[0]
        shorter = generate(be, [a[:7]], v2_gen()).tokens[0]
    assert longer != ta or shorter != ta  # the prompt matters when it is read
    # read_one_block_prompt (--read-one-block-prompt; the bundled bd-tiny's settings) reads it, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_a = generate(be, [a], v2_gen(read_one_block_prompt=True)).tokens[0]
        read_b = generate(be, [b], v2_gen(read_one_block_prompt=True)).tokens[0]
    assert read_a != ta or read_b != tb
    # in a batch, only the row of exactly one block is not read: each row gives its tokens alone
    with pytest.warns(UserWarning):
        batch = generate(be, [a, a + [5]], v2_gen()).tokens
    assert batch == [ta, longer]


def test_fast_dllm_v2_one_block_prompt_through_the_serving_engine(backends):
    """The serving engine decodes each request with the same loop: the same tokens as generate()."""
    from dllm_trt.runtime.engine_loop import BatchEngine

    be = backends["fast_dllm_v2"]
    prompt = list(range(10, 18))
    engine = BatchEngine(be, v2_gen(), max_batch=2).start()
    try:
        with pytest.warns(UserWarning):
            got = engine.submit(prompt, 16).result(timeout=120)[0]
    finally:
        engine.close()
    with pytest.warns(UserWarning):
        want = generate(be, [prompt], engine.request_gen(16)).tokens[0][:16]
    assert got == want


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_dream_block_variant_with_one_step_per_block_leaves_masks(backends, cache):
    """Fast-dLLM's Dream block variant: one step per block fills each block's first position only (its full
    forward) and leaves the rest masked, in the output too; two steps per block fill every position."""
    be = backends["dream"]
    mask = be.config.mask_token_id
    prompt = list(range(20, 29))
    one = GenerationConfig(gen_length=16, block_length=4, steps=4, strategy="entropy", cache=cache, temperature=0.0)
    with pytest.warns(UserWarning, match="one step per block"):
        out = generate(be, [prompt], one)
    toks = np.array(out.tokens[0]).reshape(4, 4)
    assert (toks[:, 0] != mask).all() and (toks[:, 1:] == mask).all()
    assert len(out.steps) == 4  # one forward per block
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = generate(be, [prompt], GenerationConfig(gen_length=16, block_length=4, steps=8, strategy="entropy",
                                                      cache=cache, temperature=0.0))
    assert mask not in two.tokens[0]


def test_a_block_of_masks_without_context_ties_to_its_first_position(backends):
    """The first block after a prompt that is not read is masks alone, with nothing else to attend: its rows are
    equal in exact arithmetic (same token everywhere, RoPE only turns q and k, attention over equal values returns
    that value), and upstream's float32 rows tie, so its threshold rule unmasks the first position first. The
    loop makes those rows equal: at threshold 1.0 (one token per step) the first step fills position 0, for every
    sub-block size, and a batch gives each row's tokens alone."""
    be = backends["fast_dllm_v2"]
    mask = be.config.mask_token_id
    prompt = np.random.default_rng(1).integers(0, 250, 16).tolist()
    seen = []
    forward = be.forward

    def spy(input_ids, *args, **kw):
        seen.append(input_ids.copy())
        return forward(input_ids, *args, **kw)

    for sub in (4, 8, 16):
        gen = GenerationConfig(gen_length=17, strategy="threshold", threshold=1.0, cache="block", sub_block_length=sub,
                               block_size=16, temperature=0.0)
        seen.clear()
        be.forward = spy
        try:
            with pytest.warns(UserWarning, match="not read"):
                res = generate(be, [prompt], gen)
        finally:
            be.forward = forward
        first, second = seen[0][0], seen[1][0]
        assert (first == mask).all(), sub  # the block alone: masks only
        assert np.flatnonzero(second != mask).tolist() == [0], sub  # the tie went to the first position
        with pytest.warns(UserWarning):
            batch = generate(be, [prompt, prompt + [7]], gen)
        assert batch.tokens[0] == res.tokens[0], sub
