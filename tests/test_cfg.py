"""LLaDA's unsupervised classifier-free guidance (``cfg_scale`` of its ``generate``): the sequence and a
copy with the prompt masked in one forward of batch 2B, ranked and picked from
``un + (cfg_scale + 1) * (cond - un)``. Checked against that algorithm written out here in torch
(LLaDA's generate loop: per-block transfer counts, top-k of the guided confidences), and across backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig, generate

PROMPTS = [[5, 9, 12, 7, 30], [11, 4, 8, 20, 21, 22, 3, 17, 6]]


def guided_reference(model, prompt: list[int], gen_length: int, block_length: int, steps: int, cfg: float,
                     mask_id: int) -> list[int]:
    """LLaDA generate's loop with cfg_scale, temperature 0, low-confidence remasking (mask token excluded,
    as dllm-trt always does)."""
    x = torch.full((1, len(prompt) + gen_length), mask_id)
    x[0, : len(prompt)] = torch.tensor(prompt)
    prompt_index = x != mask_id
    per_block = steps // (gen_length // block_length)
    for nb in range(gen_length // block_length):
        lo, hi = len(prompt) + nb * block_length, len(prompt) + (nb + 1) * block_length
        n = int((x[0, lo:hi] == mask_id).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for k in counts:
            masked = x == mask_id
            un = x.clone()
            un[prompt_index] = mask_id
            length = x.shape[1]
            with torch.no_grad():
                logits, _ = model(torch.cat([x, un]), torch.arange(length).expand(2, length),
                                  torch.zeros(2, 1, length, length))
            cond, uncond = logits[:1].float(), logits[1:].float()
            guided = uncond + (cfg + 1) * (cond - uncond)
            guided[..., mask_id] = -float("inf")
            x0 = guided.argmax(-1)
            p = torch.gather(torch.softmax(guided.double(), -1), -1, x0[..., None])[..., 0]
            p[:, hi:] = -np.inf
            conf = torch.where(masked, p, torch.tensor(-np.inf, dtype=torch.float64))
            idx = torch.topk(conf[0], k).indices
            x[0, idx] = x0[0, idx]
    return x[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def llada(tiny_backend):
    return tiny_backend("llada", seed=4, sharpen=3.0, kv_heads=4)


def test_guidance_is_llada_generates_and_changes_tokens(llada):
    g = GenerationConfig(gen_length=16, block_length=8, steps=16, cache="none", stop_at_eos=False)
    plain = generate(llada, PROMPTS, g)
    guided = generate(llada, PROMPTS, GenerationConfig(**{**g.__dict__, "cfg_scale": 2.0}))
    assert guided.nfe == plain.nfe  # one model call per step, as upstream (a batch of 2B)
    for p, got in zip(PROMPTS, guided.tokens):
        assert got == guided_reference(llada.model, p, 16, 8, 16, 2.0, llada.config.mask_token_id)
    assert guided.tokens != plain.tokens  # the guidance matters on this model


def test_guidance_on_onnx_runtime_equals_torch(llada, tmp_path):
    from dllm_trt.export.onnx_export import export_onnx
    from dllm_trt.models import save_model
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    save_model(llada.model, tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "onnx", progress=False, log=lambda s: None)
    g = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="none", strategy="threshold", threshold=0.5,
                         cfg_scale=1.0, stop_at_eos=False)
    ref = generate(llada, PROMPTS, g)
    for io_binding in (False, True):
        assert generate(OrtBackend.from_pretrained(tmp_path / "onnx", io_binding=io_binding), PROMPTS, g).tokens == \
            ref.tokens


@pytest.mark.parametrize("bad", [dict(cache="dual"), dict(strategy="entropy"), dict(cfg_scale=-1.0),
                                 dict(cfg_scale=float("nan"))])
def test_guidance_settings_that_do_not_apply_are_refused(llada, bad):
    g = GenerationConfig(gen_length=16, block_length=8, **{"cache": "none", "cfg_scale": 1.0, **bad})
    with pytest.raises(DllmError, match="cfg_scale"):
        generate(llada, PROMPTS, g)


def test_the_batching_engine_refuses_guidance(llada):
    from dllm_trt.runtime.engine_loop import BatchEngine

    with pytest.raises(DllmError, match="cfg_scale"):
        BatchEngine(llada, GenerationConfig(gen_length=16, block_length=8, cache="none", cfg_scale=1.0))
    with pytest.raises(DllmError, match="FreeDave"):
        BatchEngine(llada, GenerationConfig(gen_length=16, block_length=8, cache="none", strategy="freedave"))
