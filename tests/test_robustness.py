"""Bad input, as a new user gives it: every case is refused with one line naming the file or option
and what to do, rc != 0; nothing wrong is printed with rc 0 (issue 11)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from safetensors.torch import load_file, save_file  # noqa: E402

from dllm_trt.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CKPTS = REPO / "samples" / "checkpoints"
LLADA = CKPTS / "llada-tiny"
PROMPT = ["--prompt", "add:12+34="]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    from dllm_trt.export import export_onnx

    out = tmp_path_factory.mktemp("robust") / "llada"
    export_onnx(LLADA, out, validate=False, progress=False, log=lambda s: None)
    return out


@pytest.fixture
def ckpt(tmp_path):
    """A writable copy of the bundled LLaDA checkpoint."""
    d = tmp_path / "ckpt"
    shutil.copytree(LLADA, d)
    return d


def one_line_error(capsys, argv: list[str], *needles: str, rc: int = 2) -> str:
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert got == rc, (got, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_safetensors_named(ckpt, capsys, damage):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(4096)}[damage])
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], str(f), "copy it again")


def test_nan_weight_refused_naming_tensor(ckpt, capsys):
    sd = load_file(ckpt / "model.safetensors")
    name = "model.transformer.blocks.0.ff_out.weight"
    sd[name].view(-1)[7] = float("nan")
    save_file(sd, ckpt / "model.safetensors")
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], name, "NaN/Inf")


def test_int_weight_refused(ckpt, capsys, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    name = "model.transformer.blocks.0.attn_norm.weight"
    sd[name] = sd[name].to(torch.int32)
    save_file(sd, ckpt / "model.safetensors")
    one_line_error(capsys, ["export", "--model", ckpt, "--out", tmp_path / "x", "--no-validate"], name, "int32")
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupt_tokenizer_and_index(ckpt, capsys):
    (ckpt / "tokenizer.json").write_text("{not json")
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "tokenizer.json")
    shutil.copy(LLADA / "tokenizer.json", ckpt / "tokenizer.json")
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map": ["a"]}')
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "model.safetensors.index.json", "weight_map")
    (ckpt / "model.safetensors.index.json").write_text("{broken")
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "model.safetensors.index.json")


def test_config_values(ckpt, capsys):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "n_layers": "six"}))
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "'n_layers'", "six")
    del cfg["mask_token_id"]  # the LLaDA default 126336 lies outside the 48-token vocabulary
    (ckpt / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "mask_token_id", "outside the vocabulary")


def warning_lines(capsys, argv: list[str]) -> list[str]:
    """Run the CLI, expect rc 0, return its ``warning:`` lines."""
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert got == 0, err
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


@pytest.mark.parametrize("mask,needles", [
    (5, ["tokenizer.json", "an ordinary token", 'set "mask_token_id"']),  # a character of the task
    (2, ["tokenizer.json", "'<|unk|>'", "its unknown token"]),
])
def test_mask_token_that_text_produces_is_named(ckpt, capsys, mask, needles):
    """A mask id that ordinary text (or the unknown token) also produces makes prompts holding it read as masked
    positions. The upstream loops mask by id too and run such a checkpoint, so dllm-trt runs it (its tokens stay
    the upstream ones) and says so once, naming the file that sets the id."""
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "mask_token_id": mask}))
    warned = [ln for ln in warning_lines(capsys, ["generate", "--model", ckpt, *PROMPT])
              if f"mask_token_id {mask}" in ln]
    assert len(warned) == 1, warned
    for n in needles:
        assert n in warned[0], (n, warned[0])


def test_mask_token_that_is_eos_is_refused_and_pad_named(ckpt, capsys):
    """A mask id that is the EOS id would stop every row at its first mask: refused, naming the file. One that is
    only the pad id makes padded prompts read as masks (as upstream): a warning."""
    cfg = json.loads((ckpt / "config.json").read_text())
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], int) else cfg["eos_token_id"][0]
    (ckpt / "config.json").write_text(json.dumps({**cfg, "mask_token_id": eos}))
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], f"mask_token_id {eos} is also the eos_token_id",
                   'set "mask_token_id"')
    one_line_error(capsys, ["export", "--model", ckpt, "--out", ckpt.parent / "out"], "eos_token_id")
    assert not (ckpt.parent / "out").exists()
    (ckpt / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 3, "mask_token_id": 3}))
    warned = [ln for ln in warning_lines(capsys, ["generate", "--model", ckpt, *PROMPT]) if "pad_token_id" in ln]
    assert len(warned) == 1 and "mask_token_id 3 is also the pad_token_id" in warned[0], warned


def test_mask_token_from_other_files_is_checked(ckpt, capsys):
    """An EOS list in generation_config.json that holds the mask id is refused naming that file; the mask id named
    by tokenizer_config.json (Fast-dLLM v2's way) that is an ordinary token is named with that file."""
    gen = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [0, 1]}))
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "generation_config.json", "lists 1, the mask_token_id")
    (ckpt / "generation_config.json").write_text(json.dumps(gen))
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["mask_token_id"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"mask_token": "a", "added_tokens_decoder": {
        "5": {"content": "a", "special": True}}}))
    warned = [ln for ln in warning_lines(capsys, ["generate", "--model", ckpt, *PROMPT]) if "mask_token_id 5" in ln]
    assert len(warned) == 1 and "an ordinary token" in warned[0], warned
    assert "tokenizer_config.json's mask_token names it" in warned[0], warned[0]


