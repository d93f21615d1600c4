"""The PyTorch reference backend: the oracle every other backend is compared against."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ...config import ModelConfig
from ...models.layers import select_rows
from .base import StepOutput, check_forward_args


_UNTIMED = nullcontext()


class TorchCache(list):
    """Per-layer (key, value) tensors [B, Hkv, capacity, D]."""

    def __init__(self, layers: list, capacity: int):
        super().__init__(layers)
        self.capacity = capacity


class TorchBackend:
    timer = None  # dllm_trt.profiling.StepTimer while profiling: times the cache writes

    def __init__(self, model: torch.nn.Module, config: ModelConfig, device: str = "cpu"):
        self.model, self.config, self.device = model, config, device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_pretrained(cls, model_dir: str, dtype: str = "fp32", device: str = "cpu") -> "TorchBackend":
        from ...models import load_model

        model, config = load_model(model_dir, dtype=dtype, device=device)
        return cls(model, config, device)

    def allocate_cache(self, batch: int, capacity: int) -> "TorchCache":
        c = self.config
        shape = (batch, c.num_kv_heads, capacity, c.head_dim)
        return TorchCache([(torch.zeros(shape, dtype=self.dtype, device=self.device),
                            torch.zeros(shape, dtype=self.dtype, device=self.device)) for _ in range(c.num_layers)],
                          capacity)

    @torch.inference_mode()
    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_bias: np.ndarray, cache: Any,
                past_len: int, write_mask: np.ndarray | None, logits_index: np.ndarray,
                want_logits: bool = False) -> StepOutput:
        check_forward_args(input_ids, attention_bias, cache, past_len, write_mask, logits_index)
        dev = self.device
        ids = torch.from_numpy(input_ids).to(dev)
        pos = torch.from_numpy(position_ids).to(dev)
        bias = torch.from_numpy(attention_bias).to(dev)
        index = torch.from_numpy(np.ascontiguousarray(logits_index, dtype=np.int64)).to(dev)
        past = list(cache) if past_len > 0 else None
        logits, presents = self.model(ids, pos, bias, past, index)
        sel = select_rows(logits, self.config.mask_token_id)
        if write_mask is not None and write_mask.any():
            timed = self.timer is not None
            if timed:
                self.synchronize()  # the model's kernels end here, not inside the cache section
            with self.timer.section("cache_write") if timed else _UNTIMED:
                bi, li = np.nonzero(write_mask)
                b_t, l_t = torch.from_numpy(bi).to(dev), torch.from_numpy(li).to(dev)
                p_t = pos[b_t, l_t]
                for (ck, cv), (k, v) in zip(cache, presents):
                    ck[b_t, :, p_t] = k[b_t, :, l_t]
                    cv[b_t, :, p_t] = v[b_t, :, l_t]
                if timed:
                    self.synchronize()
        return StepOutput(sel.tokens.cpu().numpy(), sel.confidence.cpu().numpy(),
                          logits.float().cpu().numpy() if want_logits else None,
                          sel.margin.cpu().numpy(), sel.neg_entropy.cpu().numpy())

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA only); the profiler calls it around timed regions."""
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize(self.device)
