"""Unit tests of the numpy building blocks of the decode loop: unmask rules, proposals, attention layout."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from dllm_trt.runtime.layout import MASKED, attention_bias
from dllm_trt.runtime.sampling import REMASK_STREAM, SAMPLE_STREAM, counter_uniform, propose
from dllm_trt.runtime.unmask import select_factor, select_first, select_threshold, select_top_k, transfer_schedule


# ----------------------------------------------------------------------------- transfer_schedule
@pytest.mark.parametrize("masked,steps", [(m, s) for m in (0, 1, 5, 8, 13, 32) for s in (1, 2, 3, 4, 7, 8, 16)])
def test_transfer_schedule_is_llada_rule(masked, steps):
    """LLaDA's get_num_transfer_tokens: every step gets masked // steps, the first
    masked % steps steps one more; the counts add up to the masked count."""
    sched = transfer_schedule(masked, steps)
    assert len(sched) == steps
    assert sum(sched) == masked
    assert all(isinstance(n, int) for n in sched)
    base, rem = masked // steps, masked % steps
    assert sched[:rem] == [base + 1] * rem  # remainder first
    assert sched[rem:] == [base] * (steps - rem)
    assert max(sched) - min(sched) <= 1
    assert sched == sorted(sched, reverse=True)


def test_transfer_schedule_examples():
    assert transfer_schedule(8, 3) == [3, 3, 2]
    assert transfer_schedule(5, 8) == [1, 1, 1, 1, 1, 0, 0, 0]
    assert transfer_schedule(32, 32) == [1] * 32
    assert transfer_schedule(32, 4) == [8, 8, 8, 8]


# ----------------------------------------------------------------------------- select_threshold
def test_select_threshold_picks_all_above():
    conf = np.array([0.2, 0.95, 0.91, 0.5, 0.99])
    assert select_threshold(conf, 0.9).tolist() == [1, 2, 4]
    assert select_threshold(conf, 0.4).tolist() == [1, 2, 3, 4]
    assert select_threshold(conf, 0.0).tolist() == [0, 1, 2, 3, 4]


def test_select_threshold_at_least_the_argmax():
    conf = np.array([0.3, 0.6, 0.1, 0.2])
    assert select_threshold(conf, 0.9).tolist() == [1]
    assert select_threshold(conf, 1.0).tolist() == [1]
    assert select_threshold(conf, 5.0).tolist() == [1]  # > 1 still progresses


def test_select_threshold_ties_and_strictness():
    conf = np.array([0.3, 0.5, 0.5, 0.1])
    assert select_threshold(conf, 0.9).tolist() == [1]  # tie for the argmax: lowest index
    conf = np.array([0.9, 0.95, 0.9])
    assert select_threshold(conf, 0.9).tolist() == [1]  # "above": equal to the threshold is not enough
    conf = np.array([0.9, 0.9, 0.9])
    assert select_threshold(conf, 0.9).tolist() == [0]  # only the forced argmax, lowest index


def test_select_threshold_inclusive_and_at_least():
    conf = np.array([0.9, 0.2, 0.95, 0.3])
    assert select_threshold(conf, 0.9).tolist() == [2]  # v2 / SDAR: strictly above
    assert select_threshold(conf, 0.9, inclusive=True).tolist() == [0, 2]  # Fast-dLLM LLaDA / Dream: >=
    # SDAR low_confidence_dynamic: all above when at least the step's count are, else the top count
    assert select_threshold(conf, 0.5, at_least=2).tolist() == [0, 2]
    assert select_threshold(conf, 0.5, at_least=3).tolist() == [0, 2, 3]
    assert select_threshold(conf, 0.1, at_least=3).tolist() == [0, 1, 2, 3]


def test_select_first_is_left_to_right():
    conf = np.array([0.1, 0.9, 0.5])
    assert select_first(conf, 2).tolist() == [0, 1]
    assert select_first(conf, 5).tolist() == [0, 1, 2]
    assert select_first(np.zeros(0), 1).size == 0


def test_select_threshold_empty():
    assert select_threshold(np.zeros(0), 0.9).size == 0


def test_select_threshold_random_against_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        conf = rng.random(int(rng.integers(1, 20)))
        tau = float(rng.random())
        want = set(np.flatnonzero(conf > tau).tolist()) | {int(np.argmax(conf))}
        got = select_threshold(conf, tau)
        assert got.tolist() == sorted(want)


# ----------------------------------------------------------------------------- select_factor
def _factor_reference(conf: np.ndarray, factor: float) -> list[int]:
    """The documented rule, by brute force: the largest n such that the i-th most confident
    token has confidence >= 1 - factor / (i + 1) for every i <= n; at least one token; and
    upstream's quirk (Fast-dLLM get_transfer_index_dynamic): when n is one short of all, all."""
    order = sorted(range(conf.size), key=lambda i: (-conf[i], i))
    best = 1
    for n in range(1, conf.size + 1):
        if all(conf[order[i - 1]] >= 1.0 - factor / (i + 1) for i in range(1, n + 1)):
            best = n
    if best == conf.size - 1:
        best = conf.size
    return sorted(order[:best])


