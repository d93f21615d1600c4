"""The numerical parts: blockwise INT4 round-to-nearest (ONNX Runtime's own kernel), the AWQ
per-input-channel scale search and weight clipping search, SmoothQuant scales, FP8 E4M3.

Everything here is numpy on ``X [rows, K]`` calibration activations and ``W [K, N]`` weights.
The INT4 simulation calls the very kernel ``MatMulNBitsQuantizer`` uses
(``onnxruntime.capi._pybind_state.quantize_matmul_4bits``) and unpacks its output, so the
searches optimise exactly what ends up in the ``MatMulNBits`` node.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

FP8_E4M3_MAX = 448.0
AWQ_GRID = tuple(i / 20 for i in range(20))  # alpha = 0 (plain RTN) .. 0.95
CLIP_GRID = tuple(1.0 - i / 20 for i in range(11))  # 1.0 .. 0.5 of the block's range


@contextmanager
def small_blas(k: int, n: int):
    """One BLAS thread for small matrices: multithreading them gains nothing and collapses when
    the cores are shared (a 384 x 384 product went from 0.8 ms to 15 ms with two busy cores).
    Uses threadpoolctl when installed (the ``quant`` extra), else leaves BLAS alone."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    ctx = threadpool_limits(limits=1, user_api="blas") if threadpool_limits and k * n <= (1 << 20) else nullcontext()
    with ctx:
        yield


