"""``dllm-trt export --ops ort``: the ONNX Runtime graph with fused contrib ops (export/fused.py).

The graph must be a drop-in for the standard one: validated against the unfused PyTorch model, the
same contract, and token-for-token the PyTorch reference loop on ORT CPU for every family, with and
without grouped-query attention (which keeps the standard attention inside the fused graph).
"""
from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest
import torch

from dllm_trt.errors import DllmError
from dllm_trt.export.fused import MS_DOMAIN, PLACEHOLDER_DOMAIN, FusedModel
from dllm_trt.export.onnx_export import export_onnx
from dllm_trt.runtime import generate
from dllm_trt.runtime.backends.ort_backend import OrtBackend
from dllm_trt.runtime.backends.torch_backend import TorchBackend
from dllm_trt.runtime.settings import CACHE_MODES

from test_export_ort import PROMPTS, assert_same_run, gen_config, make_checkpoint, sharpened_model

VARIANTS = ("llada", "dream", "block_diffusion", "sdar")
ATTENTION = {"llada": "bidirectional", "dream": "bidirectional", "block_diffusion": "block_causal",
             "sdar": "block_causal"}


def kv_override(variant: str, kv_heads: int) -> dict:
    return {"n_kv_heads" if variant == "llada" else "num_key_value_heads": kv_heads}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """Factory ``fused(variant, kv_heads) -> (checkpoint, artefact, report, model)`` (cached): a random tiny
    model with a sharpened head, exported with --ops ort (validated)."""
    made: dict = {}

    def make(variant: str, kv_heads: int):
        if (variant, kv_heads) not in made:
            root = tmp_path_factory.mktemp(f"fused-{variant}-{kv_heads}")
            make_checkpoint(root / "ckpt", variant, seed=1, **kv_override(variant, kv_heads))
            model = sharpened_model(variant, 1, **kv_override(variant, kv_heads))
            report = export_onnx(root / "ckpt", root / "artefact", ops="ort", progress=False, log=lambda s: None)
            made[variant, kv_heads] = (root / "ckpt", root / "artefact", report, model)
        return made[variant, kv_heads]

    return make


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_graph_validates_and_holds_the_fused_ops(fused, variant, kv_heads):
    """Validated against the unfused PyTorch model; per layer two SkipSimplifiedLayerNormalization (the
    first layer's attention norm has no residual to add; the final norm takes the last one), two
    RotaryEmbedding, one QuickGelu, one packed q|k|v and one packed gate|up MatMul, and
    MultiHeadAttention exactly when K/V heads equal query heads; no placeholder left."""
    _, art, report, model = fused(variant, kv_heads)
    assert report["validation"]["status"] == "passed" and report["ops"] == "ort"
    meta = json.loads((art / "dllm_config.json").read_text())
    assert meta["onnx"]["ops"] == "ort"
    g = onnx.load(str(art / "model.onnx"))
    ms = Counter(n.op_type for n in g.graph.node if n.domain == MS_DOMAIN)
    n = model.config.num_layers
    assert ms["SkipSimplifiedLayerNormalization"] == 2 * n
    assert ms["RotaryEmbedding"] == 2 * n and ms["QuickGelu"] == n
    assert ms["MultiHeadAttention"] == (n if kv_heads == model.config.num_heads else 0)
    assert not any(n_.domain == PLACEHOLDER_DOMAIN for n_ in g.graph.node)
    assert {o.domain for o in g.opset_import} >= {"", MS_DOMAIN} and PLACEHOLDER_DOMAIN not in {
        o.domain for o in g.opset_import}
    c = model.config
    mats = [tuple(t.dims) for t in g.graph.initializer if len(t.dims) == 2]
    qkv = (c.num_heads + 2 * kv_heads) * c.head_dim
    assert sum(qkv in m and c.hidden_size in m for m in mats) >= n  # packed q|k|v, one per layer
    assert sum(2 * c.intermediate_size in m and c.hidden_size in m for m in mats) >= n  # packed gate|up


def step_inputs(c) -> tuple:
    """(ids, position_ids, bias, past, rows) of a cached step: batch 2, 6 query rows at positions 5..10 over a
    random past of 5 with a stale (masked) column, 3 rows read."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, c.vocab_size, (2, 6), generator=g)
    pos = torch.arange(5, 11).expand(2, 6)
    bias = torch.zeros(2, 1, 6, 11)
    bias[0, ..., 2] = -1e9
    past = [(torch.randn(2, c.num_kv_heads, 5, c.head_dim, generator=g),
             torch.randn(2, c.num_kv_heads, 5, c.head_dim, generator=g)) for _ in range(c.num_layers)]
    return ids, pos, bias, past, torch.tensor([[1, 3, 5], [0, 2, 4]])


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_model_computes_what_the_model_computes(fused, variant):
    """FusedModel's own forward (the reference math of each fused op) equals the model's, with a past."""
    _, _, _, model = fused(variant, 4)
    ids, pos, bias, past, rows = step_inputs(model.config)
    with torch.no_grad():
        ref, ref_kv = model(ids, pos, bias, past, rows)
        got, got_kv = FusedModel(model)(ids, pos, bias, past, rows)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for (k0, v0), (k1, v1) in zip(ref_kv, got_kv):
        torch.testing.assert_close(k1, k0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_graph_decodes_the_reference_tokens(fused, variant, kv_heads):
    """Token for token (and step for step) the PyTorch reference loop on ORT CPU, host and bound paths,
    in every cache mode, for a one-token-per-step rule, a parallel rule and seeded sampling."""
    ckpt, art, _, _ = fused(variant, kv_heads)
    ref_backend = TorchBackend.from_pretrained(str(ckpt))
    paths = {"host": OrtBackend.from_pretrained(art), "bound": OrtBackend.from_pretrained(art, io_binding=True)}
    for cache in CACHE_MODES[ATTENTION[variant]]:
        for g in (gen_config("low_confidence", cache), gen_config("threshold", cache),
                  gen_config("low_confidence", cache, temperature=1.5, top_k=8, seed=7)):
            ref = generate(ref_backend, PROMPTS, g)
            for name, be in paths.items():
                assert_same_run(ref, generate(be, PROMPTS, g), f"{variant}/kv{kv_heads}/{g.strategy}/{cache}/{name}")


def test_tensorrt_build_and_quantize_refuse_the_fused_graph(fused, tmp_path):
    """com.microsoft ops are ONNX Runtime's: the engine builder and the quantizer say which export to use."""
    from dllm_trt.calibration.quantizer import quantize
    from dllm_trt.engine.builder import build_engine

    _, art, _, _ = fused("llada", 4)
    with pytest.raises(DllmError, match="--ops standard"):
        build_engine(art, tmp_path / "engine", backend="trt-rtx", progress=False, log=lambda s: None)
    with pytest.raises(DllmError, match="--ops standard"):
        quantize(art, tmp_path / "q", method="int4-rtn", progress=False, log=lambda s: None)


def test_unknown_ops_is_a_clear_error(tmp_path):
    with pytest.raises(DllmError, match="unknown --ops"):
        export_onnx(tmp_path / "nothing", tmp_path / "out", ops="tensorrt", progress=False)