def test_select_factor_examples():
    conf = np.array([0.99, 0.5, 0.95, 0.7])
    # sorted: 0.99 (needs >= 1 - 1/2), 0.95 (>= 1 - 1/3), 0.7 (>= 1 - 1/4 fails)
    assert select_factor(conf, 1.0).tolist() == [0, 2]
    # 0.7 >= 1 - 1.2/4 = 0.7; only the last (0.5 < 1 - 1.2/5) fails: upstream then takes all
    assert select_factor(conf, 1.2).tolist() == [0, 1, 2, 3]
    assert select_factor(conf[[0, 2, 3]] * 0 + [0.99, 0.95, 0.5], 1.2).tolist() == [0, 1, 2]  # 3rd fails -> all
    assert select_factor(np.array([0.99, 0.95, 0.5, 0.4]), 1.2).tolist() == [0, 1]  # two fail: the rule
    assert select_factor(conf, 2.5).tolist() == [0, 1, 2, 3]  # 0.5 >= 1 - 2.5/5
    assert select_factor(np.array([0.1, 0.2, 0.05]), 0.1).tolist() == [1]  # at least one
    assert select_factor(np.array([0.4, 0.4, 0.4]), 0.01).tolist() == [0]  # tie -> lowest index
    assert select_factor(np.zeros(0), 1.0).size == 0


def test_select_factor_random_against_reference():
    rng = np.random.default_rng(1)
    for _ in range(300):
        size = int(rng.integers(1, 12))
        conf = np.round(1 - rng.random(size) ** 3, 2)  # many near 1, some ties
        factor = float(rng.choice([0.1, 0.5, 1.0, 2.0, 4.0]))
        assert select_factor(conf, factor).tolist() == _factor_reference(conf, factor), (conf, factor)


# ----------------------------------------------------------------------------- select_top_k
def test_select_top_k():
    conf = np.array([0.5, 0.9, 0.5, 0.5, 0.7])
    assert select_top_k(conf, 1).tolist() == [1]
    assert select_top_k(conf, 2).tolist() == [1, 4]
    assert select_top_k(conf, 3).tolist() == [0, 1, 4]  # ties: lowest index first
    assert select_top_k(conf, 4).tolist() == [0, 1, 2, 4]
    assert select_top_k(conf, 0).tolist() == []
    assert select_top_k(conf, 99).tolist() == [0, 1, 2, 3, 4]
    assert select_top_k(np.array([0.2, 0.2, 0.2]), 2).tolist() == [0, 1]


def test_select_top_k_random_against_sort():
    rng = np.random.default_rng(2)
    for _ in range(200):
        conf = np.round(rng.random(int(rng.integers(1, 15))), 1)
        k = int(rng.integers(0, conf.size + 2))
        order = sorted(range(conf.size), key=lambda i: (-conf[i], i))
        assert select_top_k(conf, k).tolist() == sorted(order[:k])


# ----------------------------------------------------------------------------- propose
def _softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_propose_greedy_is_argmax_with_float64_softmax_confidence():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((16, 42)) * 4).astype(np.float32)
    tokens, conf = propose(logits)
    assert tokens.dtype == np.int64 and conf.dtype == np.float64
    assert tokens.tolist() == logits.argmax(-1).tolist()
    want = _softmax64(logits)[np.arange(16), logits.argmax(-1)]
    np.testing.assert_allclose(conf, want, rtol=1e-12, atol=0)


