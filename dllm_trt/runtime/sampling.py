"""Token proposals and their confidences, from logits rows, in numpy.

The confidence of a proposal is its probability under the distribution it was drawn from
(softmax of the logits at temperature 0). Computed in float64 so threshold tests are stable.
"""
from __future__ import annotations

import numpy as np


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def propose(
    logits: np.ndarray,  # [N, V]
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (tokens [N] int64, confidence [N] float64)."""
    if logits.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if temperature == 0.0:
        tokens = logits.argmax(axis=-1)
        z = logits.astype(np.float64)
        top = np.take_along_axis(z, tokens[:, None], axis=-1)
        conf = 1.0 / np.exp(z - top).sum(axis=-1)
        return tokens.astype(np.int64), conf
    if rng is None:
        raise ValueError("sampling at temperature > 0 needs a seeded rng")
    z = logits.astype(np.float64) / temperature
    if top_k > 0 and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = softmax64(z)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        cum = np.cumsum(sorted_p, axis=-1)
        drop_sorted = (cum - sorted_p) >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[0])[:, None] * cdf[:, -1:]
    tokens = np.minimum((cdf <= u).sum(axis=-1), p.shape[-1] - 1)
    conf = p[np.arange(p.shape[0]), tokens]
    return tokens.astype(np.int64), conf
