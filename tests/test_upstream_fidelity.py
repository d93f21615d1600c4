"""Token-for-token equality with the upstream decode code, on the fixtures of tools/upstream_fixtures.py.

Every case of ``tests/fixtures/upstream/<family>/cases.json`` is one upstream call (function,
keyword arguments, prompts) on the tiny checkpoint next to it, with the tokens and the number of
model forwards upstream produced. Each case is mapped to a GenerationConfig and decoded by the
shared loop on the torch backend; the tokens must be equal and the NFE no larger than upstream's.
A subset also runs on ONNX Runtime CPU through an export.

Cases the loop cannot produce yet are still run and asserted, as ``xfail(strict=True)`` with the
precise reason (docs/upstream_semantics.md explains each): the moment one starts passing, CI
fails until its mark is removed. No transformers, no upstream code here: only the JSON.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO
from dllm_trt.runtime import GenerationConfig, generate

FIXTURES = REPO / "tests" / "fixtures" / "upstream"
FAMILIES = ("llada", "dream", "fast_dllm_v2", "sdar")


@dataclass
class Mapped:
    """One fixture case as our loop's settings, plus how to compare."""

    gen: GenerationConfig | None  # None: no GenerationConfig expresses the upstream call
    mask_id: int
    stop_ids: tuple[int, ...]  # upstream's stop tokens (empty: upstream never stops)
    gap: str | None  # known difference (xfail reason), None when the loop must match today


# The cases the loop does not reproduce yet (torch backend, this commit); see docs/upstream_semantics.md.
FAILING_TODAY: set[str] = {
    *(f"llada-{n}" for n in "005 006 012 013 019 020 026 027 033 034 040 041".split()),
    *(f"dream-{n}" for n in "000 001 002 003 004 005 006 007 008 009 010 011 013 014 015 016 017 018 019 020 021 022 023 024 025 026 027 028 029 030 031 032 033 034".split()),
    *(f"fast_dllm_v2-{n}" for n in "000 001 002 003 004 005 006 007 008 009 010 011 012 013 014 015 016 017 018 019 020 021 022 023 024 025 026 027 028 029 030 032 033 034 035 036 037 038 039 040 041 042 043 044 045 046 047 048 049 050 051 052 053 054 055 056 058 059 061 062 063 064 065 066 067 068 069 070 071 072 073 074 075 076 077 078 080 081 082 083".split()),
    *(f"sdar-{n}" for n in "000 001 002 003 004 005 006 007 008 009 010 011 016 017 018 019 020 021 022 023 032 033 034 035 036 037 038 039 040 041 042 043 044 045 046 047".split()),
}


def load_cases(family: str) -> list[dict]:
    path = FIXTURES / family / "cases.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run tools/upstream_fixtures.py (see its docstring)", pytrace=False)
    return json.loads(path.read_text())["cases"]


# ----------------------------------------------------------------------------- settings mapping
def map_llada(c: dict) -> Mapped:
    kw = c["kwargs"]
    cache = {"generate": "none", "generate_with_prefix_cache": "prefix", "generate_with_dual_cache": "dual"}[c["function"]]
    common = dict(gen_length=kw["gen_length"], block_length=kw["block_length"], steps=kw["steps"], cache=cache,
                  temperature=0.0, stop_at_eos=False)
    if kw.get("threshold") is not None:
        gen = GenerationConfig(strategy="threshold", threshold=kw["threshold"], **common)
    elif kw.get("factor") is not None:
        gen = GenerationConfig(strategy="factor", factor=kw["factor"], **common)
        return Mapped(gen, kw["mask_id"], (), "Fast-dLLM factor rule (get_transfer_index_dynamic): when only the least "
                      "confident of the n masked tokens fails 1 - factor/(i+1), upstream still unmasks all n "
                      "(top_i == n-1 -> n); dllm-trt unmasks n-1")
    else:
        gen = GenerationConfig(strategy="low_confidence", **common)
    return Mapped(gen, kw["mask_id"], (), None)


