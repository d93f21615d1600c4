"""The attention layout of one forward, as the additive bias the graphs take.

Keys are the first ``P`` cache positions followed by the current tokens. A key is visible to
a query when it is valid (a real token that is not stale in the cache) and, for block
diffusion, when its block is not after the query's block. Rows of padding queries see every
valid key, so no row is empty (an empty row would make softmax NaN).
"""
from __future__ import annotations

import numpy as np

MASKED = np.float32(-1e9)


def attention_bias(
    q_pos: np.ndarray,  # [B, L] int
    q_valid: np.ndarray,  # [B, L] bool
    past_valid: np.ndarray,  # [B, P] bool: cache positions 0..P-1 that may be attended
    block_size: int | None,  # block-causal when set
) -> np.ndarray:
    b, p = past_valid.shape
    k_pos = np.concatenate([np.broadcast_to(np.arange(p), (b, p)), q_pos], axis=1)
    k_valid = np.concatenate([past_valid, q_valid], axis=1)
    allowed = np.broadcast_to(k_valid[:, None, :], (b, q_pos.shape[1], k_pos.shape[1]))
    if block_size:
        allowed = allowed & ((k_pos[:, None, :] // block_size) <= (q_pos[:, :, None] // block_size))
    allowed = np.where(q_valid[:, :, None], allowed, k_valid[:, None, :])
    return np.where(allowed, np.float32(0), MASKED)[:, None].astype(np.float32)
