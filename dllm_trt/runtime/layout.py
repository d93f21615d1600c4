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
    """[B, 1, L, P + L] float32: 0 where the query may see the key, MASKED elsewhere. Built once per window
    on the host (a prefix-cache step's window is 288 x 640 on LLaDA-8B's prompt 64 + gen 256): one pass writes
    the result, no intermediate [B, L, K] arrays beyond the block-causal test."""
    b, p = past_valid.shape
    l = q_pos.shape[1]
    k_valid = np.concatenate([past_valid, q_valid], axis=1)  # [B, K]
    row = np.where(k_valid, np.float32(0), MASKED)  # what every query sees without the block-causal rule
    if not block_size:
        out = np.empty((b, 1, l, p + l), np.float32)
        out[...] = row[:, None, None, :]
        return out
    # a key in a later block than the query's is hidden; padding queries see every valid key
    k_block = np.concatenate([np.broadcast_to(np.arange(p) // block_size, (b, p)), q_pos // block_size], axis=1)
    q_block = np.where(q_valid, q_pos // block_size, np.iinfo(np.int64).max)
    return np.where(k_block[:, None, :] <= q_block[:, :, None], row[:, None, :], MASKED)[:, None]