def test_propose_greedy_confidence_is_not_float32_rounded():
    # Two nearly equal top logits: the float64 confidence resolves differences float32 cannot.
    logits = np.array([[10.0, 10.0 - 1e-6, -5.0]], dtype=np.float32)
    _, conf = propose(logits)
    z = logits.astype(np.float64)
    want = 1.0 / np.exp(z - z.max()).sum()
    assert conf[0] == pytest.approx(want, rel=1e-14)
    # large logits do not overflow
    tokens, conf = propose(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert tokens.tolist() == [0] and conf[0] == 1.0


def test_propose_greedy_ties_lowest_index():
    tokens, conf = propose(np.array([[1.0, 3.0, 3.0, 0.0]], dtype=np.float32))
    assert tokens.tolist() == [1]
    assert conf[0] == pytest.approx(_softmax64(np.array([1.0, 3.0, 3.0, 0.0]))[1])


def test_propose_empty():
    tokens, conf = propose(np.zeros((0, 7), np.float32))
    assert tokens.shape == (0,) and conf.shape == (0,)


def _u(seed: int, n: int) -> np.ndarray:
    return counter_uniform(seed, SAMPLE_STREAM, 0, np.arange(n))


def test_propose_sampling_reproducible_with_seed():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((64, 42)).astype(np.float32)
    a = propose(logits, 1.0, u=_u(7, logits.shape[0]))
    b = propose(logits, 1.0, u=_u(7, logits.shape[0]))
    c = propose(logits, 1.0, u=_u(8, logits.shape[0]))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    assert a[0].tolist() != c[0].tolist()
    # the confidence of a sample is its probability under the sampled distribution
    np.testing.assert_allclose(a[1], _softmax64(logits)[np.arange(64), a[0]], rtol=1e-12)


def test_propose_sampling_needs_one_uniform_per_row():
    with pytest.raises(ValueError):
        propose(np.zeros((2, 5), np.float32), temperature=1.0)
    with pytest.raises(ValueError):
        propose(np.zeros((2, 5), np.float32), temperature=1.0, u=np.zeros(3))


def test_propose_sampling_inverts_the_cdf_with_its_uniform():
    """Row i draws with u[i]: u below the first token's mass gives token 0, and so on (a per-row
    draw, so a row's sample does not depend on the other rows)."""
    p = np.array([0.6, 0.25, 0.1, 0.05])
    logits = np.tile(np.log(p), (4, 1)).astype(np.float32)
    tok, conf = propose(logits, 1.0, u=np.array([0.59, 0.61, 0.86, 0.999]))
    assert tok.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(conf, p, rtol=1e-6)
    one, _ = propose(logits[2:3], 1.0, u=np.array([0.86]))
    assert one.tolist() == [2]


def test_counter_uniform_is_a_keyed_stream():
    """Same keys, same numbers; any key changed, other numbers; each position its own number (so a
    sequence draws the same alone or in a batch, whatever positions are drawn with it)."""
    pos = np.arange(100, 4100)
    a = counter_uniform(7, SAMPLE_STREAM, 3, pos)
    assert a.dtype == np.float64 and a.shape == pos.shape
    assert (a >= 0).all() and (a < 1).all()
    np.testing.assert_array_equal(a, counter_uniform(7, SAMPLE_STREAM, 3, pos))
    np.testing.assert_array_equal(a[[5, 17, 900]], counter_uniform(7, SAMPLE_STREAM, 3, pos[[5, 17, 900]]))
    for other in (counter_uniform(8, SAMPLE_STREAM, 3, pos), counter_uniform(7, REMASK_STREAM, 3, pos),
                  counter_uniform(7, SAMPLE_STREAM, 4, pos), counter_uniform(7, SAMPLE_STREAM, 3, pos + 1)):
        assert np.mean(other == a) < 0.01
    # uniform: every decile holds about a tenth, and neighbouring positions are uncorrelated
    counts = np.bincount((a * 10).astype(int), minlength=10) / a.size
    np.testing.assert_allclose(counts, 0.1, atol=0.02)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.05
    # large seeds (beyond 64 bits are wrapped) and negative ones work
    assert counter_uniform(2 ** 70 + 5, 1, 0, pos[:3]).shape == (3,)
    assert counter_uniform(-1, 1, 0, pos[:3]).shape == (3,)


def test_propose_sampling_follows_the_distribution():
    p = np.array([0.6, 0.25, 0.1, 0.05])
    logits = np.tile(np.log(p), (40000, 1)).astype(np.float32)
    tokens, _ = propose(logits, 1.0, u=_u(0, logits.shape[0]))
    freq = np.bincount(tokens, minlength=4) / tokens.size
    np.testing.assert_allclose(freq, p, atol=0.01)
    # temperature sharpens: at T = 0.5 the distribution is p^2 normalised
    tokens, _ = propose(logits, 0.5, u=_u(0, logits.shape[0]))
    freq = np.bincount(tokens, minlength=4) / tokens.size
    np.testing.assert_allclose(freq, p ** 2 / (p ** 2).sum(), atol=0.01)


def test_propose_top_k_and_top_p():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((200, 42)) * 2).astype(np.float32)
    argmax = logits.argmax(-1).tolist()
    for t in (0.7, 1.0, 3.0):
        tok, conf = propose(logits, t, top_k=1, u=_u(0, logits.shape[0]))
        assert tok.tolist() == argmax
        np.testing.assert_allclose(conf, 1.0)
        tok, conf = propose(logits, t, top_p=1e-9, u=_u(0, logits.shape[0]))
        assert tok.tolist() == argmax
        np.testing.assert_allclose(conf, 1.0)
    # top_k = 3 only ever samples among the 3 largest logits
    tok, _ = propose(logits, 5.0, top_k=3, u=_u(1, logits.shape[0]))
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    assert all(t in row for t, row in zip(tok.tolist(), top3.tolist()))
    assert len(set(tok.tolist()) - set(argmax)) > 0  # and not only the argmax
    # top_p keeps the smallest prefix whose mass reaches top_p: {0, 1} for p = (.6, .25, .1, .05), top_p .8
    p = np.array([0.6, 0.25, 0.1, 0.05])
    logits = np.tile(np.log(p), (5000, 1)).astype(np.float32)
    tok, conf = propose(logits, 1.0, top_p=0.8, u=_u(2, logits.shape[0]))
    assert set(tok.tolist()) == {0, 1}
    np.testing.assert_allclose(conf[tok == 0], 0.6 / 0.85)
    tok, _ = propose(logits, 1.0, top_p=0.6, u=_u(2, logits.shape[0]))
    assert set(tok.tolist()) == {0}


