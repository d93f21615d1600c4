"""The model's fp16 numerics against an independent float64 reference, at realistic sizes and
magnitudes (hidden 1024, residual values of a trained model's scale, padded batches).

Tiny models with small activations hide precision bugs: dropping RMSNorm's float32 upcast or
computing the softmax in fp16 left every other test green. These fail on both.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dllm_trt.models.layers import RMSNorm, attend  # noqa: E402

HIDDEN = 1024
MASKED = -1e9  # the runtime's masked-position bias (runtime/layout.py)


def rmsnorm64(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return w.astype(np.float64) * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def attention64(q, k, v, bias) -> np.ndarray:
    """softmax(q k^T / sqrt(d) + bias) v in float64, grouped-query heads expanded; fully masked rows -> uniform."""
    q, k, v, bias = (np.asarray(t, dtype=np.float64) for t in (q, k, v, bias))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]) + bias
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(-1, keepdims=True)) @ v


def residual_stream(shape, seed=0) -> torch.Tensor:
    """Activations of a trained LLM's residual stream: N(0, 20) with a few massive channels (~3000)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 20
    x[..., 7] = 3000.0
    x[..., 300] = -1500.0
    return x


def test_rmsnorm_fp16_matches_float64_with_massive_activations():
    x = residual_stream((2, 64, HIDDEN)).half()  # the reference sees the same fp16 input
    norm = RMSNorm(HIDDEN, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(HIDDEN, generator=torch.Generator().manual_seed(1)) + 0.5)
        out = norm.half()(x).double().numpy()
    ref = rmsnorm64(x.double().numpy(), norm.weight.detach().double().numpy(), 1e-5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_low_precision_matches_float64_on_a_padded_batch(dtype):
    """Scores of trained-model scale over 512 keys, two sequences, the second left-padded: its padding
    rows see no key at all (every bias -1e9), and they must not turn into NaN."""
    g = torch.Generator().manual_seed(0)
    b, h, hkv, length, d = 2, 8, 2, 512, 128
    q = (torch.randn(b, h, length, d, generator=g) * 3).to(dtype)
    k = (torch.randn(b, hkv, length, d, generator=g) * 3).to(dtype)
    v = torch.randn(b, hkv, length, d, generator=g).to(dtype)
    bias = torch.zeros(b, 1, length, length)
    pad = 100
    bias[1, :, :, :pad] = MASKED  # nobody attends to the padding
    bias[1, :, :pad, :] = MASKED  # padding rows attend to nothing
    out = attend(q, k, v, None, None, bias).double().numpy()
    ref = attention64(q.double().numpy(), k.double().numpy(), v.double().numpy(), bias.numpy())
    assert np.isfinite(out).all(), "NaN/Inf in the attention output (fully masked padding rows included)"
    tol = 1e-2 if dtype == torch.float16 else 0.15  # bf16 probabilities carry 8 bits
    np.testing.assert_allclose(out[0], ref[0], atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(out[1, :, pad:], ref[1, :, pad:], atol=tol * np.abs(ref).max())


def test_fp16_model_forward_matches_float64_at_hidden_1024():
    """One LLaDA block at hidden 1024 in fp16 vs the same weights in float64 (torch's double path, an
    independent computation of every op), with trained-scale embeddings and a padded batch."""
    from dllm_trt.config import ModelConfig
    from dllm_trt.models import build_model

    cfg = ModelConfig.from_dict({"model_type": "llada", "d_model": HIDDEN, "n_heads": 8, "n_kv_heads": 8, "n_layers": 1,
                                 "mlp_hidden_size": 2816, "vocab_size": 512, "mask_token_id": 1, "eos_token_id": 0,
                                 "max_sequence_length": 512})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.model.transformer.wte.weight.copy_(residual_stream((512, HIDDEN), seed=3) / 4)
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] != 512:
                p.normal_(0, 0.02)
    ids = torch.randint(0, 512, (2, 256), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(256).repeat(2, 1)
    bias = torch.zeros(2, 1, 256, 256)
    bias[1, :, :, :40] = MASKED
    bias[1, :, :40, :] = MASKED
    with torch.no_grad():
        ref = model.double()(ids, pos, bias.double())[0][:, 40:].numpy()
        out = model.half()(ids, pos, bias)[0][:, 40:].double().numpy()
    assert np.isfinite(out).all()
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 2e-2, err
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.97


@pytest.mark.parametrize("theta", [10000.0, 500000.0])  # Qwen2 / LLaDA-8B
def test_rope_matches_float64_reference(theta):
    """Half-split RoPE: pair (i, i + D/2) rotated by position * theta^(-2i/D), at positions up to 4095."""
    from dllm_trt.models.layers import apply_rope, rope_cos_sin

    d = 128
    pos = torch.tensor([[0, 1, 17, 1000, 4095]])
    x = torch.randn(1, 2, 5, d, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_cos_sin(pos, d, theta, torch.float32)
    out = apply_rope(x, cos, sin).numpy().astype(np.float64)

    freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos.numpy()[0][:, None].astype(np.float64) * freq  # [L, D/2]
    z = x.numpy().astype(np.float64)
    a, b = z[..., : d // 2], z[..., d // 2:]
    ref = np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], axis=-1)
    np.testing.assert_allclose(out, ref, atol=2e-3)  # float32 angles at position 4095
