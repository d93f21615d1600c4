"""Sampling at temperature > 0 against the upstream code's own outputs (tests/fixtures/upstream/sampling,
made by tools/upstream_sampling_fixtures.py from Fast-dLLM's LLaDA get_transfer_index, SDAR's top_k_logits /
top_p_logits and Fast-dLLM v2's sample_with_top_p). The draws come from torch's RNG, so what is compared is
what a draw may be and how the drawn tokens are ranked, on the same logits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO
from dllm_trt.runtime.sampling import confidence_without, filtered_probs, softmax64
from dllm_trt.runtime.unmask import select_threshold

CASES = json.loads((REPO / "tests" / "fixtures" / "upstream" / "sampling" / "cases.json").read_text())


def transfers(case, untempered: bool) -> list[list[int]]:
    """Fast-dLLM's threshold rule (>=, the most confident always) over the masked positions, ranking the
    upstream proposals x0 by their probability before (untempered) or after temperature."""
    out = []
    for logits, mask, x0 in zip(np.array(case["logits"], np.float32), np.array(case["mask"]), np.array(case["x0"])):
        j = np.flatnonzero(mask)
        rows, tokens = logits[j], x0[j]
        if untempered:  # what DecodeLoop._propose computes for the LLaDA family when it samples
            conf = confidence_without(rows, tokens, 0.0, ())
        else:
            conf = softmax64(rows.astype(np.float64) / case["temperature"])[np.arange(j.size), tokens]
        out.append(sorted(j[select_threshold(conf, case["threshold"], inclusive=True)].tolist()))
    return out


def test_llada_ranks_its_draws_by_the_untempered_probability():
    """get_transfer_index draws x0 by Gumbel-max at the temperature and transfers by softmax(logits)[x0]: ranked
    so, the same positions as upstream in every case; ranked by the tempered probability, not (the fixture
    tells the two apart)."""
    differs = 0
    for case in CASES["llada_transfer"]:
        want = [sorted(np.flatnonzero(t).tolist()) for t in case["transfer"]]
        assert transfers(case, untempered=True) == want, case["temperature"]
        differs += transfers(case, untempered=False) != want
    assert differs > 0


@pytest.mark.parametrize("i", range(len(CASES["sdar_filter"])))
def test_sdar_top_k_then_top_p_keep_the_same_tokens(i):
    case = CASES["sdar_filter"][i]
    p = filtered_probs(np.array(case["logits"], np.float32), case["temperature"], case["top_k"], case["top_p"])
    np.testing.assert_array_equal(p > 0, np.array(case["kept"]))


@pytest.mark.parametrize("i", range(len(CASES["v2_top_p"])))
def test_fast_dllm_v2_nucleus_probabilities(i):
    """sample_with_top_p's renormalised nucleus (float32 upstream), the exact-tie rows included."""
    case = CASES["v2_top_p"][i]
    p = filtered_probs(np.array(case["logits"], np.float32), case["temperature"], 0, case["top_p"])
    np.testing.assert_array_equal(p > 0, np.array(case["probs"]) > 0)
    np.testing.assert_allclose(p, np.array(case["probs"]), rtol=1e-5, atol=1e-7)