# ---------------------------------------------------------------------- option ranges and misuse
RUN_CASES = {
    "temperature nan": (["--temperature", "nan"], "--temperature"),
    "threshold 1.5": (["--strategy", "threshold", "--threshold", "1.5"], "--threshold"),
    "threshold -1": (["--strategy", "threshold", "--threshold", "-1"], "--threshold"),
    "threshold nan": (["--strategy", "threshold", "--threshold", "nan"], "--threshold"),
    "threshold inf": (["--strategy", "threshold", "--threshold", "inf"], "--threshold"),
    "factor nan": (["--strategy", "factor", "--factor", "nan"], "--factor"),
    "seed -1": (["--seed", "-1"], "--seed"),
    "threshold without strategy": (["--threshold", "0.5"], "--strategy threshold"),
    "sub-block on llada": (["--sub-block-length", "4"], "--sub-block-length"),
    "gen-length too long": (["--gen-length", "100000"], "positions"),
    "top-k when greedy": (["--top-k", "5"], "--top-k applies to sampling"),
    "top-p when greedy": (["--top-p", "0.5", "--top-k", "3"], "--top-k and --top-p apply to sampling"),
    "one-block prompt on llada": (["--read-one-block-prompt"], "--read-one-block-prompt applies to"),
    "dtype on an export": (["--dtype", "bf16"], "--device / --dtype apply to checkpoint folders"),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_run_options_refused(export_dir, capsys, case):
    extra, needle = RUN_CASES[case]
    if "--dtype" in extra:  # generate's option: an export given to generate runs on ONNX Runtime
        one_line_error(capsys, ["generate", "--model", export_dir, *PROMPT, *extra], needle)
        return
    one_line_error(capsys, ["run", "--engine", export_dir, *PROMPT, *extra], needle)


def test_sampling_filters_are_read_when_sampling_or_by_dream(export_dir, capsys):
    """--top-k / --top-p are refused only where nothing reads them: sampling reads them, and so do Dream's
    strategies at temperature 0 (their statistics come from the filtered distribution)."""
    assert main(["run", "--engine", str(export_dir), *PROMPT, "--top-k", "5", "--temperature", "0.5"]) == 0
    capsys.readouterr()
    from dllm_trt.options import check_decode_options
    from dllm_trt.runtime import GenerationConfig
    from conftest import tiny_config
    import argparse
    args = argparse.Namespace(**{f: None for f in GenerationConfig.__dataclass_fields__})
    args.top_p = 0.9
    check_decode_options(args, GenerationConfig(gen_length=16, block_length=16, strategy="entropy"),
                         tiny_config("dream"), 4)


def test_calibration_samples_bounded(capsys, tmp_path):
    one_line_error(capsys, ["calibrate", "--model", LLADA, "--out", tmp_path / "c.npz", "--samples", "100000000"],
                   "--samples 100000000")


def test_block_length_on_block_diffusion(tmp_path, capsys):
    one_line_error(capsys, ["generate", "--model", CKPTS / "bd-tiny", *PROMPT, "--block-length", "8"],
                   "--block-length", "--sub-block-length")


@pytest.mark.parametrize("device", ["banana", "cuda"])
def test_generate_device(capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --device cuda is valid here")
    one_line_error(capsys, ["generate", "--model", LLADA, *PROMPT, "--device", device], f"--device {device}")


def test_generate_provider_cuda_on_checkpoint(capsys):
    one_line_error(capsys, ["generate", "--model", LLADA, *PROMPT, "--provider", "cuda"], "--provider", "--device")


def test_unknown_characters_warned(export_dir, capsys):
    assert main(["run", "--engine", str(export_dir), "--prompt", "ADD:1+2=é"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "'A'" in err and "'é'" in err and "<|unk|>" in err


@pytest.mark.parametrize("argv,needle", [
    (["profile", "--n", "0"], "--n 0"),
    (["profile", "--n", "-1"], "--n -1"),
    (["profile", "--threads", "-2"], "--threads"),
    (["build", "--out", "{tmp}/e", "--workspace-gib", "-1"], "--workspace-gib"),
    (["quantize", "--out", "{tmp}/q", "--method", "int4-rtn", "--block-size", "4096"], "--block-size 4096"),
    (["quantize", "--out", "{tmp}/q", "--method", "int4-rtn", "--calib", "{tmp}/c.npz"], "--calib"),
    (["quantize", "--out", "{tmp}/q", "--method", "int8", "--calib", "{tmp}/c.npz", "--smooth-alpha", "5"],
     "--smooth-alpha"),
])
def test_folder_command_options(export_dir, tmp_path, capsys, argv, needle):
    flag = {"profile": "--engine", "build": "--onnx", "quantize": "--onnx"}[argv[0]]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    one_line_error(capsys, [argv[0], flag, export_dir, *argv[1:]], needle)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_profile_plots_on_a_file(export_dir, tmp_path, capsys):
    f = tmp_path / "file.png"
    f.write_text("x")
    one_line_error(capsys, ["profile", "--engine", export_dir, "--n", "1", "--plots", f], "--plots", "is a file")


def test_export_opset(tmp_path, capsys):
    one_line_error(capsys, ["export", "--model", LLADA, "--out", tmp_path / "x", "--opset", "99"], "--opset 99")


def test_truncated_onnx_in_quantize(export_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(export_dir, src)
    data = (src / "model.onnx").read_bytes()
    (src / "model.onnx").write_bytes(data[: len(data) // 3])
    one_line_error(capsys, ["quantize", "--onnx", src, "--out", tmp_path / "q", "--method", "int4-rtn"],
                   "model.onnx", "manifest")


# ---------------------------------------------------------------------- folder integrity
def test_manifest_check_and_run_refuses_damaged_folder(export_dir, tmp_path, capsys):
    meta = json.loads((export_dir / "dllm_config.json").read_text())
    assert set(meta["files"]) >= {"model.onnx", "tokenizer.json", "generation_config.json"}
    assert meta["files"]["model.onnx"]["bytes"] == (export_dir / "model.onnx").stat().st_size
    assert main(["check", str(export_dir)]) == 0
    assert capsys.readouterr().out.startswith("ok ")

    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped weight byte: same size, different hash
    (bad / "model.onnx").write_bytes(bytes(data))
    assert main(["check", str(bad)]) == 1
    assert "SHA-256" in capsys.readouterr().out
    one_line_error(capsys, ["run", "--engine", bad, *PROMPT, "--verify"], "model.onnx", "SHA-256")

    (bad / "model.onnx").write_bytes(bytes(data[:-10]))  # truncated: the size check of every run finds it
    one_line_error(capsys, ["run", "--engine", bad, *PROMPT], "model.onnx", "bytes")


def test_version(capsys):
    from dllm_trt import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dllm-trt {__version__}"


def test_missing_extra_named(tmp_path):
    """A runtime-only install (no torch) running export: the extra to install, not a ModuleNotFoundError."""
    code = ("import sys; sys.modules['torch'] = None; from dllm_trt.cli import main; "
            f"sys.exit(main(['export', '--model', {str(LLADA)!r}, '--out', {str(tmp_path / 'x')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "dllm-trt[export]" in proc.stderr, proc.stderr


def test_demo_cache_keyed_by_content(tmp_path, capsys):
    """A Dream checkpoint in a folder named llada-tiny gets its own export, and a damaged cache is re-made."""
    from dllm_trt.demo_cache import demo_export_dir

    fake = tmp_path / "llada-tiny"
    shutil.copytree(CKPTS / "dream-tiny", fake)
    assert demo_export_dir(tmp_path / "w", fake) != demo_export_dir(tmp_path / "w", LLADA)
    work = tmp_path / "w"
    assert main(["demo", "--model", str(LLADA), "--workdir", str(work), "--prompt", "add:457+368="]) == 0
    (engine,) = list(work.iterdir())
    (engine / "model.onnx").write_bytes(b"broken")
    capsys.readouterr()
    assert main(["demo", "--model", str(LLADA), "--workdir", str(work), "--prompt", "add:457+368="]) == 0
    out = capsys.readouterr().out
    assert "exporting again" in out and "answer   825" in out


# ---------------------------------------------------------------------- engine targets
def test_unnamed_header_bit_is_not_a_compute_capability():
    import struct

    from dllm_trt.engine.check import describe_targets, parse_rtx_header

    head = b"vtrt" + bytes(12) + struct.pack("<Q", 1234) + bytes([1, 7, 1, 116]) + bytes(4) + struct.pack("<I", 0b1111110)
    h = parse_rtx_header(head)
    assert h["targets"] == ["8.0", "8.6", "8.9", "12.0", "12.1"] and h["unnamed_target_bits"] == [6]
    assert "bit6" not in describe_targets(h) and "mask bit 6" in describe_targets(h)


def test_fp8_default_targets_are_the_ones_that_run_it():
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (the trt-rtx extra)")
    from dllm_trt.engine import api as api_mod
    from dllm_trt.engine.builder import default_targets

    api = api_mod.load("trt-rtx")
    assert default_targets(api, "fp8") == ["8.9", "12.0", "12.1"]
    assert default_targets(api, "fp16") is None  # TensorRT-RTX's own default set


# ---------------------------------------------------------------------- fp16 of a bf16-trained model
def test_fp16_export_of_large_activations_refused(tmp_path, capsys):
    """Residual values beyond fp16's 65504 (bf16-trained models have them): refused, not exported as Inf/NaN."""
    from dllm_trt.models import load_model, save_model

    model, _ = load_model(LLADA)
    with torch.no_grad():
        model.model.transformer.blocks[0].ff_out.weight.mul_(3e4)  # massive activations in the residual stream
    big = tmp_path / "big"
    save_model(model.to(torch.bfloat16), big, {"tokenizer.json": (LLADA / "tokenizer.json").read_text()})
    one_line_error(capsys, ["export", "--model", big, "--out", tmp_path / "x", "--dtype", "fp16", "--no-validate"],
                   "fp16", "--dtype bf16")
    assert not (tmp_path / "x").exists()
    assert main(["export", "--model", str(big), "--out", str(tmp_path / "y"), "--no-validate"]) == 0  # fp32 is fine


def test_quantization_validation_fails_below_min_top1():
    """--smooth-alpha 5 once gave 88% top-1 agreement and rc 0; now such a result is an error (nothing written)."""
    from dllm_trt.calibration.quantizer import check_validation
    from dllm_trt.errors import DllmError

    v = {"status": "ran", "logits_max_abs_error_rel": 0.2, "top1_agreement_masked": 0.88, "masked_positions": 500}
    with pytest.raises(DllmError, match="top-1 agreement .* 88.0% .* below --min-top1 95%"):
        check_validation(v, "int8", 0.95)
    check_validation({**v, "top1_agreement_masked": 0.99}, "int8", 0.95)
    with pytest.raises(DllmError, match="not finite"):
        check_validation({**v, "logits_max_abs_error_rel": float("nan")}, "int8", 0.0)


# ---------------------------------------------------------------------- session 7's audit
def test_tokenizer_of_another_model_is_named(ckpt, capsys):
    """A tokenizer.json with ids past the model's embedding (another model's file): one line that says so, not an
    IndexError from the embedding lookup (torch) or ORT's Gather."""
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    rows = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    vocab = tok["model"]["vocab"]
    piece = next(k for k in vocab if k in "0123456789")
    vocab[piece] = rows + 12  # the digit now encodes past the embedding
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    one_line_error(capsys, ["generate", "--model", ckpt, "--prompt", f"add:{piece}+1="],
                   f"token id {rows + 12}", "tokenizer.json does not belong")


def test_shard_index_cannot_reach_outside_the_checkpoint(ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.move(ckpt / "model.safetensors", other / "model.safetensors")
    names = list(load_file(other / "model.safetensors"))
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "../other/model.safetensors" for n in names}}))
    one_line_error(capsys, ["generate", "--model", ckpt, *PROMPT], "../other/model.safetensors", "no folders")


@pytest.mark.parametrize("argv", [
    ["export", "--model", LLADA, "--out", "{file}/sub"],
    ["calibrate", "--model", LLADA, "--out", "{file}/c.npz"],
    ["demo", "--workdir", "{file}"],
    ["profile", "--engine", "{export}", "--n", "1", "--json", "{file}/r.json"],
])
def test_output_paths_checked_before_the_work(export_dir, tmp_path, capsys, argv):
    """An output path through a file is refused up front, in one line (was FileExistsError after the work)."""
    f = tmp_path / "afile"
    f.write_text("x")
    argv = [str(a).replace("{file}", str(f)).replace("{export}", str(export_dir)) for a in argv]
    one_line_error(capsys, argv, str(f))


def test_build_and_quantize_check_their_source_hashes(export_dir, tmp_path, capsys):
    """A same-size damaged model.onnx (a flipped byte) is refused before quantize / build make a fresh folder
    whose manifest would vouch for it."""
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    one_line_error(capsys, ["quantize", "--onnx", bad, "--out", tmp_path / "q", "--method", "int8"],
                   "model.onnx", "SHA-256")
    one_line_error(capsys, ["build", "--onnx", bad, "--out", tmp_path / "e"], "model.onnx", "SHA-256")
    assert not (tmp_path / "q").exists() and not (tmp_path / "e").exists()


def test_profile_reports_are_written_whole(tmp_path):
    """atomic.write_file: a writer that fails leaves the previous file untouched and no temporary file."""
    from dllm_trt.atomic import write_file

    dest = tmp_path / "r.json"
    write_file(dest, lambda p: p.write_text("first"))
    assert dest.read_text() == "first" and oct(dest.stat().st_mode & 0o777) == "0o644"

    def fails(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_file(dest, fails)
    assert dest.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_symlinked_out_is_refused(tmp_path, capsys):
    """--out is renamed into place: a symbolic link there would be replaced by a folder, its target left stale."""
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    one_line_error(capsys, ["export", "--model", LLADA, "--out", tmp_path / "link"], "symbolic link", str(target))


def test_calibration_file_is_readable_by_others(tmp_path, capsys):
    """The .npz is written atomically (atomic.write_file) with the usual 0644, not mkstemp's 0600."""
    out = tmp_path / "c.npz"
    assert main(["calibrate", "--model", str(LLADA), "--out", str(out), "--samples", "2"]) == 0
    capsys.readouterr()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


@pytest.mark.parametrize("method,extra,needle", [
    ("int4-rtn", ["--clip"], "--clip applies to --method int4-awq only"),
    ("int4-rtn", ["--smooth-alpha", "0.3"], "--smooth-alpha applies to --method int8 only"),
    ("int8", ["--asymmetric"], "--symmetric / --asymmetric applies to --method int4-rtn / int4-awq only"),
    ("int8", ["--accuracy-level", "4"], "--accuracy-level applies"),
    ("fp8", ["--block-size", "64"], "--block-size applies"),
    ("int4-rtn", ["--format", "qdq", "--bits", "2"], "--bits applies to --method int4-rtn / int4-awq with --format nbits"),
])
def test_quantize_options_of_another_method_refused(export_dir, tmp_path, capsys, method, extra, needle):
    """An option of one method given with another was silently ignored; now refused before any work."""
    one_line_error(capsys, ["quantize", "--onnx", export_dir, "--out", tmp_path / "q", "--method", method, *extra],
                   needle)
    assert not (tmp_path / "q").exists()


def test_options_that_do_not_apply_to_profile_and_calibrate(export_dir, tmp_path, capsys):
    one_line_error(capsys, ["profile", "--engine", export_dir, "--n", "1", "--dtype", "bf16"],
                   "--dtype applies to --backend torch")
    one_line_error(capsys, ["calibrate", "--model", LLADA, "--out", tmp_path / "c.npz", "--plain",
                            "--mask-ratios", "0.5"], "--mask-ratios applies to masked")


def test_edited_dllm_config_is_refused_at_load(export_dir, tmp_path, capsys):
    """dllm_config.json cannot list its own hash in the manifest: its config_sha256 finds an edit (a changed dtype
    used to surface later as an unrelated ONNX Runtime error) on every run, in `check` and in the loader."""
    from dllm_trt.contract import CONFIG_DIGEST_KEY, read_artifact_config
    from dllm_trt.errors import DllmError
    from dllm_trt.runtime.backends import load_backend

    meta = json.loads((export_dir / "dllm_config.json").read_text())
    assert len(meta[CONFIG_DIGEST_KEY]) == 64
    d = tmp_path / "edited"
    shutil.copytree(export_dir, d)
    (d / "dllm_config.json").write_text(json.dumps({**meta, "dtype": "fp16"}, indent=2))
    one_line_error(capsys, ["run", "--engine", d, *PROMPT], "dllm_config.json was edited", "re-export")
    assert main(["check", str(d)]) == 1
    assert "dllm_config.json was edited" in capsys.readouterr().out
    with pytest.raises(DllmError, match=r"dllm_config.json was edited after dllm-trt wrote it.*re-export the checkpoint"):
        load_backend("ort", str(d))
    # an engine folder says rebuild
    (d / "dllm_config.json").write_text(json.dumps({**meta, "engine": {"file": "model.engine"}}))
    with pytest.raises(DllmError, match=r"was edited after dllm-trt wrote it.*rebuild the engine"):
        read_artifact_config(d)
    # re-indented, keys in another order: the same content, not an edit
    (d / "dllm_config.json").write_text(json.dumps(dict(reversed(list(meta.items()))), indent=4))
    assert main(["check", str(d)]) == 0
    assert read_artifact_config(d) == meta
    # a folder of an older dllm-trt (no digest) still runs; `check` says its config is unchecked
    (d / "dllm_config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != CONFIG_DIGEST_KEY}))
    capsys.readouterr()
    assert main(["check", str(d)]) == 0
    assert "dllm_config.json itself is unchecked" in capsys.readouterr().out
    assert main(["run", "--engine", str(d), *PROMPT]) == 0


def test_a_future_engine_folder_says_rebuild(export_dir, tmp_path, capsys):
    """An engine folder (dllm-trt build) of another format version: rebuild, not re-export only."""
    d = tmp_path / "engine"
    shutil.copytree(export_dir, d)
    meta = json.loads((d / "dllm_config.json").read_text())
    meta["format_version"] = 999
    meta["engine"] = {"file": "model.engine"}
    (d / "dllm_config.json").write_text(json.dumps(meta))
    one_line_error(capsys, ["run", "--engine", d, *PROMPT], "Rebuild the engine")


def test_demo_model_and_calibration_file_messages(export_dir, tmp_path, capsys):
    """What a wrong path is, said as it is: an export given to demo, a folder or a text file given as --calib
    (numpy called a text file "pickled data")."""
    one_line_error(capsys, ["demo", "--model", export_dir, "--workdir", tmp_path / "w"], "is an export")
    one_line_error(capsys, ["demo", "--model", tmp_path / "nope", "--workdir", tmp_path / "w"], "is missing")
    text = tmp_path / "c.jsonl"
    text.write_text('{"prompt": "a"}\n')
    one_line_error(capsys, ["quantize", "--onnx", export_dir, "--out", tmp_path / "q", "--method", "int8", "--calib",
                            text], "is not an .npz (zip) file")
    folder = tmp_path / "d.npz"
    folder.mkdir()
    one_line_error(capsys, ["quantize", "--onnx", export_dir, "--out", tmp_path / "q", "--method", "int8", "--calib",
                            folder], "is a folder")


@pytest.mark.parametrize("name, needle", [("low_confidence_dynamic", "--strategy threshold"),
                                          ("low_confidence_static", "--strategy low_confidence here"),
                                          ("entropy_bounded", "UnboundLocalError"),
                                          ("origin", "--strategy entropy")])
def test_upstream_strategy_names_say_what_to_use(capsys, name, needle):
    """SDAR's (--remasking_strategy) and Dream's (alg) names for their rules, given as a strategy, say what runs
    the same rule here or why nothing does - on the command line and in decode settings from a file."""
    from dllm_trt.errors import DllmError
    from dllm_trt.runtime import GenerationConfig

    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(LLADA), *PROMPT, "--strategy", name])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unknown strategy {name!r}" in err and needle in err, err
    with pytest.raises(DllmError, match=needle):
        GenerationConfig(gen_length=8, block_length=8, strategy=name).resolved("bidirectional")
    with pytest.raises(DllmError, match="use one of low_confidence"):
        GenerationConfig(gen_length=8, block_length=8, strategy="bogus").resolved("bidirectional")


def test_batch_sample_needs_the_harness_settings(capsys):
    """batch_sample (Fast-dLLM v2's eval harness) is greedy threshold decoding with the block cache on a
    block-diffusion model: any other setting is refused by name, on the command line too, and the serving engine
    (requests join and leave its batch) refuses it."""
    from dllm_trt.errors import DllmError
    from dllm_trt.runtime import GenerationConfig
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.runtime.engine_loop import BatchEngine

    ok = dict(gen_length=8, strategy="threshold", cache="block", batch_sample=True)
    GenerationConfig(**ok).resolved("block_causal")
    for bad, needle in ((dict(strategy="low_confidence"), "strategy 'low_confidence'"),
                        (dict(temperature=0.5), "temperature 0.5"), (dict(cache="none"), "cache 'none'")):
        with pytest.raises(DllmError, match=needle):
            GenerationConfig(**{**ok, **bad}).resolved("block_causal")
    with pytest.raises(DllmError, match="bidirectional"):
        GenerationConfig(**{**ok, "cache": "dual", "block_length": 8}).resolved("bidirectional")
    one_line_error(capsys, ["generate", "--model", LLADA, *PROMPT, "--batch-sample", "--strategy", "threshold",
                            "--cache", "dual"], "batch_sample")
    from dllm_trt.export import export_onnx
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        export_onnx(CKPTS / "bd-tiny", Path(d) / "bd", validate=False, progress=False, log=lambda s: None)
        be = OrtBackend.from_pretrained(Path(d) / "bd")
        with pytest.raises(DllmError, match="not served"):
            BatchEngine(be, GenerationConfig(**ok), max_batch=2)
