"""Calibration batches and quantization (``dllm-trt calibrate`` / ``dllm-trt quantize``) on the trained
tiny checkpoints, on ONNX Runtime CPU.

Each checkpoint is exported once per session. The acceptance check: INT4-AWQ with masked-diffusion
calibration stays within 2 points of fp32 exact match on 200 held-out prompts of every checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CKPTS = REPO / "samples" / "checkpoints"
NAMES = ("llada-tiny", "dream-tiny", "bd-tiny")

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from dllm_trt.calibration.data import (build_calibration, load_calibration, parse_ratios,  # noqa: E402
                                       save_calibration)
from dllm_trt.errors import DllmError  # noqa: E402

# The bundled checkpoints are part of the repository: a lost one fails here (and in test_fixtures.py).
assert all((CKPTS / n / "model.safetensors").is_file() for n in NAMES), f"bundled checkpoints missing in {CKPTS}"
N_EVAL = 200
EVAL_SEED = 12345  # the held-out prompts of samples/evaluate_tiny.py (the README's table)


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """fp32 exports of the three tiny checkpoints (once per session)."""
    from dllm_trt.export import export_onnx

    root = tmp_path_factory.mktemp("quant-exports")
    out = {}
    for name in NAMES:
        export_onnx(CKPTS / name, root / name, validate=False, progress=False, log=lambda s: None)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def calib_files(exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-calib")
    files = {}
    for name, d in exports.items():
        for kind in ("masked", "plain"):
            c = build_calibration(d, "builtin", 32 * (4 if kind == "plain" else 1), plain=kind == "plain")
            files[name, kind] = root / f"{name}-{kind}.npz"
            save_calibration(c, files[name, kind])
    return files


def settings_of(name: str) -> dict:
    from dllm_trt.runtime import GenerationConfig

    raw = json.loads((CKPTS / name / "dllm_generation.json").read_text())
    return {k: v for k, v in raw.items() if k in GenerationConfig.__dataclass_fields__}


def exact_match(folder: Path, name: str, n: int = N_EVAL) -> float:
    """Exact match on the held-out task prompts (the package's own pieces; samples/ is not imported)."""
    from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.tasks import exact_match as score, make_examples

    backend, tok = OrtBackend.from_pretrained(folder), TextTokenizer(folder)
    exs = make_examples(n, EVAL_SEED)
    preds = []
    for i in range(0, n, 100):
        r = generate(backend, [tok.encode(e.prompt) for e in exs[i: i + 100]], GenerationConfig(**settings_of(name)))
        preds += [tok.decode(t) for t in r.tokens]
    return score(preds, exs)


@pytest.fixture(scope="session")
def fp32_accuracy(exports):
    return {name: exact_match(d, name) for name, d in exports.items()}


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def const_weight_matmuls(path: Path) -> int:
    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    return sum(1 for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits)


# ---------------------------------------------------------------------- calibration batches
@pytest.mark.parametrize("name", NAMES)
def test_masked_calibration_layout(exports, name, tmp_path):
    d = exports[name]
    ratios = (0.25, 0.5, 0.75, 1.0)
    calib = build_calibration(d, "builtin", 24, ratios, seed=3)
    path = tmp_path / "c.npz"
    save_calibration(calib, path)
    with np.load(path, allow_pickle=False) as z:  # no pickle anywhere in the file
        assert "input_ids" in z.files and "meta" in z.files
    c = load_calibration(path)
    meta = json.loads((d / "dllm_config.json").read_text())
    cfg = meta["model_config"]
    mask, bs = cfg["mask_token_id"], cfg["block_size"]
    a = c.arrays
    assert len(c) == 24 * len(ratios) and sorted(set(a["mask_ratio"].tolist())) == list(ratios)
    for name_in in meta["inputs"]:  # complete graph feeds: every graph input (the row index per batch), empty past
        assert name_in["name"] in a or name_in["name"] == "logits_index"
    assert a["past_key_values.0.key"].shape[2] == 0
    gen = meta["generation_defaults"]
    for i in range(len(c)):
        n_valid = int(a["valid"][i].sum())
        ids, masked = a["input_ids"][i, :n_valid], a["masked"][i, :n_valid]
        p = int(a["prompt_len"][i])
        s, e = a["current"][i]
        r = float(a["mask_ratio"][i])
        assert ((ids == mask) == masked).all() and not masked[:p].any()  # the prompt is never masked
        if bs:  # block diffusion: block-aligned, ends with the current block, block-causal bias
            assert s % bs == 0 and e == s + bs == n_valid
            assert not masked[:s].any()
            maskable = [j for j in range(max(s, p), e) if j % bs]
            assert not masked[[j for j in range(s, e) if j % bs == 0]].any()
            bias = a["attention_bias"][i, 0, :n_valid, :n_valid]
            q, k = np.meshgrid(np.arange(n_valid), np.arange(n_valid), indexing="ij")
            assert ((bias == 0) == (k // bs <= q // bs)).all()
        else:  # semi-AR: earlier blocks clean, current block partly masked, later blocks fully masked
            assert n_valid == p + gen["gen_length"] and e - s == gen["block_length"]
            assert not masked[:s].any() and masked[e:].all()
            maskable = list(range(s, e))
            assert (a["attention_bias"][i, 0, :n_valid, :n_valid] == 0).all()
        want = min(len(maskable), max(1, round(r * len(maskable))))
        assert int(masked[maskable].sum()) == want, (i, r, masked.astype(int))
    # feeds run through the graph as they are
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = next(c.feeds(8))
    assert set(feeds) == {i.name for i in sess.get_inputs()}
    b, t = feeds["input_ids"].shape
    np.testing.assert_array_equal(feeds["logits_index"], np.tile(np.arange(t), (b, 1)))  # every row's logits
    assert sess.run(["logits"], feeds)[0].shape[:2] == feeds["input_ids"].shape


def test_plain_calibration_has_no_masks(exports):
    c = build_calibration(exports["llada-tiny"], "builtin", 16, plain=True)
    assert c.kind == "plain" and len(c) == 16
    mask = c.meta["mask_token_id"]
    assert not c.arrays["masked"].any()
    assert not (c.arrays["input_ids"][c.arrays["valid"]] == mask).any()


def test_calibration_from_jsonl(exports, tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text('{"prompt": "add:1+2=", "answer": "3"}\n\n{"text": "rev:abc=cba"}\n')
    c = build_calibration(exports["dream-tiny"], f, None, (0.5, 1.0))
    assert c.meta["samples"] == 2 and len(c) == 4
    for line, key in (('{"prompt": ["a", "b"]}', "prompt"), ('{"prompt": null}', "prompt"),
                      ('{"prompt": "x", "answer": 3}', "answer"), ('{"text": {"t": 1}}', "text")):
        f.write_text(line + "\n")  # str() would have calibrated on "['a', 'b']" / "None"
        with pytest.raises(DllmError, match=f'data.jsonl:1: "{key}" must be a string'):
            build_calibration(exports["dream-tiny"], f, None, (0.5, 1.0))


# ---------------------------------------------------------------------- INT4
def test_int4_dequant_matches_matmulnbits(tmp_path):
    """The searches' simulation of INT4/INT2 is exactly what MatMulNBits computes."""
    from onnx import TensorProto, helper, numpy_helper

    from dllm_trt.calibration.algorithms import int4_dequant
    from dllm_trt.calibration.quantizer import _int4

    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 24)).astype(np.float32)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    for bits, sym in ((4, False), (4, True), (2, False)):
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 24])],
                              [numpy_helper.from_array(w, "w")])
        m = _int4(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ["mm"], 32, sym, "nbits", None, bits)
        y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, x @ int4_dequant(w, 32, sym, bits), rtol=1e-4, atol=1e-4)


