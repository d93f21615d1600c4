"""``ThresholdUnmask``: the reference (numpy), which *is* the decode loop's threshold rule.

Inputs and outputs of every face of the op::

    logits      [B, L, V]  float32 / float16   row r of sequence b predicts one position
    tokens      [B, L]     int64               the current token of the position each row predicts
    candidates  [B, L]     bool                rows that may be unmasked this step (the window's
                                               masked positions of the block being filled)
    threshold   scalar     float32             tau
    mask_id     attribute  int                 the mask token: never proposed (when 0 <= mask_id < V)
  ->
    new_tokens    [B, L]   int64               tokens with the chosen rows replaced by their top-1 token
    num_unmasked  [B]      int64               rows chosen per sequence
    confidence    [B, L]   float32             top-1 probability of each candidate row (0 elsewhere)

Per sequence, among its candidate rows: every row whose confidence exceeds tau is chosen, and
always the most confident row (ties to the lowest row); rows that are not candidates never change.
That is ``DecodeLoop.unmask`` with the threshold strategy at temperature 0: ``without_mask``, then
``sampling.propose`` (top-1 and its softmax probability, in float64) and ``unmask.select_threshold``,
which this reference calls directly. (The op compares strictly, as Fast-dLLM v2 and SDAR do; for
LLaDA and Dream the loop compares ``>=`` as Fast-dLLM's code does, which differs only for a
confidence exactly equal to tau.)

How the device faces get the same answer without a softmax tensor (onnx_fallback.py,
triton_unmask.py, trt_plugins.py): one pass per row gives the max ``m`` over the allowed columns,
the first column ``a`` that reaches it, and ``rest = sum_{v != a} exp(z_v - m)`` (the argmax term
is left out, so ``rest`` keeps full relative precision when the row is confident). Then

    confidence = 1 / (1 + rest)            conf > tau  <=>  rest < (1 - tau) / tau   (tau > 0)
    most confident row = smallest max(rest, 2**-53)

The clamp at 2**-53 makes rows that float64 cannot tell apart (1 + rest == 1) tie, as they do in
the reference, so the tie goes to the lowest row there too. What remains is float32 rounding:
the device faces agree with this reference unless a confidence lies within about 1e-6
(relative) of tau or of another candidate's confidence.
"""
from __future__ import annotations

import numpy as np

from ..runtime.sampling import propose
from ..runtime.unmask import select_threshold

SATURATION = 2.0 ** -53  # below this, 1 + rest == 1 in float64: the reference's confidences tie


def threshold_unmask(logits: np.ndarray, tokens: np.ndarray, candidates: np.ndarray, mask_id: int,
                     threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference ThresholdUnmask: (new_tokens [B, L] int64, num_unmasked [B] int64, confidence [B, L] float32)."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {logits.shape}")
    b_n, l_n, v_n = logits.shape
    tokens = np.asarray(tokens, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=bool)
    if tokens.shape != (b_n, l_n) or candidates.shape != (b_n, l_n):
        raise ValueError(f"tokens {tokens.shape} and candidates {candidates.shape} must be {(b_n, l_n)}")
    new = tokens.copy()
    num = np.zeros(b_n, np.int64)
    conf = np.zeros((b_n, l_n), np.float32)
    for b in range(b_n):
        rows = np.flatnonzero(candidates[b])
        if rows.size == 0:
            continue
        z = logits[b, rows]  # a fresh array (fancy indexing), as DecodeLoop.without_mask gets
        if 0 <= mask_id < v_n:
            z[:, mask_id] = -np.inf
        top, c = propose(z, 0.0)
        chosen = select_threshold(c, float(threshold))
        new[b, rows[chosen]] = top[chosen]
        num[b] = chosen.size
        conf[b, rows] = c
    return new, num, conf


def row_statistics(logits: np.ndarray, mask_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The device faces' per-row pass in numpy (float64): (max [B, L], first argmax [B, L], rest [B, L]).
    Used by tests to explain a disagreement; the reference above does not need it."""
    z = np.asarray(logits, dtype=np.float64).copy()
    if 0 <= mask_id < z.shape[-1]:
        z[..., mask_id] = -np.inf
    a = z.argmax(-1)
    m = np.take_along_axis(z, a[..., None], -1)
    e = np.exp(z - m)
    np.put_along_axis(e, a[..., None], 0.0, -1)
    return m[..., 0], a.astype(np.int64), e.sum(-1)
