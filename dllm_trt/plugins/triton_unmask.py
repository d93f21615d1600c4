"""ThresholdUnmask as two Triton kernels (GPU; torch and triton are imported on first use).

1. ``row partials``: one pass over the logits. Program (row, split) streams its slice of the
   vocabulary once; each lane keeps a running max, the first column reaching it, and
   ``rest = sum of exp(z - max)`` over its other columns (online rescaling when the max moves).
   Lanes are merged at the end into one (max, argmax, rest) per (row, split). No softmax tensor:
   the only traffic is the logits read once plus 12 bytes per (row, split). Splitting the
   vocabulary keeps every SM busy when B*L is small (decode steps read 8..64 rows).
2. ``select``: one program per sequence merges the splits of its rows and applies the rule
   (threshold_unmask.py explains the ``rest`` form): chosen = candidate & (rest < (1 - tau) / tau), plus
   the candidate with the smallest max(rest, 2**-53), lowest row first. Writes new tokens,
   counts and confidences.

``threshold_unmask_triton(logits, tokens, candidates, mask_id, threshold)`` takes torch CUDA
tensors (logits float32/float16/bfloat16 [B, L, V]; threshold a float or a 1-element float32
tensor) and returns (new_tokens int64 [B, L], num_unmasked int64 [B], confidence float32 [B, L]);
``out=`` reuses output tensors, ``stream`` is implicit (torch's current stream). Runs under
``TRITON_INTERPRET=1`` on the CPU too, which is how CI checks the kernels when triton is installed.
"""
from __future__ import annotations

import math
from functools import lru_cache