def test_scale_folding_is_exact(exports):
    """X W = (X / s)(diag(s) W) with 1/s folded into the norm, the up projection or a Mul: same logits."""
    from dllm_trt.calibration.graph import GraphIndex, apply_input_scale, groups, weight_matmuls

    for name in ("llada-tiny", "dream-tiny"):
        model = onnx.load(str(exports[name] / "model.onnx"))
        calib = build_calibration(exports[name], "builtin", 4)
        feeds = next(calib.feeds(16))
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
        index = GraphIndex(model)
        grps = groups(index, weight_matmuls(index))
        assert {g.fold for g in grps} == {"norm", "matmul", "insert"}
        rng = np.random.default_rng(1)
        for g in grps:
            apply_input_scale(index, g, np.exp(rng.uniform(-1, 1, g.k)).astype(np.float32))
        onnx.checker.check_model(model)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-3 * np.abs(ref).max())


def test_int4_rtn_matmulnbits_and_qdq(exports, tmp_path):
    from dllm_trt.calibration.quantizer import quantize

    src = exports["llada-tiny"]
    n_mm = const_weight_matmuls(src / "model.onnx")
    report = quantize(src, tmp_path / "rtn", "int4-rtn", block_size=32, progress=False)
    out = tmp_path / "rtn" / "model.onnx"
    onnx.checker.check_model(str(out))
    assert op_counts(out).get("MatMulNBits") == n_mm == report["quantized"]["nodes"]
    assert const_weight_matmuls(out) == 0
    assert report["size_bytes"]["after"] < 0.3 * report["size_bytes"]["before"]
    assert out.stat().st_size < 0.3 * (src / "model.onnx").stat().st_size
    rec = json.loads((tmp_path / "rtn" / "dllm_config.json").read_text())["quantization"]
    assert rec["method"] == "int4-rtn" and rec["block_size"] == 32 and rec["calibration"]["kind"] == "none"
    assert rec["validation"]["top1_agreement_masked"] > 0.99
    assert {p.name for p in (tmp_path / "rtn").iterdir()} >= {"tokenizer.json", "dllm_config.json"}
    assert not (tmp_path / "rtn" / "cache_read.onnx").exists()  # contract 2 has one graph
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert exact_match(tmp_path / "rtn", "llada-tiny", 50) >= 0.96

    # The TensorRT form: blockwise DequantizeLinear (INT4, block_size attribute, opset 21) + MatMul.
    quantize(src, tmp_path / "qdq", "int4-rtn", fmt="qdq", progress=False)
    model = onnx.load(str(tmp_path / "qdq" / "model.onnx"))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == n_mm
    assert all(next(a.i for a in n.attribute if a.name == "block_size") == 32 for n in dq)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits[dq[0].input[0]].data_type == onnx.TensorProto.INT4 and len(dq[0].input) == 2  # symmetric
    assert exact_match(tmp_path / "qdq", "llada-tiny", 50) >= 0.96

    # --keep-lm-head: everything but the LM head (the MatMul producing the logits' vocabulary).
    report = quantize(src, tmp_path / "keep", "int4-rtn", keep_lm_head=True, progress=False, validate=False)
    assert report["quantized"]["nodes"] == n_mm - 1 and len(report["quantized"]["excluded"]) == 1
    assert const_weight_matmuls(tmp_path / "keep" / "model.onnx") == 1


