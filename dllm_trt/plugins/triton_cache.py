"""SubBlockCacheAttention as Triton kernels (GPU; torch and triton are imported on first use).

1. ``scatter_kv``: program (token, kv head) copies the token's key and value row into the cache at
   ``cache_position`` (rows with -1 are skipped). In place: nothing else of the cache moves.
2. ``cache_attention``: flash-attention forward over cache positions 0..S-1 with the additive
   bias. Program (query block, batch x kv head, split) takes the G*L query rows of one kv head
   (G = H / Hkv grouped heads, so each key/value tile is read once for all of them), streams its
   slice of the cache in BLOCK_N tiles with an online softmax in float32, and either writes the
   output or (several splits, flash-decoding) partial results that ``combine`` merges. Splitting
   the cache keeps the GPU busy at decode sizes (B * Hkv programs alone fill few SMs).

``subblock_cache_attention_triton(q, k, v, key_cache, value_cache, cache_position, bias, scale)``
takes torch CUDA tensors laid out as in subblock_cache.py (last dimension contiguous) and returns
(output, key_cache, value_cache) with the caches written in place. ``torch_concat_attention`` is
the concatenation baseline of the benchmark.
"""
from __future__ import annotations

import math
from functools import lru_cache


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def scatter_kv(k, v, kc, vc, pos, rows_per_seq, head_dim,
                   s_kb, s_kh, s_kl, s_cb, s_ch, s_ct, BLOCK_D: tl.constexpr):
        tok = tl.program_id(0)  # b * L + l
        h = tl.program_id(1)
        b = tok // rows_per_seq
        l = tok % rows_per_seq
        p = tl.load(pos + tok)
        d = tl.arange(0, BLOCK_D)
        ps = tl.maximum(p, 0).to(tl.int64)
        m = d < tl.where(p >= 0, head_dim, 0)  # a negative position writes nothing
        src = b.to(tl.int64) * s_kb + h * s_kh + l * s_kl + d
        dst = b.to(tl.int64) * s_cb + h * s_ch + ps * s_ct + d
        tl.store(kc + dst, tl.load(k + src, mask=m), mask=m)
        tl.store(vc + dst, tl.load(v + src, mask=m), mask=m)

    @triton.jit
    def cache_attention(q, kc, vc, bias, out, part_acc, part_m, part_l,
                        rows_per_seq, groups, keys, head_dim, scale, split_len, kv_heads,
                        s_qb, s_qh, s_ql, s_cb, s_ch, s_ct, s_bb, s_bl, s_ob, s_oh, s_ol,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        SPLIT: tl.constexpr, IEEE: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        split = tl.program_id(2)
        b = pid_bh // kv_heads
        hkv = pid_bh % kv_heads
        gl = groups * rows_per_seq
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # grouped row = g * L + l
        rmask = rows < gl
        g = rows // rows_per_seq
        l = rows % rows_per_seq
        h = hkv * groups + g
        d = tl.arange(0, BLOCK_D)
        dmask = d < head_dim
        b64 = b.to(tl.int64)
        qt = tl.load(q + b64 * s_qb + h[:, None] * s_qh + l[:, None] * s_ql + d[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n0 = split * split_len
        n_end = tl.minimum(n0 + split_len, keys)
        cache_base = b64 * s_cb + hkv * s_ch
        for off in range(0, split_len, BLOCK_N):
            n = n0 + off + tl.arange(0, BLOCK_N)
            nmask = n < n_end
            kv_off = cache_base + n[:, None].to(tl.int64) * s_ct + d[None, :]
            kv_mask = nmask[:, None] & dmask[None, :]
            kt = tl.load(kc + kv_off, mask=kv_mask, other=0.0)
            if IEEE:
                s = tl.dot(qt, tl.trans(kt), input_precision="ieee")
            else:
                s = tl.dot(qt, tl.trans(kt))
            bt = tl.load(bias + b64 * s_bb + l[:, None] * s_bl + n[None, :],
                         mask=rmask[:, None] & nmask[None, :], other=0.0)
            s = tl.where(nmask[None, :], s * scale + bt, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            vt = tl.load(vc + kv_off, mask=kv_mask, other=0.0)
            if IEEE:
                pv = tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
            else:
                pv = tl.dot(p.to(vt.dtype), vt)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        omask = rmask[:, None] & dmask[None, :]
        if SPLIT:
            n_rows = gl
            base = ((split * tl.num_programs(1) + pid_bh).to(tl.int64) * n_rows + rows)
            tl.store(part_acc + base[:, None] * BLOCK_D + d[None, :], acc, mask=omask)
            tl.store(part_m + base, m_i, mask=rmask)
            tl.store(part_l + base, l_i, mask=rmask)
        else:
            o = acc / l_i[:, None]
            tl.store(out + b64 * s_ob + h[:, None] * s_oh + l[:, None] * s_ol + d[None, :],
                     o.to(out.dtype.element_ty), mask=omask)

    @triton.jit
    def combine(out, part_acc, part_m, part_l, n_splits, rows_per_seq, groups, head_dim, kv_heads, n_bh,
                s_ob, s_oh, s_ol, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // kv_heads
        hkv = pid_bh % kv_heads
        gl = groups * rows_per_seq
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < gl
        d = tl.arange(0, BLOCK_D)
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        lsum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for s in range(0, n_splits):
            base = (s * n_bh + pid_bh).to(tl.int64) * gl + rows
            ms = tl.load(part_m + base, mask=rmask, other=float("-inf"))
            ls = tl.load(part_l + base, mask=rmask, other=0.0)
            a_s = tl.load(part_acc + base[:, None] * BLOCK_D + d[None, :], mask=rmask[:, None], other=0.0)
            m_new = tl.maximum(m, ms)
            w_old = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
            w_new = tl.where(ms == float("-inf"), 0.0, tl.exp(ms - m_new))
            acc = acc * w_old[:, None] + a_s * w_new[:, None]
            lsum = lsum * w_old + ls * w_new
            m = m_new
        g = rows // rows_per_seq
        l = rows % rows_per_seq
        h = hkv * groups + g
        o = acc / lsum[:, None]
        tl.store(out + b.to(tl.int64) * s_ob + h[:, None] * s_oh + l[:, None] * s_ol + d[None, :],
                 o.to(out.dtype.element_ty), mask=rmask[:, None] & (d[None, :] < head_dim))

    return scatter_kv, cache_attention, combine


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def plan(batch: int, kv_heads: int, grouped_rows: int, keys: int, block_m: int, block_n: int,
         sm_count: int) -> tuple[int, int]:
    """(splits, split_len): about two programs per SM, each split at least two key tiles."""
    programs = math.ceil(grouped_rows / block_m) * batch * kv_heads
    max_splits = max(1, math.ceil(keys / (2 * block_n)))
    splits = max(1, min(max_splits, math.ceil(2 * sm_count / programs)))
    split_len = math.ceil(math.ceil(keys / splits) / block_n) * block_n
    return math.ceil(keys / split_len), split_len


def scatter_kv_triton(key, value, key_cache, value_cache, cache_position) -> None:
    """Write key/value [B, Hkv, L, D] into the caches [B, Hkv, T, D] at cache_position [B, L] (in place)."""
    scatter_kv, _, _ = _kernels()
    b_n, hkv, l_n, d_n = key.shape
    for t in (key, value, key_cache, value_cache):
        if t.stride(-1) != 1:
            raise ValueError("scatter_kv needs the last dimension contiguous")
    if value.stride() != key.stride() or value_cache.stride() != key_cache.stride():
        raise ValueError("key/value and key_cache/value_cache must share their layouts")
    pos = cache_position.to(key.device).contiguous()
    scatter_kv[(b_n * l_n, hkv)](key, value, key_cache, value_cache, pos, l_n, d_n,
                                 key.stride(0), key.stride(1), key.stride(2),
                                 key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
                                 BLOCK_D=max(16, _next_pow2(d_n)), num_warps=1)


def cache_attention_triton(q, key_cache, value_cache, bias, scale: float | None = None, *, block_n: int = 64,
                           splits: int | None = None, num_warps: int = 4, num_stages: int = 2, out=None,
                           workspace=None):
    """softmax(q K[:S]^T * scale + bias) V[:S] per head, K/V shared by grouped heads: [B, H, L, D]."""
    import torch

    _, cache_attention, combine = _kernels()
    b_n, h_n, l_n, d_n = q.shape
    hkv = key_cache.shape[1]
    groups = h_n // hkv
    keys = bias.shape[-1]
    for t in (q, key_cache, value_cache, bias):
        if t.stride(-1) != 1:
            raise ValueError("cache_attention needs the last dimension contiguous")
    if bias.shape[1] != 1:
        raise ValueError("bias must be [B, 1, L, S]")
    sc = d_n ** -0.5 if scale is None else float(scale)
    gl = groups * l_n
    block_m = max(16, min(64, _next_pow2(gl)))
    block_d = max(16, _next_pow2(d_n))
    if splits is None:
        sm = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else 4
        n_splits, split_len = plan(b_n, hkv, gl, keys, block_m, block_n, sm)
    else:
        split_len = math.ceil(math.ceil(keys / splits) / block_n) * block_n
        n_splits = math.ceil(keys / split_len)
    if out is None:
        out = torch.empty_like(q)
    grid = (math.ceil(gl / block_m), b_n * hkv, n_splits)
    ieee = q.dtype == torch.float32
    if n_splits > 1:
        need = n_splits * b_n * hkv * gl
        if workspace is None or workspace[1].numel() < need:
            workspace = (torch.empty(need * block_d, dtype=torch.float32, device=q.device),
                         torch.empty(need, dtype=torch.float32, device=q.device),
                         torch.empty(need, dtype=torch.float32, device=q.device))
        part_acc, part_m, part_l = workspace
    else:
        part_acc = part_m = part_l = out  # unused
    cache_attention[grid](q, key_cache, value_cache, bias, out, part_acc, part_m, part_l,
                          l_n, groups, keys, d_n, sc, split_len, hkv,
                          q.stride(0), q.stride(1), q.stride(2),
                          key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
                          bias.stride(0), bias.stride(2), out.stride(0), out.stride(1), out.stride(2),
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, SPLIT=n_splits > 1, IEEE=ieee,
                          num_warps=num_warps, num_stages=num_stages)
    if n_splits > 1:
        combine[(math.ceil(gl / block_m), b_n * hkv)](out, part_acc, part_m, part_l, n_splits, l_n, groups, d_n, hkv,
                                                      b_n * hkv, out.stride(0), out.stride(1), out.stride(2),
                                                      BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out


def subblock_cache_attention_triton(q, key, value, key_cache, value_cache, cache_position, bias,
                                    scale: float | None = None, **kwargs):
    """SubBlockCacheAttention on the GPU: the caches are written in place and returned with the output."""
    scatter_kv_triton(key, value, key_cache, value_cache, cache_position)
    out = cache_attention_triton(q, key_cache, value_cache, bias, scale, **kwargs)
    return out, key_cache, value_cache


def torch_concat_attention(q, key, value, past_key, past_value, bias_past_current, scale: float | None = None):
    """The baseline: past + current concatenated (a copy of the past per step), then attention in torch
    (matmul, float32 softmax with the bias, matmul), as the exported graph does today."""
    import torch

    k = torch.cat((past_key, key), dim=2)
    v = torch.cat((past_value, value), dim=2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * sc
    p = torch.softmax(s.float() + bias_past_current, dim=-1).to(v.dtype)
    return torch.matmul(p, v)
