"""Refuse an fp16 export whose activations leave fp16's range.

Models trained in bf16 (LLaDA-8B, Qwen2-based ones) can carry residual-stream values far above
fp16's 65504 ("massive activations"). An fp16 graph of such a model overflows to Inf/NaN, and a
comparison of two overflowing fp16 runs proves nothing. So before tracing, the fp16 model runs one
probe forward (prompt-like token ids, with a masked answer window) and every module output is
checked: the first that is not finite, or comes within a factor of 4 of the limit, stops the
export with a one-line error naming the module and the way out (bf16 or fp32).
"""
from __future__ import annotations

import torch

from ..errors import DllmError

FP16_MAX = 65504.0
HEADROOM = 4.0  # refuse maxima above FP16_MAX / HEADROOM: other inputs go higher than one probe


def probe_inputs(config, length: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids spread over the vocabulary, the second half masked (as the decode loop feeds them)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, length), generator=g)
    ids[:, length // 2:] = config.mask_token_id
    pos = torch.arange(length)[None]
    bias = torch.zeros(1, 1, length, length, dtype=torch.float32)
    return ids, pos, bias


def check_fp16_range(model: torch.nn.Module, config, source: str) -> float:
    """Largest |activation| of one fp16 probe forward; DllmError when it overflows or nearly does."""
    seen: list[tuple[str, float]] = []

    def hook(name):
        def record(module, inputs, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                finite = bool(torch.isfinite(t).all())
                seen.append((name, float(t.abs().max()) if finite else float("inf")))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            ids, pos, bias = probe_inputs(config)
            model(ids.to(next(model.parameters()).device), pos, bias)
    finally:
        for h in handles:
            h.remove()
    limit = FP16_MAX / HEADROOM
    for name, peak in seen:
        if peak > limit:
            what = "overflows fp16 (Inf/NaN)" if peak == float("inf") else f"reaches {peak:.4g}"
            raise DllmError(f"{source}: in fp16 the output of {name} {what}; fp16 holds at most {FP16_MAX:g} "
                            f"(this model was likely trained in bf16): export with --dtype bf16 or --dtype fp32")
    return max((p for _, p in seen), default=0.0)