def map_dream(c: dict) -> Mapped:
    kw = c["kwargs"]
    mask = kw["mask_token_id"]
    if c["function"] == "diffusion_generate":
        gap = (f"Dream alg={kw['alg']!r}: " + {
            "entropy": "confidence = negative entropy of the full softmax; the count per step follows Dream's "
                       "timestep schedule linspace(1, eps, steps+1) (int(n*(1-s/t))), not LLaDA's even split",
            "maskgit_plus": "top-1 probability, but the count per step follows Dream's timestep schedule over the "
                            "whole generation (one block), not LLaDA's even split",
            "topk_margin": "confidence = top1 - top2 probability margin, with Dream's timestep schedule",
            "confidence_threshold": "Fast-dLLM's confidence_threshold: a fixed budget of n/steps tokens per step, "
                                    "below-threshold picks carried to the next step, steps extended at the end",
        }[kw["alg"]])
        gen = GenerationConfig(gen_length=kw["max_new_tokens"], block_length=kw["max_new_tokens"],
                               steps=kw["steps"], strategy="low_confidence", cache="none", stop_at_eos=False)
        return Mapped(gen, mask, (), gap)
    # generation_utils_block.py: prefix / dual cache, semi-AR blocks
    cache = "dual" if kw["dual_cache"] else "prefix"
    gap = ("Fast-dLLM Dream block variant: the block's first (uncached) forward fills only the block's first "
           "position; then " + ("Fast-dLLM threshold over the block" if kw["alg"] == "confidence_threshold"
                                else "negative-entropy confidence with Dream's per-block timestep schedule "
                                     "(steps_per_block - 1 cached steps)"))
    strategy = "threshold" if kw["alg"] == "confidence_threshold" else "low_confidence"
    gen = GenerationConfig(gen_length=kw["max_new_tokens"], block_length=kw["block_length"], steps=kw["steps"],
                           strategy=strategy, threshold=kw.get("threshold", 0.9), cache=cache, stop_at_eos=False)
    return Mapped(gen, mask, (), gap)


def map_fast_dllm_v2(c: dict) -> Mapped:
    kw = c["kwargs"]
    stop = kw["stop_token"]
    stops = (stop,) if stop >= 0 else ()
    cache = "sub_block" if kw["use_block_cache"] else "block"
    gen_length = max(1, max(len(g) for g in c["generated"]))
    gen = GenerationConfig(gen_length=gen_length, strategy="threshold", threshold=kw["threshold"], cache=cache,
                           sub_block_length=kw["small_block_size"], temperature=0.0, stop_at_eos=bool(stops))
    gaps = ["output length: upstream decodes max_new_tokens // bd_size blocks (the first only up to its block "
            "boundary) and returns the token its last commit forward predicts; dllm-trt decodes whole blocks until "
            "gen_length tokens, so it may run a further block (more forwards) for the same tokens"]
    if kw["use_block_cache"] and kw["small_block_size"] < kw["block_size"]:
        gaps.append("sub-block cache: upstream re-forwards the whole block at every step while the sub-block's "
                    "first position is still masked (in any row), and sub-block steps attend to the block cache "
                    "of the last such refresh with their own entries overwritten in place")
    if c["function"] == "batch_sample":
        gaps.append("batch_sample: a row stops as soon as a step unmasks its stop token (checked per step, not "
                    "per block); finished rows are dropped from the batch and padded")
        if kw["use_block_cache"]:
            gaps.append("dllm-trt's sub_block cache with prompts of different lengths fails (attention_bias "
                        "shape mismatch in decode.py)")
    return Mapped(gen, kw["mask_id"], stops, "; ".join(gaps) or None)


