"""``dllm-trt export --ops ort-cuda``: the ONNX Runtime graph with the project's CUDA ops (CacheAttention,
SiluMul, SelectRows; dllm_trt/plugins/ort_cuda_ops.cu), on CPU.

The kernels run only on a GPU (tests/test_gpu_cuda_ops.py, run on the device); here: the reference math
the trace records equals the model, the exported graph holds exactly the custom ops in place of the
small ones and keeps the contract, and every refusal says what to do.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch

from dllm_trt.contract import CUDA_OPS_DOMAIN, CUDA_OPS_ENV, CUDA_OPS_LIBRARY, cuda_ops_library, input_names, output_names
from dllm_trt.errors import DllmError
from dllm_trt.export.fused import MS_DOMAIN, FusedModel
from dllm_trt.export.onnx_export import export_onnx
from dllm_trt.plugins import ort_cuda_build
from dllm_trt.runtime.backends.ort_backend import OrtBackend

from test_export_ort import make_checkpoint, sharpened_model
from test_fused_graph import step_inputs

REPO = Path(__file__).resolve().parents[1]
TINY = {n: REPO / "samples" / "checkpoints" / n for n in ("llada-tiny", "dream-tiny", "bd-tiny")}


def head_dim_32(variant: str, kv_heads: int) -> dict:
    """config.json overrides: 2 query heads of 32 (the kernel's smallest head dim), ``kv_heads`` K/V heads."""
    if variant == "llada":
        return {"d_model": 64, "n_heads": 2, "n_kv_heads": kv_heads}
    return {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": kv_heads}


@pytest.fixture(scope="module")
def cuda_exports(tmp_path_factory):
    """The three bundled tiny checkpoints exported with --ops ort-cuda in bf16 (no validation: CPU)."""
    root = tmp_path_factory.mktemp("ort-cuda")
    return {name: (export_onnx(ckpt, root / name, dtype="bf16", ops="ort-cuda", validate=False, progress=False,
                               log=lambda s: None), root / name) for name, ckpt in TINY.items()}


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["mha", "gqa"])
@pytest.mark.parametrize("variant", ["llada", "dream", "block_diffusion"])
def test_cuda_ops_reference_math_equals_the_model(variant, kv_heads):
    """FusedModel(cuda_ops=True) - whose CacheAttention / SiluMul forwards are what the trace records - gives the
    model's logits and presents, with a past, a stale (masked) past column and grouped-query heads."""
    model = sharpened_model(variant, 1, **head_dim_32(variant, kv_heads))
    ids, pos, bias, past, rows = step_inputs(model.config)
    bias[1, 0, :3, 8:] = -1e9  # some current columns masked too
    fused = FusedModel(model, cuda_ops=True)
    with torch.no_grad():
        ref, ref_kv = model(ids, pos, bias, past, rows)
        got, got_kv = fused(ids, pos, bias, past, rows)
        # no past (the graph always has one, P may be 0): the placeholder gets an empty one
        ref0, _ = model(ids, pos, bias[..., 5:], None, rows)
        got0, _ = fused(ids, pos, bias[..., 5:], None, rows)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got0, ref0, rtol=1e-5, atol=1e-5)
    for (k0, v0), (k1, v1) in zip(ref_kv, got_kv):
        torch.testing.assert_close(k1, k0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["mha", "gqa"])
@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_cuda_ops_reference_math_is_the_model_in_bf16(variant, kv_heads):
    """In bf16 too, bit for bit: CacheAttention's RoPE follows the model's (LLaDA's rope_full_precision rotates
    in fp32 and rounds once, from fp32 tables; Dream rotates in bf16 with tables of bf16 values), which the
    --ops ort graph's RotaryEmbedding (bf16 tables and math) does not for LLaDA."""
    model = sharpened_model(variant, 1, **head_dim_32(variant, kv_heads)).to(torch.bfloat16)
    assert model.config.rope_fp32 == (variant == "llada")
    ids, pos, bias, past, rows = step_inputs(model.config)
    past = [(k.bfloat16(), v.bfloat16()) for k, v in past]
    with torch.no_grad():
        ref, ref_kv = model(ids, pos, bias, past, rows)
        got, got_kv = FusedModel(model, cuda_ops=True)(ids, pos, bias, past, rows)
    assert torch.equal(got, ref)
    for (k0, v0), (k1, v1) in zip(ref_kv, got_kv):
        assert torch.equal(k1, k0) and torch.equal(v1, v0)


