"""Token proposals and their confidences, from logits rows, in numpy, and the random stream.

The confidence of a proposal is its probability under the distribution it was drawn from
(softmax of the logits at temperature 0). Computed in float64 so threshold tests are stable.

Randomness is counter-based: ``counter_uniform(seed, stream, counter, positions)`` hashes its
four keys (SplitMix64 finaliser) into uniforms in [0, 1), so every backend, and a sequence alone
or in a batch, draws the same numbers for the same seed, with no generator state to carry.
"""
from __future__ import annotations

import numpy as np

from .. import contract

REMASK_STREAM, SAMPLE_STREAM = 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniform(seed: int, stream: int, counter: int, positions: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) (float64, 53 bits), one per position, keyed by (seed, stream, counter, position)."""
    with np.errstate(over="ignore"):
        key = np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
        key = _mix64(key + _GOLDEN * np.uint64(stream + 1))
        key = _mix64(key ^ (np.uint64(counter) * _GOLDEN))
        z = _mix64(key ^ (np.asarray(positions, np.int64).astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def chunked_cumsum(x: np.ndarray) -> np.ndarray:
    """The cumulated sums of each row of ``x`` [N, V] (float64), in a fixed order every backend can follow in
    one pass: within each chunk of contract.CDF_CHUNK entries sequentially, the chunks' totals sequentially, and entry
    j of chunk c is (the totals of the chunks before c) + (its sum within chunk c). A plain running sum is
    one long dependency chain: ONNX Runtime's CUDA CumSum makes every output re-add its whole prefix (69 ms
    of a 127 ms sampler step, 32 rows of a 126k vocabulary, H200); this order costs ~CDF_CHUNK additions per
    entry there. The
    first k sums of a row do not depend on the entries after k when k is a multiple of CDF_CHUNK (the
    nucleus prefix's sums are the whole row's)."""
    n, v = x.shape
    chunk = contract.CDF_CHUNK
    chunks = -(-v // chunk)
    pad = chunks * chunk - v
    if pad:  # zeros at the end change no sum
        x = np.concatenate([x, np.zeros((n, pad), x.dtype)], axis=-1)
    local = np.cumsum(x.reshape(n, chunks, chunk), axis=-1)
    totals = np.cumsum(local[:, :, -1], axis=-1)
    before = np.concatenate([np.zeros((n, 1), x.dtype), totals[:, :-1]], axis=-1)
    return (before[:, :, None] + local).reshape(n, chunks * chunk)[:, :v]


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def dream_probs(logits: np.ndarray, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0) -> np.ndarray:
    """The distribution Dream's ``sample_tokens`` reads its token and statistics from: the logits divided by
    the temperature (when > 0), then the nucleus filter (``top_p`` < 1: a token is dropped when the
    probability mass of the tokens ranked before it exceeds ``top_p``; the top token always stays), then
    the top-k filter (``top_k`` > 0: logits below the k-th largest are dropped, ties at it kept), then the
    softmax. Applied at temperature 0 too, as Dream does: its top-1 probability, margin and entropy are
    those of the filtered distribution. Float64 [N, V]."""
    z = logits.astype(np.float64)
    if temperature > 0.0:
        z = z / temperature
    if top_p < 1.0 and z.shape[-1] > 1:
        z = np.where(nucleus_keep(softmax64(z), top_p, key=z), z, -np.inf)
    if top_k > 0:
        kth = -np.sort(-z, axis=-1)[:, min(top_k, z.shape[-1]) - 1: min(top_k, z.shape[-1])]
        z = np.where(z < kth, -np.inf, z)
    return softmax64(z)


NUCLEUS_PREFIX = 1024  # entries sorted first for top-p (a multiple of CDF_CHUNK); the whole row only when their mass is not enough


def sorted_prefix(key: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` entries of ``np.argsort(-key, kind="stable")`` per row (high to low, ties to the lower
    id), without sorting the whole row: the k largest by partition, the ties at the k-th value completed
    with their lowest ids, then those k sorted. [N, k] int64."""
    n, v = key.shape
    if k >= v:
        return np.argsort(-key, axis=-1, kind="stable")
    part = np.argpartition(-key, k - 1, axis=-1)[:, :k]
    kth = np.take_along_axis(key, part, axis=-1).min(axis=-1, keepdims=True)
    above = key > kth
    ties = key == kth
    need = k - above.sum(axis=-1, keepdims=True)
    chosen = above | (ties & (np.cumsum(ties, axis=-1) <= need))
    ids = np.nonzero(chosen)[1].reshape(n, k)  # ascending ids per row
    vals = np.take_along_axis(key, ids, axis=-1)
    return np.take_along_axis(ids, np.argsort(-vals, axis=-1, kind="stable"), axis=-1)