def int4_dequant(w: np.ndarray, block_size: int, symmetric: bool, bits: int = 4) -> np.ndarray:
    """W [K, N] quantized in blocks of ``block_size`` along K with ONNX Runtime's RTN kernel (the
    one MatMulNBitsQuantizer calls) and dequantized again. ``bits`` 4 (or 2: the stress test)."""
    from onnxruntime.capi import _pybind_state as C

    if bits not in (2, 4):
        raise ValueError(f"bits must be 2 or 4, not {bits}")
    per_byte = 8 // bits
    w = np.ascontiguousarray(w, dtype=np.float32)
    k, n = w.shape
    kb = (k + block_size - 1) // block_size
    pad = kb * block_size - k
    wp = np.pad(w, ((0, pad), (0, 0))) if pad else w
    packed = np.zeros((n, kb, block_size // per_byte), np.uint8)
    zp = np.zeros((n, (kb + per_byte - 1) // per_byte), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    kernel = C.quantize_matmul_4bits if bits == 4 else C.quantize_matmul_2bits
    kernel(packed, wp, scales, zp, block_size, n, kb * block_size, symmetric)
    mask = (1 << bits) - 1

    def unpack(a: np.ndarray) -> np.ndarray:  # low bits first
        return np.stack([(a >> (bits * i)) & mask for i in range(per_byte)], axis=-1)

    q = unpack(packed).reshape(n, kb, block_size).astype(np.float32)
    if symmetric:
        z = np.full((n, kb), float(1 << (bits - 1)), np.float32)
    else:
        z = unpack(zp).reshape(n, -1)[:, :kb].astype(np.float32)
    deq = (q - z[:, :, None]) * scales[:, :, None]
    return deq.reshape(n, kb * block_size)[:, :k].T.copy()


def gram(x: np.ndarray) -> np.ndarray:
    """G = X^T X / rows: the output error of any weight change D is mean|X D|^2 = tr(D^T G D) / N."""
    x = x.astype(np.float32)
    return (x.T @ x / max(x.shape[0], 1)).astype(np.float32)


def _out_err(g: np.ndarray, d: np.ndarray) -> float:
    """Mean squared output error mean_{rows, n} ((X D)[r, n])^2 from the Gram matrix."""
    d = d.astype(np.float32)
    return float(np.sum((g @ d) * d, dtype=np.float64) / max(d.shape[1], 1))


@dataclass
class ScaleSearch:
    scale: np.ndarray  # [K] input-channel scale s (weights are multiplied by s, the input divided)
    alpha: float
    error_rtn: float  # output MSE of plain RTN on the calibration rows
    error: float  # output MSE with the chosen scale


def awq_scale(x: np.ndarray, x_mean: np.ndarray, weights: list[np.ndarray], block_size: int, symmetric: bool,
              grid=AWQ_GRID, bits: int = 4) -> ScaleSearch:
    """Activation-aware scale search (AWQ): s = mean|x|^alpha (normalised), alpha picked on a grid
    to minimise the group's output error ``sum_i |(x / s) Q(s W_i) - x W_i|^2`` on calibration rows.
    alpha = 0 is plain RTN, so the result is never worse than RTN on these rows.

    (x / s) Q(s W) - x W = (x / s)(Q(s W) - s W), so the error is tr(D^T G_s D) with the Gram
    matrix G_s of x / s: one K x K matrix per group instead of the rows."""
    g = gram(x)
    base = np.maximum(x_mean.astype(np.float64), 1e-8)
    best: ScaleSearch | None = None
    rtn = None
    for alpha in grid:
        s = base ** alpha
        s = s / np.sqrt(s.max() * s.min())
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        inv = 1.0 / s
        gs = g * inv[:, None] * inv[None, :]
        err = 0.0
        for w in weights:
            ws = w * s[:, None]
            err += _out_err(gs, int4_dequant(ws, block_size, symmetric, bits) - ws)
        if alpha == 0:
            rtn = err
        if best is None or err < best.error:
            best = ScaleSearch(s, float(alpha), 0.0, err)
    best.error_rtn = rtn if rtn is not None else best.error
    return best


def awq_clip(x: np.ndarray, w: np.ndarray, block_size: int, symmetric: bool, grid=CLIP_GRID,
             bits: int = 4) -> tuple[np.ndarray, float]:
    """Per (K-block, output column) clipping of the weight range (AWQ's auto-clip): each block's
    [min, max] is shrunk by the ratio in ``grid`` that minimises that block's contribution to the
    output error on calibration rows (through the block's Gram matrix). Returns the clipped
    weights (RTN of them reproduces the clipped range exactly) and the mean chosen ratio."""
    k, n = w.shape
    if k % block_size:
        return w, 1.0
    nb = k // block_size
    xb = x.astype(np.float32).reshape(-1, nb, block_size).transpose(1, 0, 2)  # [nb, rows, bs]
    gb = np.matmul(xb.transpose(0, 2, 1), xb) / max(x.shape[0], 1)  # [nb, bs, bs]
    wb = w.astype(np.float32).reshape(nb, block_size, n)
    lo, hi = wb.min(axis=1, keepdims=True), wb.max(axis=1, keepdims=True)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    best_err = np.full((nb, n), np.inf, np.float64)
    best_w = wb.copy()
    best_r = np.ones((nb, n), np.float32)
    for r in grid:
        if symmetric:
            wc = np.clip(wb, -amax * r, amax * r)
        else:
            wc = np.clip(wb, lo * r, hi * r)
        q = int4_dequant(wc.reshape(k, n), block_size, symmetric, bits).reshape(nb, block_size, n)
        d = wb - q
        err = np.sum(np.matmul(gb, d) * d, axis=1, dtype=np.float64)  # [nb, n]: each block's own output error
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_w = np.where(better[:, None, :], wc, best_w)
        best_r = np.where(better, r, best_r)
    return best_w.reshape(k, n), float(best_r.mean())


def smoothquant_scale(x_absmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant: s_j = max|x_j|^alpha / max_i max|W_i[j, :]|^(1 - alpha), moving activation
    outliers into the weights (per-channel weight quantization absorbs them)."""
    w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.maximum(x_absmax, 1e-5) ** alpha / np.maximum(w_absmax, 1e-5) ** (1.0 - alpha)
    return np.clip(s, 1e-2, 1e2).astype(np.float32)


def fp8_e4m3(x: np.ndarray):
    """Round to FP8 E4M3FN (saturating at +-448) as an ml_dtypes array."""
    import ml_dtypes

    return np.clip(x, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