# ----------------------------------------------------------------------------- attention_bias
def _allowed(bias: np.ndarray) -> np.ndarray:
    assert bias.dtype == np.float32
    assert set(np.unique(bias).tolist()) <= {0.0, float(MASKED)}
    return bias[:, 0] == 0


def test_bias_bidirectional_full():
    pos = np.arange(6)[None]
    bias = attention_bias(pos, np.ones((1, 6), bool), np.zeros((1, 0), bool), None)
    assert bias.shape == (1, 1, 6, 6)
    assert _allowed(bias).all()


def test_bias_padding_rows_and_keys():
    pos = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    valid = np.array([[True, True, True, True], [True, True, False, False]])
    allowed = _allowed(attention_bias(pos, valid, np.zeros((2, 0), bool), None))
    assert allowed[0].all()
    # real rows of sequence 1 see only its real keys; its padding rows see the real keys too (never empty)
    want = np.array([[1, 1, 0, 0]] * 4, bool)
    assert (allowed[1] == want).all()


def test_bias_block_causal():
    bs = 2
    pos = np.arange(6)[None]
    allowed = _allowed(attention_bias(pos, np.ones((1, 6), bool), np.zeros((1, 0), bool), bs))[0]
    for q, k in itertools.product(range(6), range(6)):
        assert allowed[q, k] == (k // bs <= q // bs), (q, k)


def test_bias_with_past_block_causal():
    # past: cache positions 0..5, of which 0..3 are valid; queries at positions 4..7 (block size 4)
    past_valid = np.array([[True, True, True, True, False, False]])
    pos = np.array([[4, 5, 6, 7]])
    allowed = _allowed(attention_bias(pos, np.ones((1, 4), bool), past_valid, 4))[0]
    assert allowed.shape == (4, 10)
    assert allowed[:, :4].all() and not allowed[:, 4:6].any()  # cached block, stale entries
    assert allowed[:, 6:].all()  # the current block, bidirectional inside
    # a query of the next block sees the current one, not the other way round
    pos = np.array([[4, 8]])
    allowed = _allowed(attention_bias(pos, np.ones((1, 2), bool), past_valid, 4))[0]
    assert allowed[0, 6:].tolist() == [True, False]
    assert allowed[1, 6:].tolist() == [True, True]


def test_bias_rows_never_empty_random():
    rng = np.random.default_rng(6)
    for _ in range(300):
        b, L, P = int(rng.integers(1, 4)), int(rng.integers(1, 10)), int(rng.integers(0, 10))
        start = rng.integers(0, 12, size=b)
        pos = start[:, None] + np.arange(L)[None]
        q_valid = rng.random((b, L)) < 0.7
        q_valid[:, 0] |= ~q_valid.any(axis=1)  # at least one real query (the loop never sends none)
        past_valid = rng.random((b, P)) < 0.5
        block = [None, 2, 4][int(rng.integers(0, 3))]
        bias = attention_bias(np.where(q_valid, pos, 0), q_valid, past_valid, block)
        allowed = _allowed(bias)
        assert bias.shape == (b, 1, L, P + L)
        assert allowed.any(axis=-1).all()
        # a real query always sees itself
        for bi, li in zip(*np.nonzero(q_valid)):
            assert allowed[bi, li, P + li]
        # padding keys / invalid past entries are never visible to real queries
        k_valid = np.concatenate([past_valid, q_valid], axis=1)
        assert not (allowed & q_valid[:, :, None] & ~k_valid[:, None, :]).any()
        # softmax over the bias is finite
        z = bias[:, 0].astype(np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        assert np.isfinite(e / e.sum(-1, keepdims=True)).all()


# ----------------------------------------------------------------------------- Dream
def test_dream_timesteps_equal_torch_linspace_bit_for_bit():
    torch = pytest.importorskip("torch")
    from dllm_trt.runtime.unmask import dream_timesteps

    for steps in (1, 2, 3, 7, 8, 16, 64, 255, 512):
        assert np.array_equal(dream_timesteps(steps), torch.linspace(1, 1e-3, steps + 1).numpy()), steps


def test_dream_count_schedule():
    from dllm_trt.runtime.unmask import dream_count, dream_timesteps

    ts = dream_timesteps(4)
    n, counts = 16, []
    for i in range(4):
        k = dream_count(n, i, 4, ts)
        counts.append(k)
        n -= k
    assert sum(counts) == 16 and n == 0
    assert counts[0] == int(np.float32(16) * (np.float32(1) - ts[1] / ts[0]))  # int(n * (1 - s/t)) of the masks left
    assert counts[-1] >= 1  # the last step takes every mask left
    assert dream_count(0, 0, 4, ts) == 0


def test_select_budget_first_always_others_at_threshold():
    from dllm_trt.runtime.unmask import select_budget

    conf = np.array([0.3, 0.95, 0.9, 0.2])
    assert select_budget(conf, 3, 0.9).tolist() == [1, 2]  # 0.9 >= 0.9 kept, 0.3 dropped (carried)
    assert select_budget(conf, 3, 0.99).tolist() == [1]  # the most confident always
    assert select_budget(conf, 1, 0.0).tolist() == [1]


def test_dream_generation_config_keys():
    from dllm_trt.runtime.generation_files import DREAM_ALGS, dream_generation_keys
    from dllm_trt.runtime.settings import DREAM_SCHEDULED

    assert set(DREAM_ALGS) == set(DREAM_SCHEDULED) | {"confidence_threshold"}  # the two lists cannot drift

    assert dream_generation_keys({"alg": "entropy", "alg_temp": None}) == {"strategy": "entropy", "alg_temp": 0.0}
    assert dream_generation_keys({"alg": "origin"}) == {}  # no counterpart: left to the defaults
    assert dream_generation_keys({"alg": "topk_margin", "alg_temp": 0.5}) == {"strategy": "topk_margin",
                                                                              "alg_temp": 0.5}


def test_dream_generation_config_file(tmp_path):
    import json

    from dllm_trt.runtime.settings import folder_generation_defaults

    (tmp_path / "generation_config.json").write_text(json.dumps({"alg": "maskgit_plus", "steps": 64, "alg_temp": 0.0}))
    got = folder_generation_defaults(tmp_path)
    assert (got["strategy"], got["steps"], got["alg_temp"]) == ("maskgit_plus", 64, 0.0)


def test_select_rows_statistics_against_float64():
    """tokens, p1, p1 - p2 and sum p log p of every row, the mask token excluded (its p is 0)."""
    torch = pytest.importorskip("torch")
    from dllm_trt.models.layers import select_rows

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 40, generator=g) * 4
    z[0, 0, 7] = 100.0  # the mask token would win: excluded
    sel = select_rows(z, 7)
    ref = z.double().clone()
    ref[..., 7] = -float("inf")
    p = torch.softmax(ref, -1)
    top2 = p.topk(2, -1).values
    assert sel.tokens.tolist() == ref.argmax(-1).tolist() and (sel.tokens != 7).all()
    assert all(t.dtype == torch.float32 for t in (sel.confidence, sel.margin, sel.neg_entropy))
    assert torch.allclose(sel.confidence.double(), top2[..., 0], atol=1e-6)
    assert torch.allclose(sel.margin.double(), top2[..., 0] - top2[..., 1], atol=1e-6)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)
    assert torch.allclose(sel.neg_entropy.double(), plogp, atol=1e-5)
    assert torch.isfinite(sel.neg_entropy).all()


