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
    """Introsort: partition ranges above 16 elements, then one insertion sort over the whole range."""
    top = last
    while last - first > 16:
        if depth == 0:
            raise NotImplementedError("degenerate partitions (heap sort) are not reproduced")
        depth -= 1
        cut = _partition(q, first, last)
        _sort_ranges(q, cut, last, depth)
        last = cut
    if top - first > 16:
        _insertion_sort(q, first, first + 16)
        for i in range(first + 16, top):
            val, j = q[i], i
            while _before(val, q[j - 1]):
                q[j] = q[j - 1]
                j -= 1
            q[j] = val
    else:
        _insertion_sort(q, first, top)


def _sort_ranges(q: list, first: int, last: int, depth: int) -> None:
    while last - first > 16:
        if depth == 0:
            raise NotImplementedError("degenerate partitions (heap sort) are not reproduced")
        depth -= 1
        cut = _partition(q, first, last)
        _sort_ranges(q, cut, last, depth)
        last = cut


def torch_topk(values: np.ndarray, k: int) -> np.ndarray:
    """The indices ``torch.topk(torch.tensor(values), k)`` returns on the CPU, in its order, ties included.

    Why: SDAR's remasking takes ``torch.topk`` of a block's confidences with -inf at the positions that
    are not masks, and asks for more positions than there are masks in the prompt's partial block; the
    extra picks are -inf ties, and the tokens it then overwrites are whichever ties ATen's CPU top-k
    returns. ATen (TopKImpl.h) runs ``std::nth_element`` at k - 1 and sorts the first k - 1 with
    ``std::sort`` (for k * 64 > n; partial_sort otherwise), with a comparator that sees values only; this
    replays libstdc++'s introselect / introsort on (value, index) pairs to return the same order. Checked
    against torch.topk on random blocks of 2..63 entries with -inf and finite ties
    (tests/test_upstream_fidelity.py). CUDA's top-k orders ties differently; it is not reproduced."""
    n = len(values)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64)
    if k * 64 <= n:
        raise NotImplementedError(f"torch's partial_sort path (k={k}, n={n}) is not reproduced")
    q = [(float(v), i) for i, v in enumerate(values)]
    _select(q, k - 1)
    _sort(q, 0, k - 1, 2 * (max(k - 1, 1).bit_length() - 1))
    return np.array([i for _, i in q[:k]], np.int64)