@pytest.mark.parametrize("name", list(TINY))
def test_cuda_ops_graph_holds_the_custom_ops_and_the_contract(cuda_exports, name):
    """Per layer: one CacheAttention (no Split, RotaryEmbedding, MultiHeadAttention, Transpose or Softmax left),
    one SiluMul (no QuickGelu), both in the dllm_trt.cuda domain with its opset; the contract's inputs and
    outputs unchanged; dllm_config.json says ops ort-cuda; the checker accepts it."""
    report, art = cuda_exports[name]
    meta = json.loads((art / "dllm_config.json").read_text())
    assert report["ops"] == meta["onnx"]["ops"] == "ort-cuda"
    g = onnx.load(str(art / "model.onnx"))
    onnx.checker.check_model(g)
    n = meta["model_config"]["num_layers"]
    ops = Counter((x.domain, x.op_type) for x in g.graph.node)
    assert ops[CUDA_OPS_DOMAIN, "CacheAttention"] == n and ops[CUDA_OPS_DOMAIN, "SiluMul"] == n
    assert ops[MS_DOMAIN, "SkipSimplifiedLayerNormalization"] == 2 * n
    for gone in ("Split", "Transpose", "Softmax", "ArgMax", "ReduceSum", "Exp", "Log"):
        assert ops["", gone] == 0, gone
    # the row selection: one SelectRows over the fp32 logits (the graph's logits output), its four outputs the
    # contract's row statistics, and its mask token the model's
    select = [x for x in g.graph.node if x.op_type == "SelectRows"]
    assert len(select) == 1 and select[0].domain == CUDA_OPS_DOMAIN
    assert list(select[0].output) == ["tokens", "confidence", "margin", "neg_entropy"]
    assert select[0].input[0] in {x.output[0] for x in g.graph.node if x.op_type == "Cast"} | {"logits"}
    cast = [x for x in g.graph.node if select[0].input[0] in x.output]
    assert cast and (cast[0].op_type == "Cast" or "logits" in cast[0].output)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in select[0].attribute}["mask_token_id"] == \
        meta["model_config"]["mask_token_id"]
    for gone in ("RotaryEmbedding", "MultiHeadAttention", "QuickGelu"):
        assert ops[MS_DOMAIN, gone] == 0, gone
    assert {o.domain: o.version for o in g.opset_import}[CUDA_OPS_DOMAIN] == 1
    attn = [x for x in g.graph.node if x.op_type == "CacheAttention"]
    c = meta["model_config"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attn[0].attribute}
    assert attrs["num_heads"] == c["num_heads"] and attrs["kv_num_heads"] == c["num_kv_heads"]
    assert attrs["scale"] == pytest.approx(c["head_dim"] ** -0.5)
    assert [list(x.output)[1:3] for x in attn] == [[f"present.{i}.key", f"present.{i}.value"] for i in range(n)]
    assert all(len(x.output) == 4 for x in attn)  # the split keys' workspace, read by nobody
    consumed = {i for x in g.graph.node for i in x.input} | {o.name for o in g.graph.output}
    assert not {x.output[3] for x in attn} & consumed
    assert [i.name for i in g.graph.input] == input_names(n)
    assert [o.name for o in g.graph.output] == output_names(n)


def test_qk_norm_models_keep_their_attention_and_get_silu_mul(tmp_path):
    """SDAR (Qwen3: q_norm/k_norm between the projection and RoPE) keeps the --ops ort attention; its MLP still
    gets SiluMul."""
    ckpt = make_checkpoint(tmp_path / "ckpt", "sdar", seed=1, head_dim=32)
    export_onnx(ckpt, tmp_path / "art", dtype="bf16", ops="ort-cuda", validate=False, progress=False,
                log=lambda s: None)
    g = onnx.load(str(tmp_path / "art" / "model.onnx"))
    ops = Counter(x.op_type for x in g.graph.node)
    assert ops["CacheAttention"] == 0 and ops["RotaryEmbedding"] > 0 and ops["SiluMul"] == 2