def test_family_defaults_under_the_folder_and_the_command_line(tmp_path):
    """Each family's upstream default algorithm when the checkpoint says nothing else; a checkpoint's
    generation_config.json (Dream's alg) and the command line win over it."""
    import argparse
    import json
    import shutil

    from conftest import REPO
    from dllm_trt.runtime.settings import generation_config_from_args

    none = argparse.Namespace()
    ckpts = REPO / "samples" / "checkpoints"
    # the bundled dream-tiny says low_confidence in its dllm_generation.json: the checkpoint wins
    assert generation_config_from_args(ckpts / "dream-tiny", none).strategy == "low_confidence"
    dream = tmp_path / "dream"
    shutil.copytree(ckpts / "dream-tiny", dream)
    (dream / "generation_config.json").unlink()
    (dream / "dllm_generation.json").unlink()  # dllm-trt's own decode keys (strategy low_confidence) live here
    assert generation_config_from_args(dream, none).strategy == "entropy"
    assert generation_config_from_args(dream, argparse.Namespace(strategy="maskgit_plus")).strategy == "maskgit_plus"
    assert generation_config_from_args(ckpts / "llada-tiny", none).strategy == "low_confidence"
    sdar = generation_config_from_args(REPO / "tests" / "fixtures" / "upstream" / "sdar", none)
    assert (sdar.strategy, sdar.threshold, sdar.steps) == ("threshold", 0.85, 4)  # low_confidence_dynamic
    (dream / "generation_config.json").write_text(json.dumps({"alg": "topk_margin", "steps": 8}))
    g = generation_config_from_args(dream, none)
    assert (g.strategy, g.steps) == ("topk_margin", 8)


