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


def select_threshold(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Every position whose confidence exceeds the threshold, and always the most confident one."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    chosen = conf > threshold
    chosen[int(np.argmax(conf))] = True
    return np.flatnonzero(chosen)


def select_factor(conf: np.ndarray, factor: float) -> np.ndarray:
    """Fast-dLLM's factor rule: the largest n whose i-th most confident token (i <= n) has
    confidence >= 1 - factor / (i + 1); n >= 1."""
    if conf.size == 0:
        return np.zeros(0, np.int64)
    order = _by_confidence(conf)
    ranks = np.arange(1, conf.size + 1)
    ok = conf[order] >= 1.0 - factor / (ranks + 1)
    ok[0] = True
    n = int(np.argmin(ok)) if not ok.all() else conf.size
    return np.sort(order[:n])
