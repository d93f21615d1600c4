"""``dllm-trt build`` with TensorRT-RTX on the CPU (AOT, no GPU), the engine check, the cache and the errors.

TensorRT-RTX comes from the ``trt-rtx`` extra (``pip install -e ".[trt-rtx]"``, part of ``all``);
without it these tests skip with that reason. The trained tiny checkpoints are exported to fp16
(validated against PyTorch) because TensorRT-RTX is strongly typed: an fp16 engine needs an fp16
graph. Each build takes one to two seconds here.
"""
from __future__ import annotations

import importlib
import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from dllm_trt.cli import main as cli_main
from dllm_trt.contract import config_digest
from dllm_trt.engine import api as api_mod
from dllm_trt.engine import builder
from dllm_trt.engine.check import check_engine, parse_rtx_header
from dllm_trt.errors import DllmError

from conftest import rewrite_artifact_config

REPO = Path(__file__).resolve().parents[1]
CKPTS = REPO / "samples" / "checkpoints"
FAMILIES = ("llada-tiny", "dream-tiny", "bd-tiny")
TARGETS = "8.9,12.0"  # Ada and Blackwell RTX GPUs

pytestmark = pytest.mark.skipif(not api_mod.is_installed("trt-rtx"),
                                reason="TensorRT-RTX is not installed: pip install -e \".[trt-rtx]\"")


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def onnx16(tmp_path_factory):
    """fp16 exports (validated) of the three trained tiny checkpoints."""
    pytest.importorskip("torch")
    from dllm_trt.export import export_onnx

    root = tmp_path_factory.mktemp("onnx16")
    out = {}
    for name in FAMILIES:
        out[name] = root / name
        export_onnx(str(CKPTS / name), str(out[name]), dtype="fp16", validate=True, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def onnx32(tmp_path_factory):
    pytest.importorskip("torch")
    from dllm_trt.export import export_onnx

    out = tmp_path_factory.mktemp("onnx32") / "llada-tiny"
    export_onnx(str(CKPTS / "llada-tiny"), str(out), dtype="fp32", validate=False, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def built(onnx16, tmp_path_factory):
    """Each family built once with the CLI (fp16, targets 8.9 and 12.0): name -> (engine folder, summary)."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for name in FAMILIES:
        rc, stdout, stderr = run_cli("build", "--onnx", onnx16[name], "--out", root / name, "--backend", "trt-rtx",
                                     "--precision", "fp16", "--compute-capability", TARGETS,
                                     "--cache-dir", root / "cache", "--json")
        assert rc == 0, stderr
        out[name] = (root / name, json.loads(stdout))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_build_each_family(built, onnx16, name):
    folder, summary = built[name]
    assert summary["cache"] == "miss" and summary["backend"] == "trt-rtx"
    assert {p.name for p in folder.iterdir()} >= {"model.engine", "dllm_config.json", "build.log", "tokenizer.json"}
    assert not (folder / "model.onnx").exists()
    meta = json.loads((folder / "dllm_config.json").read_text())
    src = json.loads((onnx16[name] / "dllm_config.json").read_text())
    # the export's config, plus the engine record; the file manifest and the config's digest are the engine folder's
    own = ("files", "config_sha256")
    assert {k: v for k, v in meta.items() if k not in ("engine", *own)} == {k: v for k, v in src.items() if k not in own}
    assert meta["config_sha256"] == config_digest(meta)
    assert meta["files"]["model.engine"]["sha256"] == meta["engine"]["sha256"] and "model.onnx" not in meta["files"]
    rec = meta["engine"]
    assert rec["precision"] == "fp16" and rec["strongly_typed"] is True
    assert rec["backend_version"] == api_mod.load("trt-rtx").version
    assert rec["compute_capabilities"] == ["8.9", "12.0"]
    assert rec["bytes"] == (folder / "model.engine").stat().st_size
    max_pos = src["shape_ranges"]["max_positions"]
    prof = rec["profiles"][0]
    assert prof["input_ids"] == {"min": [1, 1], "opt": [1, 64], "max": [8, max_pos]}  # batch up to 8 by default
    assert prof["past_key_values.0.key"]["min"][2] == 0  # a 0-length past is in the profile
    assert prof["attention_bias"]["max"] == [8, 1, max_pos, 2 * max_pos]
    assert prof["logits_index"] == {"min": [1, 1], "opt": [1, 64], "max": [8, max_pos]}  # rows read: 1 .. L
    assert set(prof) == {i["name"] for i in src["inputs"]}  # every input of the contract, nothing else
    assert any(p["phase"] == "Building engine" for p in rec["phases"])  # IProgressMonitor phases
    assert 0 < summary["timings_s"]["build"] < 120
    log = (folder / "build.log").read_text()
    assert "cache    key" in log and "[INFO]" in log
    header = parse_rtx_header((folder / "model.engine").read_bytes()[:64])
    assert header["targets"] == ["8.9", "12.0"] and header["plan_bytes"] == rec["bytes"]


def test_check_engine_without_gpu(built):
    folder, _ = built["llada-tiny"]
    report = check_engine(folder)
    assert report["ok"]
    by = {c["check"]: c for c in report["checks"]}
    assert by["sha256"]["ok"] and by["header"]["ok"] and by["version"]["ok"]
    if report["gpu"] is None:
        assert report["level"] == "file+header (no GPU)"
        assert by["validity"]["ok"] is None and "needs a GPU" in by["validity"]["detail"]
        assert by["load"]["ok"] is None
    rc, out, _ = run_cli("check-engine", "--engine", folder)
    assert rc == 0 and "engine OK" in out


def test_check_engine_record_without_its_hash(built, tmp_path):
    """A record whose SHA-256 was removed says so (it printed "differs from the record None")."""
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(built["llada-tiny"][0], folder)
    meta = json.loads((folder / "dllm_config.json").read_text())
    del meta["engine"]["sha256"]
    rewrite_artifact_config(folder, meta)
    with pytest.raises(DllmError, match="sha256: the engine record has no SHA-256"):
        check_engine(folder)


def test_second_build_reuses_the_cache(built, onnx16, tmp_path):
    folder, first = built["dream-tiny"]
    cache = folder.parent / "cache"
    rc, out, err = run_cli("build", "--onnx", onnx16["dream-tiny"], "--out", tmp_path / "again", "--precision", "fp16",
                           "--compute-capability", TARGETS, "--cache-dir", cache)
    assert rc == 0
    assert "cache    hit" in err and "no build" in err and "reused from the cache" in out
    meta = json.loads((tmp_path / "again" / "dllm_config.json").read_text())["engine"]
    assert meta["cache_hit"] is True and meta["sha256"] == first["sha256"] and meta["cache_key"] == first["cache_key"]
    assert "reused from the cache" in (tmp_path / "again" / "build.log").read_text()
    # other options: another key, a new build
    rc, out, err = run_cli("build", "--onnx", onnx16["dream-tiny"], "--out", tmp_path / "other",
                           "--compute-capability", "8.9", "--shapes", "B=1:1:2,L=1:8:32,P=0:16:64",
                           "--cache-dir", cache, "--json")
    other = json.loads(out)
    assert other["cache"] == "miss" and other["cache_key"] != first["cache_key"]
    assert other["profiles"][0]["input_ids"] == {"min": [1, 1], "opt": [1, 8], "max": [2, 32]}
    assert other["profiles"][0]["attention_bias"]["max"] == [2, 1, 32, 96]
    # rebuilding into an existing engine folder replaces it
    rc, out, err = run_cli("build", "--onnx", onnx16["dream-tiny"], "--out", tmp_path / "other",
                           "--compute-capability", "8.9", "--shapes", "B=1:1:2,L=1:8:32,P=0:16:64",
                           "--cache-dir", cache, "--json")
    assert rc == 0 and json.loads(out)["cache"] == "hit"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_no_cache(onnx16, tmp_path):
    rc, out, _ = run_cli("build", "--onnx", onnx16["bd-tiny"], "--out", tmp_path / "e", "--compute-capability", "8.6",
                         "--no-cache", "--cache-dir", tmp_path / "cache", "--json")
    assert json.loads(out)["cache"] == "off" and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------- bad inputs
def expect_error(*argv, match: str) -> str:
    """The CLI exits with 2 and prints ``error: ...`` matching ``match`` (no traceback)."""
    rc, out, err = run_cli(*argv)
    assert rc == 2, (out, err)
    assert "\nerror: " in "\n" + err and re.search(match, err, flags=re.S), err
    return err


def test_onnx_of_another_format_version(onnx16, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(onnx16["llada-tiny"], old)
    meta = json.loads((old / "dllm_config.json").read_text())
    meta["format_version"], meta["dllm_trt_version"] = 0, "0.0.1"
    rewrite_artifact_config(old, meta)
    expect_error("build", "--onnx", old, "--out", tmp_path / "e",
                 match=r"exported by dllm-trt 0\.0\.1 in artefact format 0.*Re-export")
    assert not (tmp_path / "e").exists()


def test_not_an_export(tmp_path, built):
    expect_error("build", "--onnx", CKPTS / "llada-tiny", "--out", tmp_path / "e",
                 match=r"checkpoint folder; export it first")
    expect_error("build", "--onnx", built["llada-tiny"][0], "--out", tmp_path / "e",
                 match=r"is an engine folder .*not an ONNX export")
    expect_error("build", "--onnx", tmp_path / "nothing", "--out", tmp_path / "e", match=r"does not exist")


def test_out_folder_guards(onnx16, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", busy, match=r"not an earlier `dllm-trt build`")
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", onnx16["llada-tiny"], match=r"is the ONNX folder")
    assert (busy / "notes.txt").read_text() == "mine"


def test_shapes_outside_the_exported_range(onnx16, tmp_path):
    d = onnx16["llada-tiny"]
    max_pos = json.loads((d / "dllm_config.json").read_text())["shape_ranges"]["max_positions"]
    expect_error("build", "--onnx", d, "--out", tmp_path / "e", "--shapes", "P=0:512:4096",
                 match=rf"past_len max 4096 is outside the exported range: the model has max_positions {max_pos}")
    expect_error("build", "--onnx", d, "--out", tmp_path / "e", "--shapes", f"L=1:8:{max_pos + 1}",
                 match=r"query_len max .* outside the exported range")
    expect_error("build", "--onnx", d, "--out", tmp_path / "e", "--shapes", "B=2:1:4",
                 match=r"batch 2:1:4 must satisfy 1 <= min <= opt <= max")
    expect_error("build", "--onnx", d, "--out", tmp_path / "e", "--shapes", "X=1:2:3", match=r"cannot read 'X=1:2:3'")
    expect_error("build", "--onnx", d, "--out", tmp_path / "e", "--shapes", "L=0:8:16",
                 match=r"query_len 0:8:16 must satisfy 1 <= min")


def test_unsupported_precisions(onnx16, onnx32, tmp_path):
    # TensorRT-RTX is strongly typed: the graph must carry the precision
    expect_error("build", "--onnx", onnx32, "--out", tmp_path / "e", "--precision", "fp16",
                 match=r"TensorRT-RTX builds strongly typed networks only .* is fp32; export with `dllm-trt export --dtype fp16`")
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", tmp_path / "e", "--precision", "int8",
                 match=r"quantize the export with `dllm-trt quantize --method int8`")
    # fp8 needs Ada (8.9) or newer: TensorRT-RTX cannot compile it for 8.0
    fp8 = tmp_path / "fp8"
    shutil.copytree(onnx16["llada-tiny"], fp8)
    meta = json.loads((fp8 / "dllm_config.json").read_text())
    meta["quantization"] = {"method": "fp8", "format": "QDQ FP8 E4M3FN (opset 19+)"}
    rewrite_artifact_config(fp8, meta)
    expect_error("build", "--onnx", fp8, "--out", tmp_path / "e", "--compute-capability", "8.0,8.9",
                 match=r"--precision fp8 needs compute capability 8.9 or newer; TensorRT-RTX cannot compile it for 8.0")
    # ONNX Runtime's MatMulNBits cannot be parsed by TensorRT
    meta["quantization"] = {"method": "int4-rtn", "format": "MatMulNBits (com.microsoft)"}
    rewrite_artifact_config(fp8, meta)
    expect_error("build", "--onnx", fp8, "--out", tmp_path / "e", match=r"MatMulNBits.*--format qdq")
    # compute capabilities TensorRT-RTX does not target
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", tmp_path / "e", "--compute-capability", "9.0",
                 match=r"Hopper \(9.0\) .* not TensorRT-RTX targets: use --backend trt")


def test_backend_not_installed(monkeypatch):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name in ("tensorrt", "tensorrt_rtx_bindings"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(api_mod.importlib, "import_module", fake)
    with pytest.raises(DllmError, match=r"--backend trt needs TensorRT, which is not installed.*pip install tensorrt"):
        api_mod.load("trt")
    with pytest.raises(DllmError, match=r"pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings.*\[trt-rtx\]"):
        api_mod.load("trt-rtx")


def test_plugins_fail_clearly_without_a_plugin_library(onnx16, tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "PLUGIN_DIR", tmp_path / "no-plugins")
    monkeypatch.setattr(builder, "python_plugin_hook", lambda: None)
    monkeypatch.delenv(builder.PLUGIN_ENV, raising=False)
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", tmp_path / "e", "--plugins",
                 "--compute-capability", "8.9", match=r"--plugins: no TensorRT plugin is available: dllm-trt's plugins are not built yet")
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", tmp_path / "e", "--plugin-lib",
                 tmp_path / "libnothing.so", match=r"plugin library not found: .*libnothing.so")
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared library")
    expect_error("build", "--onnx", onnx16["llada-tiny"], "--out", tmp_path / "e", "--plugin-lib", bogus,
                 "--compute-capability", "8.9", "--no-cache", match=r"could not load the plugin library .*libbogus.so")
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------- broken engines
@pytest.fixture
def engine_copy(built, tmp_path):
    folder = tmp_path / "engine"
    shutil.copytree(built["bd-tiny"][0], folder)
    return folder


def test_corrupt_engine(engine_copy):
    path = engine_copy / "model.engine"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DllmError, match=r"sha256: .* differs from the record.*corrupted"):
        check_engine(engine_copy)
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    report = check_engine(engine_copy, raise_on_error=False)
    failed = {c["check"] for c in report["checks"] if c["ok"] is False}
    assert {"sha256", "header", "validity"} <= failed  # get_engine_validity: MALFORMED_ENGINE
    rc, out, _ = run_cli("check-engine", "--engine", engine_copy)
    assert rc == 1 and "FAIL header" in out and "engine NOT OK" in out


def test_truncated_engine(engine_copy):
    path = engine_copy / "model.engine"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DllmError, match=r"size: .*bytes \(recorded .*header says \d+ bytes, file has \d+ \(truncated\?\)"):
        check_engine(engine_copy)
    from dllm_trt.runtime.backends import load_backend

    with pytest.raises(DllmError, match=r"truncated or was replaced; rebuild it: `dllm-trt build --onnx .* --backend trt-rtx"):
        load_backend("trt", str(engine_copy))


def test_engine_from_another_version(engine_copy):
    meta = json.loads((engine_copy / "dllm_config.json").read_text())
    meta["engine"]["backend_version"] = "1.6.0.30"
    rewrite_artifact_config(engine_copy, meta)
    path = engine_copy / "model.engine"
    data = bytearray(path.read_bytes())
    data[24:28] = bytes([1, 6, 0, 30])  # the version in the TensorRT-RTX header
    path.write_bytes(bytes(data))
    meta["engine"]["sha256"] = __import__("hashlib").sha256(bytes(data)).hexdigest()
    rewrite_artifact_config(engine_copy, meta)
    report = check_engine(engine_copy, raise_on_error=False)
    by = {c["check"]: c for c in report["checks"]}
    assert by["version"]["ok"] is False and "engine built by 1.6.0.30: rebuild it with this version" in by["version"]["detail"]
    from dllm_trt.runtime.backends import load_backend

    with pytest.raises(DllmError, match=r"built by TensorRT-RTX 1.6.0.30; this is TensorRT-RTX 1\.7.*Rebuild it with this "
                                        r"version: `dllm-trt build --onnx .* --backend trt-rtx --precision fp16 "
                                        r"--compute-capability 8.9,12.0`"):
        load_backend("trt", str(engine_copy))


def test_trt_backend_needs_a_gpu_or_says_so(built):
    from dllm_trt.engine.gpu import gpu_info
    from dllm_trt.runtime.backends import load_backend

    if gpu_info(0) is not None:
        pytest.skip("a GPU is present: the load itself is tested in test_trt_backend.py")
    with pytest.raises(DllmError, match=r"the trt backend needs an NVIDIA GPU: no CUDA GPU here"):
        load_backend("trt", str(built["llada-tiny"][0]))


def test_trt_backend_on_an_onnx_folder(onnx16):
    from dllm_trt.runtime.backends import load_backend

    with pytest.raises(DllmError, match=r"has no engine record: .* is not a `dllm-trt build` folder"):
        load_backend("trt", str(onnx16["llada-tiny"]))


def _fake_gpu(monkeypatch, name: str, cc: str) -> None:
    from dllm_trt.engine import gpu

    monkeypatch.setattr(gpu, "gpu_info", lambda device_id=0: {"name": name, "compute_capability": cc})


def test_engine_for_another_gpu_rtx(built, monkeypatch):
    """The pre-load check says what to rebuild (the GPU is faked: these checks run before any CUDA call)."""
    from dllm_trt.runtime.backends import load_backend

    folder = built["llada-tiny"][0]  # built for 8.9 and 12.0
    _fake_gpu(monkeypatch, "NVIDIA GeForce RTX 3090", "8.6")
    with pytest.raises(DllmError, match=r"built for compute capability 8.9, 12.0; this GPU \(NVIDIA GeForce RTX 3090\) "
                                        r"is 8.6\. Rebuild .*--compute-capability 8.9,12.0,8.6`"):
        load_backend("trt", str(folder))
    _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(DllmError, match=r"compute capability 9.0\) is not a TensorRT-RTX target.*--backend trt`"):
        load_backend("trt", str(folder))


def test_engine_for_another_gpu_trt(built, tmp_path, monkeypatch):
    """A TensorRT engine records the GPU it was built on; another GPU model is refused before loading."""
    from types import SimpleNamespace

    from dllm_trt.runtime.backends import load_backend

    folder = tmp_path / "trt-engine"
    shutil.copytree(built["llada-tiny"][0], folder)
    meta = json.loads((folder / "dllm_config.json").read_text())
    meta["engine"].update(backend="trt", backend_version="10.13.3.9",
                          gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    rewrite_artifact_config(folder, meta)
    fake = api_mod.TrtApi("trt", SimpleNamespace(), "10.13.3.9", "tensorrt", "TensorRT")
    monkeypatch.setattr(api_mod, "load", lambda backend: fake)
    _fake_gpu(monkeypatch, "NVIDIA L40S", "8.9")
    with pytest.raises(DllmError, match=r"built on NVIDIA H100 80GB HBM3 \(compute capability 9.0\); this GPU is "
                                        r"NVIDIA L40S \(8.9\)\. TensorRT engines run on the GPU model they were built "
                                        r"for: rebuild it here: `dllm-trt build .* --backend trt"):
        load_backend("trt", str(folder))


# ---------------------------------------------------------------------- quantized graphs (issue 6)
@pytest.fixture(scope="module")
def quantized16(onnx16, tmp_path_factory):
    """llada-tiny's fp16 export quantized with the CLI: blockwise INT4 QDQ (RTN) and FP8 QDQ (calibrated)."""
    pytest.importorskip("onnx")
    from dllm_trt.calibration.data import build_calibration, save_calibration

    root = tmp_path_factory.mktemp("quant16")
    src = onnx16["llada-tiny"]
    save_calibration(build_calibration(src, "builtin", 8), root / "calib.npz")
    out = {}
    for precision, argv in (("int4", ("--method", "int4-rtn", "--format", "qdq")),
                            ("fp8", ("--method", "fp8", "--calib", root / "calib.npz"))):
        rc, _, err = run_cli("quantize", "--onnx", src, "--out", root / precision, *argv, "--no-validate")
        assert rc == 0, err
        out[precision] = root / precision
    return out


@pytest.mark.parametrize("precision,method,fmt", [("int4", "int4-rtn", "QDQ: blockwise DequantizeLinear"),
                                                  ("fp8", "fp8", "QDQ FP8 E4M3FN")])
def test_build_quantized_qdq(quantized16, tmp_path, precision, method, fmt):
    """TensorRT-RTX builds the INT4 (blockwise, opset 21) and FP8 (E4M3) QDQ graphs for Ada and Blackwell."""
    folder = tmp_path / precision
    rc, out, err = run_cli("build", "--onnx", quantized16[precision], "--out", folder, "--backend", "trt-rtx",
                           "--compute-capability", TARGETS, "--no-cache", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["precision"] == precision and summary["strongly_typed"] is True  # from the graph, no flag
    assert 0 < summary["timings_s"]["build"] < 120
    rec = json.loads((folder / "dllm_config.json").read_text())["engine"]
    assert rec["precision"] == precision and rec["compute_capabilities"] == ["8.9", "12.0"]
    assert rec["quantization"]["method"] == method and rec["quantization"]["format"].startswith(fmt)
    if precision == "int4":
        assert rec["quantization"]["block_size"] == 32 and rec["quantization"]["symmetric"] is True
    assert f"({precision}, targets 8.9, 12.0)" in err
    header = parse_rtx_header((folder / "model.engine").read_bytes()[:64])
    assert header["targets"] == ["8.9", "12.0"] and header["plan_bytes"] == rec["bytes"]
    assert check_engine(folder)["ok"]
    rc, out, _ = run_cli("check-engine", "--engine", folder)
    assert rc == 0 and "engine OK" in out


def test_quantized_targets_refused_before_the_build(quantized16, tmp_path):
    """INT4 needs Ampere (8.0), FP8 Ada (8.9): older targets are refused before TensorRT-RTX runs."""
    expect_error("build", "--onnx", quantized16["int4"], "--out", tmp_path / "e", "--compute-capability", "7.5,8.9",
                 match=r"--precision int4 needs compute capability 8.0 or newer; TensorRT-RTX cannot compile it for 7.5")
    expect_error("build", "--onnx", quantized16["fp8"], "--out", tmp_path / "e", "--compute-capability", "8.6",
                 match=r"--precision fp8 needs compute capability 8.9 or newer; TensorRT-RTX cannot compile it for 8.6")
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------- plugin graphs (contract 1) are gone
def test_engine_of_a_plugin_graph_is_refused(engine_copy):
    """An engine record of a former `export --plugins` graph is refused before any GPU is needed."""
    from dllm_trt.runtime.backends.trt_backend import preflight

    meta = json.loads((engine_copy / "dllm_config.json").read_text())
    meta["engine"]["plugin_graph"] = "fallback"
    rewrite_artifact_config(engine_copy, meta)
    with pytest.raises(DllmError, match=r"engine of a former `dllm-trt export --plugins` graph.*re-export"):
        preflight(engine_copy)
