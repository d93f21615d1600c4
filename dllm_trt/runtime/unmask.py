"""Which masked positions to fill this step: the LLaDA schedule and the Fast-dLLM rules.

Each rule takes the confidences of one sequence's candidate positions (in position order)
and returns the indices to unmask. Ties go to the lowest position (stable ordering).
"""
from __future__ import annotations

import numpy as np


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """LLaDA's per-step transfer counts: ``masked`` spread over ``steps``, remainder first."""
    base, rem = divmod(masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def _by_confidence(conf: np.ndarray) -> np.ndarray:
    return np.argsort(-conf, kind="stable")


def select_top_k(conf: np.ndarray, k: int) -> np.ndarray:
    """The k most confident positions (LLaDA low-confidence / random remasking)."""
    return np.sort(_by_confidence(conf)[: max(0, min(k, conf.size))])


def select_threshold(conf: np.ndarray, threshold: float, inclusive: bool = False, at_least: int = 1) -> np.ndarray:
    """Every position whose confidence exceeds the threshold (reaches it, with ``inclusive``: Fast-dLLM's
    LLaDA/Dream code compares ``>=``, Fast-dLLM v2 and SDAR ``>``); when fewer than ``at_least`` do, the
    ``at_least`` most confident instead (SDAR's low_confidence_dynamic; 1: always the most confident)."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    chosen = conf >= threshold if inclusive else conf > threshold
    if int(chosen.sum()) < at_least:
        return select_top_k(conf, at_least)
    return np.flatnonzero(chosen)


def select_first(conf: np.ndarray, k: int) -> np.ndarray:
    """The first k positions, left to right (SDAR's sequential remasking; confidences unused)."""
    return np.arange(max(0, min(k, conf.size)), dtype=np.int64)


def select_factor(conf: np.ndarray, factor: float) -> np.ndarray:
    """Fast-dLLM's factor rule (get_transfer_index_dynamic): the largest n whose i-th most confident
    token (i <= n) has confidence >= 1 - factor / (i + 1); n >= 1. Upstream's loop quirk is kept for
    token equality: when only the least confident token fails, all of them are taken."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    order = _by_confidence(conf)
    ranks = np.arange(1, conf.size + 1)
    ok = conf[order] >= 1.0 - factor / (ranks + 1)
    ok[0] = True
    n = int(np.argmin(ok)) if not ok.all() else conf.size
    if n == conf.size - 1:
        n = conf.size
    return np.sort(order[:n])


def dream_timesteps(steps: int, eps: float = 1e-3) -> np.ndarray:
    """``torch.linspace(1, eps, steps + 1)`` in float32, bit for bit (checked for 1..299 steps): a float32
    step, the first half filled forwards from the start and the second half backwards from the end."""
    n = steps + 1
    start, end = np.float32(1.0), np.float32(eps)
    if n == 1:
        return np.array([start], np.float32)
    step = np.float64(np.float32((end - start) / np.float32(n - 1)))
    i = np.arange(n, dtype=np.float64)
    fwd = np.float64(start) + step * i
    bwd = np.float64(end) - step * (n - 1 - i)
    return np.where(i < n // 2, fwd, bwd).astype(np.float32)


def dream_count(masked: int, step: int, steps: int, timesteps: np.ndarray) -> int:
    """Dream's tokens to fill at ``step``: int(n * (1 - s/t)) of the n masks left, all on the last step
    (float32 as upstream, so the truncation agrees)."""
    if step >= steps - 1:
        return int(masked)
    t, s = timesteps[step], timesteps[step + 1]
    return int(np.float32(masked) * (np.float32(1.0) - s / t))


def select_budget(conf: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Fast-dLLM's Dream confidence_threshold: of the k most confident, the first always and the
    others only when their confidence is >= threshold (the caller carries the rest over)."""
    top = _by_confidence(conf)[: max(1, min(k, conf.size))]
    keep = conf[top] >= threshold
    keep[0] = True
    return np.sort(top[keep])


def select_drawn(conf: np.ndarray, k: int, alg_temp: float, u: np.ndarray) -> np.ndarray:
    """k positions drawn without replacement from softmax(conf / alg_temp) (Dream's alg_temp > 0), by the
    Gumbel top-k trick on the uniforms ``u`` (one per position, from the counter stream)."""
    g = -np.log(-np.log(np.clip(u, 1e-12, 1 - 1e-12)))
    return select_top_k(conf / alg_temp + g, k)


# ---------------------------------------------------------------------- torch.topk's order (SDAR)
def _before(a: tuple[float, int], b: tuple[float, int]) -> bool:
    """ATen's largest-first comparator: NaN before numbers, then greater values (index not compared)."""
    return (a[0] != a[0] and b[0] == b[0]) or a[0] > b[0]


def _insertion_sort(q: list, first: int, last: int) -> None:
    for i in range(first + 1, last):
        val = q[i]
        if _before(val, q[first]):
            q[first + 1: i + 1] = q[first:i]
            q[first] = val
            continue
        j = i
        while _before(val, q[j - 1]):
            q[j] = q[j - 1]
            j -= 1
        q[j] = val


def _partition(q: list, first: int, last: int) -> int:
    """Median of three (first + 1, middle, last - 1) moved to ``first`` as the pivot, then the unguarded
    partition of [first + 1, last); returns the cut."""
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    if _before(q[a], q[b]):
        m = b if _before(q[b], q[c]) else (c if _before(q[a], q[c]) else a)
    else:
        m = a if _before(q[a], q[c]) else (c if _before(q[b], q[c]) else b)
    q[first], q[m] = q[m], q[first]
    lo, hi = first + 1, last
    while True:
        while _before(q[lo], q[first]):
            lo += 1
        hi -= 1
        while _before(q[first], q[hi]):
            hi -= 1
        if lo >= hi:
            return lo
        q[lo], q[hi] = q[hi], q[lo]
        lo += 1


def _select(q: list, nth: int) -> None:
    """Introselect: partition until the range holding ``nth`` has at most 3 elements, then insertion sort."""
    first, last = 0, len(q)
    depth = 2 * (len(q).bit_length() - 1)
    while last - first > 3:
        if depth == 0:
            raise NotImplementedError("degenerate partitions (heap selection) are not reproduced")
        depth -= 1
        cut = _partition(q, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(q, first, last)


def _sort(q: list, first: int, last: int, depth: int) -> None:
    """Introsort: partition ranges above 16 elements (right part first, as libstdc++ recurses), then one
    insertion sort over the whole range (libstdc++'s guarded + unguarded passes order equal keys the same)."""
    top = last
    while last - first > 16:
        if depth == 0:
            raise NotImplementedError("degenerate partitions (heap sort) are not reproduced")
        depth -= 1
        cut = _partition(q, first, last)
        _sort(q, cut, last, depth)
        last = cut
    _insertion_sort(q, first, top)


def _adjust_heap(q: list, hole: int, n: int, value: tuple) -> None:
    """libstdc++'s __adjust_heap then __push_heap, with "before" as the heap's less-than: the hole at ``hole``
    sinks to a leaf by the larger child (the right one unless the left is larger), then ``value`` rises."""
    top, child = hole, hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if _before(q[child], q[child - 1]):
            child -= 1
        q[hole] = q[child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        q[hole] = q[child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and _before(q[parent], value):
        q[hole] = q[parent]
        hole = parent
        parent = (hole - 1) // 2
    q[hole] = value


def _partial_sort(q: list, k: int) -> None:
    """libstdc++'s std::partial_sort: a heap of the first k (__make_heap), each later element that comes before
    the heap's top replaces it (__heap_select / __pop_heap), then __sort_heap."""
    if k >= 2:
        parent = (k - 2) // 2
        while True:
            _adjust_heap(q, parent, k, q[parent])
            if parent == 0:
                break
            parent -= 1
    for i in range(k, len(q)):
        if _before(q[i], q[0]):
            value, q[i] = q[i], q[0]
            _adjust_heap(q, 0, k, value)
    for last in range(k - 1, 0, -1):
        value, q[last] = q[last], q[0]
        _adjust_heap(q, 0, last, value)


def torch_topk(values: np.ndarray, k: int) -> np.ndarray:
    """The indices ``torch.topk(torch.tensor(values), k)`` returns on the CPU, in its order, ties included.

    Why: SDAR's remasking takes ``torch.topk`` of a block's confidences with -inf at the positions that
    are not masks, and asks for more positions than there are masks in the prompt's partial block; the
    extra picks are -inf ties, and the tokens it then overwrites are whichever ties ATen's CPU top-k
    returns. ATen (TopKImpl.h) runs ``std::nth_element`` at k - 1 and sorts the first k - 1 with
    ``std::sort`` for k * 64 > n, and ``std::partial_sort`` (a heap of k) otherwise, with a comparator that
    sees values only; this replays libstdc++'s introselect / introsort / heap select on (value, index) pairs
    to return the same order. Checked against torch.topk on random rows of 2..2048 entries with -inf and
    finite ties, both paths (tests/test_upstream_fidelity.py). LLaDA's ``confidence_eos_eot_inf`` ranks whole
    rows with many equal (zero) confidences through it too (DecodeLoop.unmask). CUDA's top-k orders ties
    differently; it is not reproduced."""
    n = len(values)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64)
    q = [(float(v), i) for i, v in enumerate(values)]
    if k * 64 <= n:
        _partial_sort(q, k)
        return np.array([i for _, i in q[:k]], np.int64)
    _select(q, k - 1)
    _sort(q, 0, k - 1, 2 * (max(k - 1, 1).bit_length() - 1))
    return np.array([i for _, i in q[:k]], np.int64)


# ---------------------------------------------------------------------------------------------------------
# Later runtime-only methods (no retraining). Each reads only what the graph returns per row: the top-1 token,
# its probability, and (SchED) the top-1 minus top-2 probability; see runtime/methods.py for the stateful parts.

def mask_runs(positions: np.ndarray) -> np.ndarray:
    """Run id of each candidate: candidates at consecutive positions (no decoded token between them) share one."""
    if positions.size == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(positions) != 1)]).astype(np.int64)


def select_hierarchy(conf: np.ndarray, positions: np.ndarray, threshold: float, low_threshold: float) -> np.ndarray:
    """dInfer's hierarchical decoding (inclusionAI/dInfer, HierarchyDecoder; docs/source/start/advanced_decoding.rst):
    every position above ``threshold``; in each run of consecutive masked positions, the most confident one when it
    is above ``low_threshold``; and always the most confident position overall. Comparisons are strict (``>``) as
    upstream; a tie inside a run takes every tied position, as upstream's equality with the run's maximum does."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    runs = mask_runs(positions)
    run_max = np.full(int(runs[-1]) + 1, -np.inf)
    np.maximum.at(run_max, runs, conf)
    chosen = ((conf == run_max[runs]) & (conf > low_threshold)) | (conf > threshold)
    chosen[int(_by_confidence(conf)[0])] = True
    return np.flatnonzero(chosen)


def select_local_leap(conf: np.ndarray, positions: np.ndarray, threshold: float, relaxed: float,
                      radius: int) -> np.ndarray:
    """LocalLeap (Kong et al., arXiv 2510.07081, "local determinism propagation"): masked positions at or above
    ``threshold`` are anchors; a masked position within ``radius`` positions of an anchor is committed at the
    relaxed threshold ``relaxed`` (<= threshold), any other at ``threshold``; the most confident position always.
    Without an anchor this is Fast-dLLM's threshold rule (``>=``)."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    anchors = positions[conf >= threshold]
    near = np.zeros(conf.size, bool)
    if anchors.size:
        near = (np.abs(positions[:, None] - anchors[None, :]) <= radius).any(axis=1)
    chosen = conf >= np.where(near, relaxed, threshold)
    chosen[int(_by_confidence(conf)[0])] = True
    return np.flatnonzero(chosen)


LOGIT_MARGIN_CAP = 23 * np.log(2.0)  # log(1 / float32 epsilon) = 15.94


def logit_margin(conf: np.ndarray, prob_margin: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 *logit* from the top-1 probability p1 and the probability margin p1 - p2 the graph returns:
    log p1 - log p2 (the softmax's normaliser cancels). The outputs are float32, so p2 = p1 - margin is known to
    about p1 * 2^-23: margins beyond log(2^23) = 15.94 cannot be told apart and saturate there."""
    p1 = np.asarray(conf, np.float64)
    p2 = np.maximum(p1 - np.asarray(prob_margin, np.float64), p1 * 2.0 ** -23)
    return np.log(p1) - np.log(p2)


SCHED_SHAPES = ("linear", "cosine", "exp")


def sched_threshold(progress: float, high: float, low: float, shape: str = "linear", rate: float = 4.0) -> float:
    """SchED's progress-aware threshold tau(p) (Mohamed et al., arXiv 2512.02892): smooth and non-increasing from
    ``high`` at p = 0 to ``low`` at p = 1 (``exp``: low + (high - low) e^(-rate p), reaching ``low`` only at
    p -> inf)."""
    p = min(max(float(progress), 0.0), 1.0)
    if shape == "linear":
        return high + (low - high) * p
    if shape == "cosine":
        return low + (high - low) * 0.5 * (1.0 + np.cos(np.pi * p))
    if shape == "exp":
        return low + (high - low) * float(np.exp(-rate * p))
    raise ValueError(f"unknown SchED schedule {shape!r}; use one of {', '.join(SCHED_SHAPES)}")
