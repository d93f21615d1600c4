"""``SubBlockCacheAttention``: the reference (numpy), and the layout helpers the runtime uses.

Inputs and outputs of every face of the op::

    query           [B, H, L, D]       the current tokens' queries (after RoPE)
    key, value      [B, Hkv, L, D]     the current tokens' keys (after RoPE) and values
    key_cache,      [B, Hkv, T, D]     the preallocated, position-indexed caches (capacity T)
    value_cache
    cache_position  [B, L]    int64    where each current token's key/value goes (-1: not written)
    bias            [B, 1, L, S] f32   additive attention bias over cache positions 0..S-1 *after*
                                       the write (0 = attend, -1e9 = masked); S <= T
    scale           attribute float    softmax scale (default D ** -0.5)
  ->
    output          [B, H, L, D]
    key_cache_out,  [B, Hkv, T, D]     the caches with the current tokens written (in place on the
    value_cache_out                    GPU and in TensorRT: the outputs alias the cache inputs)

The write comes first, so the current tokens are attended to *from the cache*: no concatenation
of past and current per step, no copy of the cache. The layout (bidirectional inside the block,
block-causal across blocks, Fast-dLLM dual cache, padding, stale entries) is entirely in the bias,
as for the model graph; grouped-query heads share their key/value head (head h reads kv head
h // (H / Hkv)), and the softmax is taken in float32 as in ``models/layers.attend``.

The runtime's forward contract speaks of a past (cache positions 0..P-1) plus the current tokens,
with a bias over those P + L keys. ``cache_write_positions`` and ``cache_attention_bias`` turn one
into the other: a real row (its own key visible to it) is written at its position, and the bias
column of a written position is the current token's column.
"""
from __future__ import annotations

import numpy as np

MASKED = np.float32(-1e9)


def cache_write_positions(attention_bias: np.ndarray, position_ids: np.ndarray, past_len: int) -> np.ndarray:
    """[B, L] cache position of each current token, -1 for padding rows.

    A row is real when it may attend to its own key (``layout.attention_bias`` gives padding
    rows a masked diagonal: they see the valid keys, never themselves)."""
    b, _, l, k = attention_bias.shape
    if k != past_len + l:
        raise ValueError(f"attention_bias has {k} keys, expected past_len + query_len = {past_len + l}")
    own = attention_bias[:, 0, np.arange(l), past_len + np.arange(l)]  # [B, L]
    return np.where(own == 0, position_ids, -1).astype(np.int64)


def cache_attention_bias(attention_bias: np.ndarray, past_len: int, cache_position: np.ndarray) -> np.ndarray:
    """The bias over cache positions 0..S-1 after the write, S = max(past_len, last written + 1, 1).

    Past columns keep their value, except where a current token is written: its column replaces
    the (stale) past one."""
    b, _, l, k = attention_bias.shape
    p = past_len
    written = cache_position >= 0
    s = max(p, int(cache_position.max()) + 1 if written.any() else 0, 1)
    out = np.full((b, 1, l, s), MASKED, np.float32)
    out[..., :p] = attention_bias[..., :p]
    bi, li = np.nonzero(written)
    out[bi, 0, :, cache_position[bi, li]] = attention_bias[bi, 0, :, p + li]
    return out


def subblock_cache_attention(query: np.ndarray, key: np.ndarray, value: np.ndarray, key_cache: np.ndarray,
                             value_cache: np.ndarray, cache_position: np.ndarray, bias: np.ndarray,
                             scale: float | None = None, inplace: bool = False
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference SubBlockCacheAttention: (output [B, H, L, D], key_cache_out, value_cache_out).

    Computed in float64 and returned in the query's / cache's dtype. With ``inplace`` the caches
    passed in are written and returned; otherwise copies are."""
    b_n, h_n, l_n, d_n = query.shape
    hkv = key.shape[1]
    if h_n % hkv:
        raise ValueError(f"{h_n} query heads are not a multiple of {hkv} key/value heads")
    t_n = key_cache.shape[2]
    s_n = bias.shape[-1]
    if bias.shape != (b_n, 1, l_n, s_n) or s_n > t_n:
        raise ValueError(f"bias must be [B, 1, L, S] with S <= {t_n}, got {bias.shape}")
    if cache_position.shape != (b_n, l_n) or (cache_position >= t_n).any():
        raise ValueError(f"cache_position must be [B, L] = {(b_n, l_n)} with values < {t_n}")
    kc = key_cache if inplace else key_cache.copy()
    vc = value_cache if inplace else value_cache.copy()
    bi, li = np.nonzero(cache_position >= 0)
    ti = cache_position[bi, li]
    kc[bi, :, ti] = key[bi, :, li]
    vc[bi, :, ti] = value[bi, :, li]
    g = h_n // hkv
    keys = np.repeat(kc[:, :, :s_n].astype(np.float64), g, axis=1)  # [B, H, S, D]: head h reads kv head h // g
    vals = np.repeat(vc[:, :, :s_n].astype(np.float64), g, axis=1)
    sc = d_n ** -0.5 if scale is None else float(scale)
    scores = np.einsum("bhld,bhsd->bhls", query.astype(np.float64), keys) * sc + bias.astype(np.float64)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhls,bhsd->bhld", p, vals)
    return out.astype(query.dtype), kc, vc