@pytest.mark.parametrize("name", NAMES)
def test_int4_awq_masked_within_two_points_of_fp32(exports, calib_files, fp32_accuracy, name, tmp_path):
    from dllm_trt.calibration.quantizer import quantize

    report = quantize(exports[name], tmp_path / "awq", "int4-awq", calib=calib_files[name, "masked"], progress=False)
    out = tmp_path / "awq" / "model.onnx"
    onnx.checker.check_model(str(out))
    assert op_counts(out).get("MatMulNBits") == report["quantized"]["nodes"] > 0
    awq = report["awq"]
    # alpha = 0 (plain RTN) is in the search grid, so "<=" holds by construction; the search must find better
    assert awq["output_mse_awq_scale"] < awq["output_mse_rtn"] * 0.99, awq
    assert awq["mean_alpha"] > 0, awq
    assert report["calibration"]["kind"] == "masked"
    acc = exact_match(tmp_path / "awq", name)
    assert acc >= fp32_accuracy[name] - 0.02, (name, acc, fp32_accuracy[name])


# ---------------------------------------------------------------------- INT8 / FP8
def test_int8_qdq_runs_on_ort_cpu(exports, calib_files, tmp_path):
    from dllm_trt.calibration.quantizer import quantize

    name = "dream-tiny"
    report = quantize(exports[name], tmp_path / "int8", "int8", calib=calib_files[name, "masked"], progress=False)
    out = tmp_path / "int8" / "model.onnx"
    onnx.checker.check_model(str(out))
    ops = op_counts(out)
    groups = report["smoothquant"]["groups"]  # distinct MatMul inputs: one Q/DQ pair each
    assert ops["QuantizeLinear"] == groups > 0
    assert ops["DequantizeLinear"] == groups + report["quantized"]["nodes"]  # + one per weight
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in w_dq)
    assert all(next(a.i for a in n.attribute if a.name == "axis") == 1 for n in w_dq)  # per output channel
    assert exact_match(tmp_path / "int8", name, 100) >= 0.95