def _attention_bias_by_definition(q_pos, q_valid, past_valid, block_size):
    """The layout rule written out key by key (the reference attention_bias is checked against)."""
    b, p = past_valid.shape
    l = q_pos.shape[1]
    out = np.full((b, 1, l, p + l), -1e9, np.float32)
    for bi in range(b):
        for qi in range(l):
            for k in range(p + l):
                valid = past_valid[bi, k] if k < p else q_valid[bi, k - p]
                kpos = k if k < p else q_pos[bi, k - p]
                later = bool(block_size) and q_valid[bi, qi] and kpos // block_size > q_pos[bi, qi] // block_size
                if valid and not later:
                    out[bi, 0, qi, k] = 0.0
    return out


@pytest.mark.parametrize("block_size", [None, 1, 3, 4])
def test_attention_bias_equals_its_definition(block_size):
    """Valid keys only; block-causal when a block size is set; padding queries see every valid key."""
    rng = np.random.default_rng(block_size or 0)
    for _ in range(20):
        b, l, p = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(0, 12))
        q_pos = np.sort(rng.integers(0, 20, (b, l)), axis=1)
        q_valid = rng.random((b, l)) < 0.8
        past_valid = rng.random((b, p)) < 0.7
        got = attention_bias(q_pos, q_valid, past_valid, block_size)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, _attention_bias_by_definition(q_pos, q_valid, past_valid, block_size))
