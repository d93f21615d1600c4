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