def test_fp8_qdq_graph(exports, calib_files, tmp_path):
    from dllm_trt.calibration.quantizer import quantize

    name = "bd-tiny"
    report = quantize(exports[name], tmp_path / "fp8", "fp8", calib=calib_files[name, "plain"], progress=False)
    model = onnx.load(str(tmp_path / "fp8" / "model.onnx"))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    fp8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert len(fp8) == report["quantized"]["nodes"] + 1  # weights + the shared zero point
    assert report["calibration"]["kind"] == "plain"
    assert report["validation"]["top1_agreement_masked"] > 0.99  # ORT CPU runs it (simulated FP8)


def test_fp16_export(exports, tmp_path):
    """fp16 exports: INT4 keeps fp16 scales (MatMulNBits T = float16); FP8 scales follow the graph's type."""
    from dllm_trt.calibration.quantizer import quantize
    from dllm_trt.export import export_onnx

    src = tmp_path / "fp16"
    export_onnx(CKPTS / "dream-tiny", src, dtype="fp16", validate=False, progress=False, log=lambda s: None)
    calib = build_calibration(src, "builtin", 8)
    for method in ("int4-awq", "fp8"):
        report = quantize(src, tmp_path / method, method, calib=calib, progress=False)
        onnx.checker.check_model(str(tmp_path / method / "model.onnx"))
        assert report["validation"]["status"] == "ran" and report["validation"]["top1_agreement_masked"] > 0.98
    assert exact_match(tmp_path / "int4-awq", "dream-tiny", 50) >= 0.96


# ---------------------------------------------------------------------- errors and the CLI
def test_clear_errors(exports, calib_files, tmp_path):
    from dllm_trt.calibration.quantizer import quantize

    src = exports["llada-tiny"]
    with pytest.raises(DllmError, match="unknown quantization method 'int3'"):
        quantize(src, tmp_path / "x", "int3")
    with pytest.raises(DllmError, match="needs calibration data.*dllm-trt calibrate"):
        quantize(src, tmp_path / "x", "int4-awq")
    with pytest.raises(DllmError, match="does not exist.*dllm-trt calibrate"):
        quantize(src, tmp_path / "x", "int4-awq", calib=tmp_path / "missing.npz")
    with pytest.raises(DllmError, match="another model"):
        quantize(src, tmp_path / "x", "int8", calib=calib_files["bd-tiny", "masked"])
    with pytest.raises(DllmError, match="power of two"):
        quantize(src, tmp_path / "x", "int4-rtn", block_size=48)
    with pytest.raises(DllmError, match="not a dllm-trt export.*export it first"):
        quantize(CKPTS / "llada-tiny", tmp_path / "x", "int4-rtn")
    with pytest.raises(DllmError, match="replace the source folder"):
        quantize(src, src, "int4-rtn")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(DllmError, match="not written by `dllm-trt calibrate`"):
        quantize(src, tmp_path / "x", "int4-awq", calib=bad)
    with pytest.raises(DllmError, match="mask-ratios"):
        parse_ratios("0.5,1.5")
    with pytest.raises(DllmError, match="must end in .npz"):
        save_calibration(build_calibration(src, "builtin", 2), tmp_path / "c.bin")
    quantize(src, tmp_path / "q", "int4-rtn", progress=False, validate=False)
    with pytest.raises(DllmError, match="already quantized"):
        quantize(tmp_path / "q", tmp_path / "qq", "int4-rtn")
    assert not (tmp_path / "x").exists()


def test_cli_calibrate_and_quantize(exports, tmp_path, capsys):
    from dllm_trt.cli import main

    src = str(exports["dream-tiny"])
    calib = tmp_path / "c.npz"
    assert main(["calibrate", "--model", src, "--samples", "8", "--mask-ratios", "0.5,1.0", "--out", str(calib)]) == 0
    assert "16 rows" in capsys.readouterr().out
    assert main(["quantize", "--onnx", src, "--out", str(tmp_path / "q"), "--method", "int4-awq", "--calib", str(calib),
                 "--block-size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "int4-awq" and report["block_size"] == 64 and report["calibration"]["rows"] == 16
    assert main(["quantize", "--onnx", src, "--out", str(tmp_path / "z"), "--method", "int8"]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["quantize", "--onnx", src, "--out", str(tmp_path / "z"), "--method", "nf4"]) == 2
    assert "unknown quantization method" in capsys.readouterr().err