def test_refusals_say_what_to_do(tmp_path, cuda_exports, monkeypatch):
    # fp32 / fp16: the kernels are bf16
    with pytest.raises(DllmError, match="--dtype bf16"):
        export_onnx(TINY["llada-tiny"], tmp_path / "fp32", ops="ort-cuda", validate=False, progress=False)
    assert not (tmp_path / "fp32").exists()
    # a head dim the kernel has no instance for (8)
    ckpt = make_checkpoint(tmp_path / "hd8", "llada")
    with pytest.raises(DllmError, match="head dim 8"):
        export_onnx(ckpt, tmp_path / "hd8-art", dtype="bf16", ops="ort-cuda", validate=False, progress=False)
    # the runtime: CPU provider, then a missing library
    _, art = cuda_exports["llada-tiny"]
    with pytest.raises(DllmError, match="provider='cuda'"):
        OrtBackend.from_pretrained(art)
    monkeypatch.delenv(CUDA_OPS_ENV, raising=False)
    with pytest.raises(DllmError, match="python -m dllm_trt.plugins.ort_cuda_build --out"):
        cuda_ops_library(art)
    monkeypatch.setenv(CUDA_OPS_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(DllmError, match="nowhere.so, which does not exist"):
        cuda_ops_library(art)
    lib = tmp_path / CUDA_OPS_LIBRARY
    lib.write_bytes(b"")
    monkeypatch.setenv(CUDA_OPS_ENV, str(lib))
    assert cuda_ops_library(art) == lib
    # engines and quantization take the standard graph
    from dllm_trt.calibration.quantizer import quantize
    from dllm_trt.engine.builder import build_engine

    with pytest.raises(DllmError, match="--ops standard"):
        build_engine(art, tmp_path / "engine")
    with pytest.raises(DllmError, match="--ops standard"):
        quantize(art, tmp_path / "q", method="int4-rtn")


def test_build_tool_refuses_without_headers_or_old_arch(tmp_path, monkeypatch):
    monkeypatch.delenv(ort_cuda_build.INCLUDE_ENV, raising=False)
    with pytest.raises(DllmError, match="--ort-include DIR"):
        ort_cuda_build.find_headers(str(tmp_path))
    assert ort_cuda_build.main(["--out", str(tmp_path / "x.so"), "--ort-include", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())
    (tmp_path / ort_cuda_build.HEADER).write_text("")
    assert ort_cuda_build.find_headers(str(tmp_path)) == tmp_path
    if shutil.which("nvcc"):
        with pytest.raises(DllmError, match="sm_80 or newer"):
            ort_cuda_build.build(tmp_path / "x.so", str(tmp_path), "sm_75")


def ort_headers() -> str | None:
    for d in [os.environ.get(ort_cuda_build.INCLUDE_ENV), *ort_cuda_build.SEARCH]:
        if d and (Path(d) / ort_cuda_build.HEADER).is_file():
            return d
    return None


@pytest.mark.skipif(not shutil.which("nvcc") or ort_headers() is None,
                    reason="building the CUDA ops needs nvcc and ONNX Runtime's C/C++ headers (set ORT_INCLUDE_DIR; "
                           "Debian: libonnxruntime-dev); pip's onnxruntime has no headers")
def test_library_builds_and_onnx_runtime_registers_it(tmp_path):
    """nvcc builds it (no GPU needed) and ONNX Runtime loads it and registers the dllm_trt.cuda domain."""
    import onnxruntime as ort

    lib = ort_cuda_build.build(tmp_path / CUDA_OPS_LIBRARY, ort_headers(), "sm_90", log=lambda s: None)
    assert lib.is_file() and not list(tmp_path.glob(".*building"))
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(lib))