def nucleus_keep(p: np.ndarray, top_p: float, key: np.ndarray | None = None) -> np.ndarray:
    """Which entries top-p keeps, [N, V] bool: sorted high to low by ``key`` (default ``p``; ties to the lower
    id), an entry is dropped when the mass of ``p`` ranked before it exceeds top_p, as SDAR's ``top_p_logits``,
    Fast-dLLM v2's ``sample_with_top_p`` and Dream's ``sample_tokens`` drop it (the top entry always stays).
    Sorts the first NUCLEUS_PREFIX entries; a row whose prefix mass already exceeds top_p (every later entry
    is dropped) is decided there, a flat one sorted whole. The result is the whole-row sort's, bit for bit:
    the prefix's cumulated sums (chunked_cumsum; NUCLEUS_PREFIX is a multiple of CDF_CHUNK) are the same
    additions in the same order."""
    key = p if key is None else key
    n, v = p.shape
    keep = np.zeros_like(p, dtype=bool)
    k = min(NUCLEUS_PREFIX, v)
    rows = np.arange(n)
    todo = rows
    if k < v:
        order = sorted_prefix(key, k)
        cum = chunked_cumsum(np.take_along_axis(p, order, axis=-1))
        settled = cum[:, -1] > top_p
        done = rows[settled]
        if len(done):
            keep[done] = _scatter_keep(order[done], _kept_sorted(cum[done], top_p), v)
        todo = rows[~settled]
    if len(todo):
        full = np.argsort(-key[todo], axis=-1, kind="stable")
        cum = chunked_cumsum(np.take_along_axis(p[todo], full, axis=-1))
        keep[todo] = _scatter_keep(full, _kept_sorted(cum, top_p), v)
    return keep


def _kept_sorted(cum: np.ndarray, top_p: float) -> np.ndarray:
    """Sorted entry j stays unless the mass before it, cum[j - 1], exceeds top_p."""
    keep = np.ones_like(cum, bool)
    keep[:, 1:] = cum[:, :-1] <= top_p
    return keep


def _scatter_keep(order: np.ndarray, keep_sorted: np.ndarray, v: int) -> np.ndarray:
    keep = np.zeros((order.shape[0], v), bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep


def draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Token i of each row of probabilities ``p`` [N, V] by inverse CDF with the uniform ``u[i]`` (the first id
    whose cumulated mass, chunked_cumsum, exceeds u[i] times the row's total)."""
    cdf = chunked_cumsum(p)
    u = np.asarray(u, np.float64)[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), p.shape[-1] - 1).astype(np.int64)


def confidence_without(logits: np.ndarray, tokens: np.ndarray, temperature: float, excluded: tuple[int, ...]) \
        -> np.ndarray:
    """The probability of ``tokens`` under softmax(logits / temperature) with the ``excluded`` ids left out of
    the softmax, 0 where the token itself is excluded (LLaDA's confidence_eos_eot_inf). Float64 [N]."""
    z = logits.astype(np.float64)
    if temperature > 0.0:
        z = z / temperature
    z = z.copy()
    z[:, list(excluded)] = -np.inf
    p = softmax64(z)
    conf = p[np.arange(p.shape[0]), tokens]
    return np.where(np.isin(tokens, excluded), 0.0, conf)


def float32_probability(logits: np.ndarray, tokens: np.ndarray, excluded: tuple[int, ...] = ()) -> np.ndarray:
    """The probability of ``tokens`` under softmax(logits) computed in float32 as LLaDA's ``generate`` computes it
    with torch (max subtracted, exp, divided by the sum), with the ``excluded`` ids left out of the softmax and
    0 where the token itself is excluded. Confident rows saturate at exactly 1 there, and which of those ties a
    step takes is upstream's torch.topk order (DecodeLoop.choose_torch_order). Float64 [N] of float32 values."""
    z = logits.astype(np.float32, copy=True)
    if excluded:
        z[:, list(excluded)] = -np.inf
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p = e[np.arange(e.shape[0]), tokens] / e.sum(axis=-1, dtype=np.float32)
    return np.where(np.isin(tokens, excluded), np.float32(0), p).astype(np.float64)


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The distribution a sampled proposal is drawn from, as SDAR's ``sample_with_temperature_topk_topp`` and
    Fast-dLLM v2's ``sample_with_top_p`` make it: logits / temperature, top-k (below the k-th largest: -inf),
    softmax, top-p (nucleus_keep), renormalised. Float64 [N, V]."""
    z = logits.astype(np.float64) / temperature
    if top_k > 0 and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = softmax64(z)
    if top_p < 1.0:  # drop what is ranked after a mass above top_p
        p = np.where(nucleus_keep(p, top_p), p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def propose(
    logits: np.ndarray,  # [N, V]
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    u: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (tokens [N] int64, confidence [N] float64); sampling draws row i with uniform ``u[i]``."""
    if logits.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if temperature == 0.0:
        tokens = logits.argmax(axis=-1)
        z = logits.astype(np.float64)
        top = np.take_along_axis(z, tokens[:, None], axis=-1)
        conf = 1.0 / np.exp(z - top).sum(axis=-1)
        return tokens.astype(np.int64), conf
    if u is None or len(u) != logits.shape[0]:
        raise ValueError("sampling at temperature > 0 needs one uniform per row (counter_uniform)")
    p = filtered_probs(logits, temperature, top_k, top_p)
    tokens = draw(p, u)
    conf = p[np.arange(p.shape[0]), tokens]
    return tokens, conf