def map_sdar(c: dict) -> Mapped:
    kw = c["kwargs"]
    stops = tuple(kw["stopping_criteria_idx"] or ())
    strategy, steps, block = kw["remasking_strategy"], kw["denoising_steps"], kw["block_length"]
    gen_length = len(c["generated"][0])
    one_per_step = steps == block  # get_num_transfer_tokens gives 1 token per step
    if strategy == "low_confidence_static" and one_per_step:
        gen, gap = dict(strategy="low_confidence"), None
    elif strategy == "low_confidence_dynamic" and one_per_step:
        gen, gap = dict(strategy="threshold", threshold=kw["confidence_threshold"]), None
    else:
        gen = dict(strategy="low_confidence")
        gap = {"sequential": "SDAR sequential remasking: the next num_transfer_tokens[step] positions after the "
                             "first mask, left to right",
               "low_confidence_static": "SDAR low_confidence_static: top-k with k = num_transfer_tokens[step] of "
                                        "block_length / denoising_steps per step",
               "low_confidence_dynamic": "SDAR low_confidence_dynamic: all above the threshold if at least "
                                         "num_transfer_tokens[step] are, else the top num_transfer_tokens[step]"}[strategy]
    g = GenerationConfig(gen_length=gen_length, cache="block", sub_block_length=block, temperature=0.0,
                         stop_at_eos=bool(stops), **gen)
    return Mapped(g, kw["mask_id"], stops, gap)


MAPPERS = {"llada": map_llada, "dream": map_dream, "fast_dllm_v2": map_fast_dllm_v2, "sdar": map_sdar}


# ----------------------------------------------------------------------------- expectations
def expected_tokens(c: dict, stops: tuple[int, ...]) -> list[list[int]]:
    """Upstream's generated tokens, cut before the first stop token (dllm-trt returns them without it)."""
    out = []
    for row in c["generated"]:
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:cut])
    return out


def check(backend, family: str, case: dict) -> None:
    m = MAPPERS[family](case)
    config = backend.config
    # The case's own mask id and stop tokens (Fast-dLLM v2's config.json has no mask_token_id; SDAR stops
    # on generation_config.json's list): the comparison is of the loop, not of the defaults.
    backend.config = dataclasses.replace(config, mask_token_id=m.mask_id,
                                         eos_token_ids=m.stop_ids or config.eos_token_ids)
    try:
        res = generate(backend, case["prompts"], m.gen)
    finally:
        backend.config = config
    want = expected_tokens(case, m.stop_ids)
    got = [t[: len(w)] if not m.stop_ids else t for t, w in zip(res.tokens, want)]
    assert got == want, f"{case['id']}: tokens differ from upstream"
    assert res.nfe <= case["nfe"], f"{case['id']}: NFE {res.nfe} > upstream's {case['nfe']}"


def params(family: str):
    """Cases in FAILING_TODAY are xfail(strict) with their family rule's reason; the others must pass.
    A rule's difference is not exercised by every case (e.g. a sub-block refresh that happens to give the
    same tokens), so the marks are by case, and every marked case must have a rule that explains it."""
    out = []
    for c in load_cases(family):
        gap = MAPPERS[family](c).gap
        marked = c["id"] in FAILING_TODAY
        if marked and not gap:
            raise AssertionError(f"{c['id']} is listed as failing but no known difference explains it")
        marks = [pytest.mark.xfail(strict=True, reason=gap)] if marked else []
        out.append(pytest.param(c, id=c["id"], marks=marks))
    return out


@pytest.fixture(scope="module")
def torch_backend():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    made = {}

    def get(family: str):
        if family not in made:
            made[family] = TorchBackend.from_pretrained(str(FIXTURES / family))
        return made[family]

    return get


@pytest.mark.parametrize("case", params("llada"))
def test_llada_matches_upstream(case, torch_backend):
    check(torch_backend("llada"), "llada", case)


@pytest.mark.parametrize("case", params("dream"))
def test_dream_matches_upstream(case, torch_backend):
    check(torch_backend("dream"), "dream", case)