SATURATION = 2.0 ** -53
_NO_INDEX = 2**31 - 1


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def row_partials(logits, stride_row, vocab, mask_id, chunk, n_splits, part_m, part_i, part_r,
                     BLOCK: tl.constexpr):
        row = tl.program_id(0)
        split = tl.program_id(1)
        start = split * chunk
        end = tl.minimum(start + chunk, vocab)
        base = logits + row.to(tl.int64) * stride_row
        offs = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        idx = tl.full([BLOCK], 2147483647, tl.int32)
        r = tl.zeros([BLOCK], tl.float32)
        for off in range(0, chunk, BLOCK):
            col = start + off + offs
            z = tl.load(base + col, mask=col < end, other=float("-inf")).to(tl.float32)
            z = tl.where(col == mask_id, float("-inf"), z)
            gt = z > m
            # one exp per element: the old max rescaled (new max) or the new term (otherwise);
            # a lane that has seen only -inf adds nothing
            e = tl.exp(tl.where(gt, m - z, z - m))
            e = tl.where(m == float("-inf"), 0.0, e)
            r = tl.where(gt, (r + 1.0) * e, r + e)
            idx = tl.where(gt, col, idx)
            m = tl.where(gt, z, m)
        mx = tl.max(m, axis=0)
        win = tl.min(tl.where(m == mx, idx, 2147483647), axis=0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - mx))
        rest = tl.sum(r * w + tl.where(idx == win, 0.0, w), axis=0)
        out = row * n_splits + split
        tl.store(part_m + out, mx)
        tl.store(part_i + out, win)
        tl.store(part_r + out, rest)

    @triton.jit
    def select(part_m, part_i, part_r, n_splits, rows_per_seq, tokens, candidates, threshold, new_tokens, num_unmasked,
               confidence, SATURATION_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0)
        rows = tl.arange(0, BLOCK_L)
        sp = tl.arange(0, BLOCK_S)
        in_rows = rows < rows_per_seq
        flat = b * rows_per_seq + rows
        pidx = flat[:, None] * n_splits + sp[None, :]
        pmask = in_rows[:, None] & (sp[None, :] < n_splits)
        m = tl.load(part_m + pidx, mask=pmask, other=float("-inf"))
        i = tl.load(part_i + pidx, mask=pmask, other=2147483647)
        r = tl.load(part_r + pidx, mask=pmask, other=0.0)
        mx = tl.max(m, axis=1)
        top = tl.min(tl.where(m == mx[:, None], i, 2147483647), axis=1)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - mx[:, None]))
        rest = tl.sum(r * w + tl.where(i == top[:, None], 0.0, w), axis=1)
        cand = tl.load(candidates + flat, mask=in_rows, other=0) != 0
        tok = tl.load(tokens + flat, mask=in_rows, other=0)
        tau = tl.load(threshold)
        cutoff = tl.where(tau > 0.0, (1.0 - tau) / tau, float("inf"))
        over = rest < cutoff
        key = tl.where(cand, tl.maximum(rest, SATURATION_C), float("inf"))
        kmin = tl.min(key, axis=0)
        first = tl.min(tl.where(cand & (key == kmin), rows, BLOCK_L), axis=0)
        chosen = cand & (over | (rows == first))
        tl.store(new_tokens + flat, tl.where(chosen, top.to(tl.int64), tok), mask=in_rows)
        tl.store(confidence + flat, tl.where(cand, 1.0 / (1.0 + rest), 0.0), mask=in_rows)
        tl.store(num_unmasked + b, tl.sum(chosen.to(tl.int64), axis=0))

    return row_partials, select


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def plan_splits(rows: int, vocab: int, block: int, sm_count: int) -> tuple[int, int]:
    """(splits, chunk): enough programs for ~4 per SM, each split at least two blocks of the vocabulary."""
    max_splits = max(1, vocab // (2 * block))
    splits = max(1, min(max_splits, math.ceil(4 * sm_count / max(rows, 1))))
    chunk = math.ceil(math.ceil(vocab / splits) / block) * block
    return math.ceil(vocab / chunk), chunk


def threshold_unmask_triton(logits, tokens, candidates, mask_id: int, threshold, *, block: int = 1024,
                            num_warps: int = 4, splits: int | None = None, out=None, workspace=None):
    """ThresholdUnmask on the GPU: (new_tokens [B, L] int64, num_unmasked [B] int64, confidence [B, L] float32)."""
    import torch

    row_partials, select = _kernels()
    b_n, l_n, v_n = logits.shape
    dev = logits.device
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    flat = logits.reshape(b_n * l_n, v_n) if logits.is_contiguous() else logits.contiguous().view(b_n * l_n, v_n)
    rows = b_n * l_n
    if splits is None:
        sm = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
        n_splits, chunk = plan_splits(rows, v_n, block, sm)
    else:
        chunk = math.ceil(math.ceil(v_n / splits) / block) * block
        n_splits = math.ceil(v_n / chunk)
    if workspace is None or workspace[0].numel() < rows * n_splits:
        workspace = (torch.empty(rows * n_splits, dtype=torch.float32, device=dev),
                     torch.empty(rows * n_splits, dtype=torch.int32, device=dev),
                     torch.empty(rows * n_splits, dtype=torch.float32, device=dev))
    part_m, part_i, part_r = workspace
    if not torch.is_tensor(threshold):
        threshold = torch.tensor([float(threshold)], dtype=torch.float32, device=dev)
    threshold = threshold.reshape(-1)[:1].to(torch.float32)
    if out is None:
        out = (torch.empty((b_n, l_n), dtype=torch.int64, device=dev), torch.empty(b_n, dtype=torch.int64, device=dev),
               torch.empty((b_n, l_n), dtype=torch.float32, device=dev))
    new_tokens, num_unmasked, confidence = out
    mask = int(mask_id) if 0 <= int(mask_id) < v_n else -1
    row_partials[(rows, n_splits)](flat, flat.stride(0), v_n, mask, chunk, n_splits, part_m, part_i, part_r,
                                   BLOCK=block, num_warps=num_warps)
    tokens = tokens.to(torch.int64).contiguous()
    cand = candidates.contiguous().view(torch.uint8) if candidates.dtype == torch.bool else candidates.to(torch.uint8)
    select[(b_n,)](part_m, part_i, part_r, n_splits, l_n, tokens, cand, threshold, new_tokens, num_unmasked, confidence,
                   SATURATION_C=SATURATION, BLOCK_L=max(16, _next_pow2(l_n)), BLOCK_S=max(2, _next_pow2(n_splits)),
                   num_warps=4)
    return new_tokens, num_unmasked, confidence


def threshold_unmask_torch(logits, tokens, candidates, mask_id: int, threshold: float):
    """The plain torch composition the benchmark compares against (softmax, max, argmax, where).

    It materialises the softmax tensor (the mask column is zeroed in it and the top-1 probability
    renormalised without it) and picks ties as torch does (not necessarily the lowest column): a
    timing baseline, not a reference."""
    import torch

    p = torch.softmax(logits.float(), dim=-1)
    if 0 <= mask_id < p.shape[-1]:
        p_mask = p[..., mask_id].clone()
        p[..., mask_id] = 0.0
    else:
        p_mask = torch.zeros(p.shape[:-1], device=p.device)
    conf, top = p.max(dim=-1)
    conf = torch.where(candidates, conf / (1.0 - p_mask), torch.zeros_like(conf))
    best = torch.where(candidates, conf, torch.full_like(conf, -1.0)).argmax(dim=-1, keepdim=True)
    forced = torch.zeros_like(candidates).scatter_(1, best, True) & candidates
    chosen = candidates & ((conf > threshold) | forced)
    return torch.where(chosen, top, tokens), chosen.sum(dim=1), conf
