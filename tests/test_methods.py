"""The later runtime-only decoding methods (issue 13): dInfer's hierarchical and credit decoding, LocalLeap and
SchED. Their rules against hand-worked examples and against a full-logits reference, their behaviour in the
decode loop on a scripted model (each fails if its rule is wrong), and determinism (batch = alone, repeat)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FAMILIES, MASK_ID, tiny_config
from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.backends import StepOutput
from dllm_trt.runtime.methods import CreditState
from dllm_trt.runtime.settings import BLOCK_STRATEGIES, CACHE_MODES, METHODS
from dllm_trt.runtime.unmask import (LOGIT_MARGIN_CAP, logit_margin, mask_runs, sched_threshold, select_hierarchy,
                                     select_local_leap)


# ----------------------------------------------------------------------------- the rules
def test_mask_runs():
    assert mask_runs(np.array([0, 1, 2, 5, 6, 9])).tolist() == [0, 0, 0, 1, 1, 2]
    assert mask_runs(np.zeros(0, np.int64)).size == 0


def test_hierarchy_takes_each_runs_best_above_the_low_threshold():
    conf = np.array([0.95, 0.5, 0.2, 0.6, 0.35, 0.3, 0.39])
    pos = np.array([0, 1, 2, 5, 6, 9, 10])  # runs {0, 1, 2}, {5, 6}, {9, 10}
    # run 0: 0.95 (also above 0.9); run 1: 0.6 > 0.4; run 2: best 0.39 is not above 0.4
    assert select_hierarchy(conf, pos, 0.9, 0.4).tolist() == [0, 3]
    assert select_hierarchy(conf, pos, 0.9, 0.3).tolist() == [0, 3, 6]
    # one run (no decoded token between the masks): only its best, plus everything above the threshold
    assert select_hierarchy(conf, np.arange(7), 0.55, 0.3).tolist() == [0, 3]


def test_hierarchy_always_the_most_confident_and_strict():
    conf = np.array([0.1, 0.3, 0.2])
    assert select_hierarchy(conf, np.array([0, 2, 4]), 0.9, 0.4).tolist() == [1]  # nothing passes: the argmax
    conf = np.array([0.9, 0.4])
    assert select_hierarchy(conf, np.array([0, 5]), 0.9, 0.4).tolist() == [0]  # > as upstream, not >=
    assert select_hierarchy(np.zeros(0), np.zeros(0, np.int64), 0.9, 0.4).size == 0


def test_local_leap_relaxes_only_near_an_anchor():
    conf = np.array([0.95, 0.8, 0.8, 0.8, 0.7])
    pos = np.array([0, 1, 4, 5, 2])
    # anchor at position 0 (>= 0.9); within radius 4: positions 1 and 4 at >= 0.75; 5 is too far; 0.7 too low
    assert select_local_leap(conf, pos, 0.9, 0.75, 4).tolist() == [0, 1, 2]
    assert select_local_leap(conf, pos, 0.9, 0.75, 5).tolist() == [0, 1, 2, 3]
    assert select_local_leap(conf, pos, 0.9, 0.7, 1).tolist() == [0, 1]
    # no anchor: Fast-dLLM's threshold rule, the most confident at least
    assert select_local_leap(np.array([0.8, 0.85, 0.8]), np.arange(3), 0.9, 0.75, 4).tolist() == [1]
    assert select_local_leap(np.array([0.9, 0.2]), np.arange(2), 0.9, 0.75, 4).tolist() == [0]  # >=


def test_logit_margin_equals_the_logits_top2_gap():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(50, 42))
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top2 = np.sort(p, -1)[:, -2:]
    want = np.diff(np.sort(z, -1)[:, -2:], axis=-1)[:, 0]
    np.testing.assert_allclose(logit_margin(top2[:, 1], top2[:, 1] - top2[:, 0]), np.minimum(want, LOGIT_MARGIN_CAP),
                               rtol=1e-6, atol=1e-9)
    # from float32 outputs: exact while p2 is resolvable next to p1, saturated beyond (never inf)
    p32 = top2.astype(np.float32)
    got = logit_margin(p32[:, 1], p32[:, 1] - p32[:, 0])
    ok = want < 10
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-3, atol=1e-3)
    assert (got <= LOGIT_MARGIN_CAP + 1e-12).all()
    assert logit_margin(np.array([1.0], np.float32), np.array([1.0], np.float32))[0] == pytest.approx(LOGIT_MARGIN_CAP)


@pytest.mark.parametrize("shape", ["linear", "cosine", "exp"])
def test_sched_threshold_is_smooth_and_non_increasing(shape):
    taus = [sched_threshold(p, 7.0, 2.0, shape) for p in np.linspace(0, 1, 101)]
    assert taus[0] == pytest.approx(7.0)
    assert all(a >= b - 1e-12 for a, b in zip(taus, taus[1:]))
    assert all(2.0 - 1e-12 <= t <= 7.0 + 1e-12 for t in taus)
    if shape != "exp":
        assert taus[-1] == pytest.approx(2.0)
    assert sched_threshold(0.5, 7.0, 2.0, "linear") == pytest.approx(4.5)
    assert sched_threshold(0.5, 7.0, 2.0, "cosine") == pytest.approx(4.5)
    assert sched_threshold(0.25, 7.0, 2.0, "exp", rate=4.0) == pytest.approx(2.0 + 5.0 * np.exp(-1.0))


def upstream_credit(logit_rows: list[np.ndarray], masked_steps: int, alpha: float, gamma: float, decay: float):
    """dInfer's credit fusion on full logits (one position, a row of logits per step): decay, add p_top1 ** gamma
    at the unfused top-1, fuse logits + alpha * log(1 + credit); the fused probability of the unfused top-1."""
    credit = np.zeros(logit_rows[0].shape[-1])
    out = []
    for i, z in enumerate(logit_rows[:masked_steps]):
        if i:
            credit *= decay
        p = np.exp(z - z.max())
        p /= p.sum()
        top = int(p.argmax())
        credit[top] += p[top] ** gamma
        f = z + alpha * np.log(1 + credit)
        q = np.exp(f - f.max())
        q /= q.sum()
        out.append((top, q[top]))
    return out


def test_credit_fusion_equals_upstream_while_the_favourite_holds_and_bounds_it_otherwise():
    rng = np.random.default_rng(1)
    alpha, gamma, decay = 0.7, 0.2, 0.8
    for trial in range(40):
        steps = 6
        rows = [rng.normal(0, 2, size=12) for _ in range(steps)]
        if trial % 2 == 0:  # the same favourite every step: the fused probability is exact
            for z in rows:
                z[3] = z.max() + rng.uniform(0.1, 3)
        ref = upstream_credit(rows, steps, alpha, gamma, decay)
        state = CreditState(1, alpha, gamma, decay)
        switched = False
        for (top, want), z in zip(ref, rows):
            p = np.exp(z - z.max())
            p /= p.sum()
            got = state.fuse(0, (0, 8), np.array([5]), np.array([top]), np.array([p[top]]))[0]
            switched |= top != ref[0][0]
            if not switched:
                assert got == pytest.approx(want, rel=1e-12), trial
            else:
                assert got <= want + 1e-12, trial  # never more eager than upstream


def test_credit_state_restarts_with_each_block_and_decays():
    s = CreditState(2, alpha=1.0, gamma=1.0, decay=0.5)
    s.fuse(0, (0, 4), np.array([0]), np.array([7]), np.array([0.5]))
    s.fuse(0, (0, 4), np.array([0]), np.array([7]), np.array([0.5]))
    assert s.credit[0][0][7] == pytest.approx(0.5 * 0.5 + 0.5)
    assert s.credit[1] == {}  # per sequence
    s.fuse(0, (4, 8), np.array([4]), np.array([7]), np.array([0.5]))
    assert 0 not in s.credit[0] and s.credit[0][4][7] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- in the decode loop
def code(pos):
    return 3 + np.asarray(pos) % 30


class ScriptedBackend:
    """A numpy LLaDA-layout model without cache: the token at position p is code(p); ``conf_of(ids, pos)`` gives
    each row's top-1 probability (the rest of the row's mass on one other token, so margin = 2 p - 1)."""

    def __init__(self, conf_of):
        self.config = tiny_config("llada")
        self.conf_of = conf_of

    def allocate_cache(self, batch, capacity):
        raise AssertionError("the scripted model has no cache")

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        assert not want_logits
        conf = np.stack([self.conf_of(i, p) for i, p in zip(input_ids, position_ids)]).astype(np.float32)
        conf = np.take_along_axis(conf, logits_index, axis=1)
        pos = np.take_along_axis(position_ids, logits_index, axis=1)
        return StepOutput(code(pos).astype(np.int64), conf, None, 2 * conf - 1, None)


PROMPT = [[5, 9, 12, 7]]  # 4 tokens; the answer is positions 4 .. 19


def scripted(conf_of, **kw):
    g = GenerationConfig(**dict(dict(gen_length=16, block_length=16, steps=16, stop_at_eos=False), **kw))
    r = generate(ScriptedBackend(conf_of), PROMPT, g)
    assert r.tokens[0] == code(np.arange(4, 20)).tolist()
    return [s.unmasked[0] for s in r.steps]


def left_neighbour_settles(ids, pos):
    """Like a carry: a position is sure (0.95) once the one before it is decoded, else 0.8."""
    prev = np.concatenate([[0], ids[:-1]])
    return np.where(prev != MASK_ID, 0.95, 0.8)


def test_local_leap_commits_the_anchors_neighbourhood():
    assert scripted(left_neighbour_settles, strategy="threshold") == [1] * 16  # one anchor a step
    assert scripted(left_neighbour_settles, strategy="local_leap", relaxed_threshold=0.75, radius=4) == [5, 5, 5, 1]
    assert scripted(left_neighbour_settles, strategy="local_leap", relaxed_threshold=0.85, radius=4) == [1] * 16


def test_hierarchy_commits_the_best_of_every_run_of_masks():
    def conf(ids, pos):  # position 12 is sure; 0.50 .. 0.57 rising to the right on 4..11, 0.61 .. 0.67 on 13..19
        c = 0.5 + 0.01 * ((pos - 4) % 8) + 0.1 * (pos > 12)
        return np.where(pos == 12, 0.95, c)

    # step 1 fills 12 and splits the masks into runs 4..11 and 13..19: each run then gives its best every step
    assert scripted(conf, strategy="hierarchy", low_threshold=0.4) == [1] + [2] * 7 + [1]
    assert scripted(conf, strategy="hierarchy", low_threshold=0.6) == [1] * 16  # runs below the low threshold
    assert scripted(conf, strategy="threshold") == [1] * 16


def test_credit_accumulates_across_steps():
    flat = lambda ids, pos: np.full(pos.shape, 0.8)  # noqa: E731  always 0.8: below the threshold 0.9
    assert scripted(flat, strategy="threshold") == [1] * 16
    # credit after k steps: sum_i 0.8**0.2 * 0.8**i; fused 0.8 (1 + C)^0.7 / (0.8 (1 + C)^0.7 + 0.2)
    # = 0.865, 0.890, 0.903: the third forward commits everything left
    assert scripted(flat, strategy="credit") == [1, 1, 14]
    assert scripted(flat, strategy="credit", credit_decay=0.0) == [1] * 16  # no memory: no accumulation
    assert scripted(flat, strategy="credit", credit_alpha=0.0) == [1] * 16


def test_sched_exits_once_the_margin_meets_the_falling_threshold():
    sure = lambda ids, pos: np.full(pos.shape, 0.99)  # noqa: E731  logit margin log(0.99 / 0.01) = 4.595
    gap = np.log(0.99 / 0.01)
    exit_step = next(s for s in range(16) if gap >= 8.0 - 6.0 * s / 16)  # linear 8 -> 2 over the 16 steps
    assert exit_step == 10
    assert scripted(sure, strategy="sched", sched_high=8.0, sched_low=2.0) == [1] * exit_step + [16 - exit_step]
    assert scripted(sure, strategy="sched", sched_high=4.0, sched_low=2.0) == [16]  # met at once
    assert scripted(sure, strategy="sched", sched_high=9.0, sched_low=5.0) == [1] * 16  # never met
    assert scripted(sure, strategy="low_confidence") == [1] * 16


def test_sched_needs_the_margin_output():
    class NoMargin(ScriptedBackend):
        def forward(self, *a, **k):
            return super().forward(*a, **k)._replace(margin=None)

    with pytest.raises(DllmError, match="margin"):
        generate(NoMargin(lambda ids, pos: np.full(pos.shape, 0.9)), PROMPT, GenerationConfig(
            gen_length=16, block_length=16, steps=16, strategy="sched"))


def test_method_settings_are_checked():
    for bad in (dict(radius=-1), dict(credit_decay=1.5), dict(credit_gamma=0.0), dict(sched_shape="step"),
                dict(sched_low=5.0, sched_high=2.0), dict(low_threshold=float("nan"))):
        with pytest.raises(DllmError):
            GenerationConfig(**bad).resolved("bidirectional")
    GenerationConfig(strategy="sched").resolved("block_causal")  # block diffusion: per sub-block (below)


def test_sched_on_block_diffusion_exits_per_sub_block(tiny_backend):
    """Block diffusion: SchED's progress is the sub-block's step over its steps. A threshold never met gives the
    low-confidence schedule exactly; one always met commits each sub-block on its first forward."""
    be = tiny_backend("block_diffusion", sharpen=3.0)
    prompts = [[5, 9, 12, 7, 30], [11, 4, 8, 20, 21, 22, 3, 17, 6]]
    base = dict(gen_length=16, sub_block_length=4, steps=8, cache="block", stop_at_eos=False)
    schedule = generate(be, prompts, GenerationConfig(strategy="low_confidence", **base))
    never = generate(be, prompts, GenerationConfig(strategy="sched", sched_high=1e9, sched_low=1e9, **base))
    assert never.tokens == schedule.tokens and never.nfe == schedule.nfe
    always = generate(be, prompts, GenerationConfig(strategy="sched", sched_high=0.0, sched_low=0.0, **base))
    assert always.nfe < schedule.nfe
    assert max(max(s.unmasked) for s in always.steps) == 4  # a whole sub-block at once (the schedule: 1 per step)
    assert max(max(s.unmasked) for s in schedule.steps) == 1


# ----------------------------------------------------------------------------- determinism on real models
@pytest.mark.parametrize("variant", FAMILIES)
def test_methods_deterministic_and_batch_equals_alone(variant, tiny_backend):
    be = tiny_backend(variant, sharpen=3.0)
    attention = tiny_config(variant).attention
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, 42, size=n).tolist() for n in (5, 8, 11)]
    for strategy in METHODS:
        if attention == "block_causal" and strategy not in BLOCK_STRATEGIES:
            continue
        for cache in CACHE_MODES[attention]:
            if strategy == "freedave" and cache != "none":
                continue
            g = GenerationConfig(gen_length=16, block_length=8, steps=16, sub_block_length=4, strategy=strategy,
                                 cache=cache, threshold=0.7, sched_high=3.0, sched_low=0.5)
            batch = generate(be, prompts, g)
            assert generate(be, prompts, g).tokens == batch.tokens, (strategy, cache)
            for b, p in enumerate(prompts):
                assert generate(be, [p], g).tokens[0] == batch.tokens[b], (strategy, cache, b)


# ----------------------------------------------------------------------------- FreeDave
@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_freedave_is_lossless_with_fewer_forwards(variant, tiny_backend):
    """The tokens of the low-confidence schedule, exactly, for every draft length; never more forwards, and
    fewer as soon as drafts are longer than one step."""
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 42, size=n).tolist() for n in (5, 8, 11)]
    fewer = False
    for sharpen in (1.0, 3.0):
        be = tiny_backend(variant, sharpen=sharpen)
        for block, steps in ((16, 16), (8, 16), (16, 8), (8, 8)):
            base = dict(gen_length=16, block_length=block, steps=steps)
            ref = generate(be, prompts, GenerationConfig(**base, strategy="low_confidence"))
            for d in (1, 2, 4, 8):
                got = generate(be, prompts, GenerationConfig(**base, strategy="freedave", draft_steps=d))
                label = (sharpen, block, steps, d)
                assert got.tokens == ref.tokens, label
                assert got.decoded_tokens == ref.decoded_tokens, label
                assert got.nfe <= ref.nfe, label
                if d == 1:
                    assert got.nfe == ref.nfe, label  # one draft: the reference itself
                fewer |= got.nfe < ref.nfe
                for b, p in enumerate(prompts):
                    assert generate(be, [p], GenerationConfig(**base, strategy="freedave", draft_steps=d)).tokens[0] \
                        == got.tokens[b], label
    assert fewer, "drafts were never accepted: FreeDave saved no forward"


def test_freedave_accepts_the_verified_drafts_only():
    """Left-to-right certainty (a position is sure once its left neighbour is decoded): the reference fills
    4, 5, 6, ... one per step; a draft of k steps from one forward's predictions commits the k most confident
    positions of that forward (position 4 and the next ones by position, all tied), which is the reference's
    path, so every draft verifies: 16 steps in 1 + 16 / 4 forwards (the last round's forward verifies it)."""
    def conf(ids, pos):
        prev = np.concatenate([[0], ids[:-1]])
        return np.where(prev != MASK_ID, 0.95, 0.8)

    ref = generate(ScriptedBackend(conf), PROMPT, GenerationConfig(gen_length=16, block_length=16, steps=16,
                                                                   stop_at_eos=False))
    got = generate(ScriptedBackend(conf), PROMPT, GenerationConfig(gen_length=16, block_length=16, steps=16,
                                                                   strategy="freedave", draft_steps=4,
                                                                   stop_at_eos=False))
    assert got.tokens == ref.tokens
    assert ref.nfe == 16 and got.nfe == 5  # full forward + one forward of 4 drafts per 4 steps
    # tokens are counted on the forward whose predictions drafted them
    assert [s.unmasked[0] for s in got.steps] == [4, 4, 4, 4, 0]

    def rising(ids, pos):  # the most confident position moves right to left: a draft's second token is wrong
        prev = np.concatenate([[0], ids[:-1]])
        return np.where(prev != MASK_ID, 0.95, 0.5 + 0.01 * pos)

    ref = generate(ScriptedBackend(rising), PROMPT, GenerationConfig(gen_length=16, block_length=16, steps=16,
                                                                     stop_at_eos=False))
    got = generate(ScriptedBackend(rising), PROMPT, GenerationConfig(gen_length=16, block_length=16, steps=16,
                                                                     strategy="freedave", draft_steps=4,
                                                                     stop_at_eos=False))
    assert got.tokens == ref.tokens and got.nfe <= ref.nfe


def test_freedave_settings_are_checked():
    for bad in (dict(cache="prefix"), dict(temperature=0.5), dict(draft_steps=0), dict(steps=32)):
        with pytest.raises(DllmError, match="freedave"):
            GenerationConfig(**dict(dict(gen_length=16, block_length=16, steps=16, strategy="freedave"),
                                    **bad)).resolved("bidirectional")
    with pytest.raises(DllmError):
        GenerationConfig(strategy="freedave").resolved("block_causal")
