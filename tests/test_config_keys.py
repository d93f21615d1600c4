"""Every config.json key an upstream forward reads is implemented (logits equal upstream's) or refused by name.

The logits fixtures come from the upstream modeling code (tools/config_key_fixtures.py); the refusals
name the key so a checkpoint is never decoded with a silently different forward pass.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dllm_trt.config import ModelConfig
from dllm_trt.errors import DllmError
from dllm_trt.models import load_model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "config_keys"
UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"
sys.path.insert(0, str(ROOT / "tools"))
from config_key_fixtures import CASES, INPUT_IDS  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_upstream(case):
    """Our model, loaded from the case folder, computes upstream's logits (fp32, bf16-valued weights)."""
    model, config = load_model(FIXTURES / case)
    ids = torch.tensor(INPUT_IDS)
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        ours, _ = model(ids, pos, torch.zeros(1, 1, ids.shape[1], ids.shape[1]))
    ref = load_file(str(FIXTURES / f"{case}.upstream_logits.safetensors"))["logits"][..., : config.vocab_size]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # the case's keys matter: the model built with the keys left at their defaults differs
    raw = json.loads((FIXTURES / case / "config.json").read_text())
    base = json.loads((UPSTREAM / CASES[case][0] / "config.json").read_text())
    plain = ModelConfig.from_dict({**raw, **{k: base.get(k) for k in CASES[case][1]}})
    assert plain != config


def test_case_configs_round_trip():
    for case in CASES:
        cfg = ModelConfig.from_pretrained(FIXTURES / case)
        assert ModelConfig.from_dict(cfg.to_hf_dict()) == cfg, case


LLADA_REFUSED = [("block_type", "sequential"), ("block_group_size", 2), ("alibi", True), ("rope", False),
                 ("attention_layer_norm", True), ("clip_qkv", 8.0), ("activation_type", "swiglu"),
                 ("layer_norm_type", "layernorm_x")]
QWEN_REFUSED = [("rope_scaling", {"rope_type": "yarn", "factor": 4.0}), ("use_sliding_window", True),
                ("num_experts", 8), ("hidden_act", "gelu_new"), ("layer_types", ["sliding_attention"] * 2)]


@pytest.mark.parametrize("key,value", LLADA_REFUSED)
def test_llada_unsupported_keys_are_refused_by_name(key, value):
    raw = json.loads((UPSTREAM / "llada" / "config.json").read_text())
    ModelConfig.from_dict(raw)
    with pytest.raises(DllmError, match=key):
        ModelConfig.from_dict(dict(raw, **{key: value}))


@pytest.mark.parametrize("family", ["dream", "fast_dllm_v2", "sdar"])
@pytest.mark.parametrize("key,value", QWEN_REFUSED)
def test_qwen_unsupported_keys_are_refused_by_name(family, key, value):
    raw = json.loads((UPSTREAM / family / "config.json").read_text())
    raw.setdefault("mask_token_id", 259)  # Fast-dLLM v2 names it in tokenizer_config.json only
    ModelConfig.from_dict(raw)
    with pytest.raises(DllmError, match=key):
        ModelConfig.from_dict(dict(raw, **{key: value}))


def test_inconsistent_keys_are_refused_by_name():
    llada = json.loads((UPSTREAM / "llada" / "config.json").read_text())
    with pytest.raises(DllmError, match="multi_query_attention"):
        ModelConfig.from_dict(dict(llada, multi_query_attention=True))  # n_kv_heads 2 != 1
    with pytest.raises(DllmError, match="embedding_size"):
        ModelConfig.from_dict(dict(llada, embedding_size=100))
    dream = json.loads((UPSTREAM / "dream" / "config.json").read_text())
    with pytest.raises(DllmError, match="head_dim"):  # Dream's attention uses hidden / heads
        ModelConfig.from_dict(dict(dream, head_dim=32))


def test_fixture_configs_read_as_upstream_defaults():
    """The shipped (LLaDA-8B-like) keys give the plain forward: RMSNorm with weight, SiLU, no extra bias;
    LLaDA's rope_full_precision is on."""
    for family in ("llada", "dream", "fast_dllm_v2", "sdar"):
        c = ModelConfig.from_pretrained(UPSTREAM / family)
        assert (c.activation, c.norm_type, c.norm_affine, c.norm_bias, c.linear_bias, c.embedding_scale,
                c.logits_scale) == ("silu", "rms", True, False, False, 1.0, 1.0), family
        assert c.rope_fp32 == (family == "llada")


PUBLISHED = [Path("/work/upstream-src/Fast_dLLM_v2_7B/config.json"),
             Path("/work/upstream-src/SDAR/training/model/SDAR-4B-Chat/config.json")]


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.parent.name)
def test_published_configs_load(path):
    """The checkpoints' own config.json (read from the upstream sources when present) loads."""
    if not path.is_file():
        pytest.skip(f"{path} not present")
    c = ModelConfig.from_dict(json.loads(path.read_text()), source=str(path))
    assert c.activation == "silu" and c.family == "block_diffusion"


def test_rope_full_precision_rotates_in_fp32():
    """bf16 LLaDA with rope_full_precision (the published value) is closer to fp32 than without."""
    from dllm_trt.models import build_model

    raw = json.loads((FIXTURES / "llada_gelu" / "config.json").read_text())
    torch.manual_seed(0)
    ref = build_model(ModelConfig.from_dict(dict(raw, rope_theta=10000.0))).eval()
    ids = torch.randint(0, 256, (1, 64))
    pos = torch.arange(64)[None] + 900
    bias = torch.zeros(1, 1, 64, 64)
    with torch.no_grad():
        exact, _ = ref(ids, pos, bias)
        errs = []
        for fp32 in (True, False):
            m = build_model(ModelConfig.from_dict(dict(raw, rope_theta=10000.0, rope_full_precision=fp32)))
            m.load_state_dict(ref.state_dict())
            out, _ = m.to(torch.bfloat16)(ids, pos, bias)
            errs.append((out.float() - exact).abs().mean().item())
    assert errs[0] <= errs[1]