@pytest.mark.parametrize("case", params("fast_dllm_v2"))
def test_fast_dllm_v2_matches_upstream(case, torch_backend):
    check(torch_backend("fast_dllm_v2"), "fast_dllm_v2", case)


@pytest.mark.parametrize("case", params("sdar"))
def test_sdar_matches_upstream(case, torch_backend):
    check(torch_backend("sdar"), "sdar", case)


def test_every_fixture_case_is_mapped_and_covered():
    """Each family has cases for every upstream function the harness runs, and every case maps."""
    want = {"llada": {"generate", "generate_with_prefix_cache", "generate_with_dual_cache"},
            "dream": {"diffusion_generate", "diffusion_generate_block"},
            "fast_dllm_v2": {"generate", "batch_sample"},
            "sdar": {"block_diffusion_generate"}}
    for family in FAMILIES:
        cases = load_cases(family)
        assert {c["function"] for c in cases} == want[family], family
        assert all(c["nfe"] > 0 for c in cases), f"{family}: a case without forwards"
        for c in cases:
            assert MAPPERS[family](c).gen is not None


# ----------------------------------------------------------------------------- ONNX Runtime subset
ORT_SUBSET = {"llada": ("llada-000", "llada-024", "llada-036"),  # none / prefix threshold / dual schedule
              "fast_dllm_v2": ("fast_dllm_v2-031", "fast_dllm_v2-060"),  # sub-block generate / batch_sample
              "sdar": ("sdar-012", "sdar-024")}


@pytest.fixture(scope="module")
def ort_backend(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from dllm_trt.export.onnx_export import export_onnx
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    made = {}

    def get(family: str):
        if family not in made:
            out = tmp_path_factory.mktemp("ort") / family
            export_onnx(str(FIXTURES / family), str(out), progress=False, log=lambda s: None)
            made[family] = OrtBackend.from_pretrained(str(out), provider="cpu")
        return made[family]

    return get


@pytest.mark.parametrize("family,case_id", [(f, i) for f, ids in ORT_SUBSET.items() for i in ids])
def test_ort_cpu_matches_upstream(family, case_id, ort_backend):
    case = next(c for c in load_cases(family) if c["id"] == case_id)
    assert case_id not in FAILING_TODAY, "the ORT subset holds cases the loop matches today"
    check(ort_backend(family), family, case)


# ----------------------------------------------------------------------------- upstream config.json keys
def test_fixture_configs_read_with_upstream_meaning():
    """SDAR: Qwen3 layout with head_dim and block_size from config.json; Fast-dLLM v2: no mask_token_id in
    config.json, so the tokenizer's mask token is used."""
    from dllm_trt.config import ModelConfig

    sdar = ModelConfig.from_pretrained(FIXTURES / "sdar")
    assert (sdar.qk_norm, sdar.qkv_bias, sdar.head_dim, sdar.block_size) == (True, False, 32, 4)
    assert sdar.head_dim != sdar.hidden_size // sdar.num_heads
    v2 = ModelConfig.from_pretrained(FIXTURES / "fast_dllm_v2")
    raw = json.loads((FIXTURES / "fast_dllm_v2" / "config.json").read_text())
    assert "mask_token_id" not in raw and v2.mask_token_id == 259  # <|MASK|> of tokenizer_config.json
    assert (v2.qk_norm, v2.qkv_bias, v2.block_size) == (False, True, 8)


@pytest.mark.parametrize("key,value", [("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
                                       ("use_sliding_window", True), ("num_experts", 128)])
def test_unsupported_config_keys_are_refused_by_name(key, value):
    from dllm_trt.config import ModelConfig
    from dllm_trt.errors import DllmError

    raw = json.loads((FIXTURES / "sdar" / "config.json").read_text())
    ModelConfig.from_dict(raw)  # as shipped: fine
    with pytest.raises(DllmError, match=key):
        ModelConfig.from_dict(dict(raw, **{key: value}))
