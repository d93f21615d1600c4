"""`generate`, `run` and the export apply an instruct checkpoint's chat template; `--no-chat-template`,
`--messages FILE.json`, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from dllm_trt.cli import main
from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate
from dllm_trt.runtime.chat import load_chat_template, prompt_ids

LLADA = REPO / "tests" / "fixtures" / "upstream" / "llada"  # LLaDA layout with LLaDA-8B-Instruct's template
BUNDLED = REPO / "samples" / "checkpoints" / "llada-tiny"  # no template
DECODE = ["--gen-length", "8", "--block-length", "8", "--steps", "8"]
GEN = GenerationConfig(gen_length=8, block_length=8, steps=8)
QUESTION = "What is 2 + 2?"


@pytest.fixture(scope="module")
def torch_backend():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    return TorchBackend.from_pretrained(str(LLADA))


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_generate_applies_the_template(torch_backend, capsys):
    tok = TextTokenizer(LLADA)
    report = run_json(capsys, ["generate", "--model", str(LLADA), "--prompt", QUESTION, *DECODE])
    assert report["chat_template"] == f"{LLADA / 'tokenizer_config.json'} (chat_template)"
    ids = prompt_ids(LLADA, tok, prompt=QUESTION)
    assert ids[0] == 256 and tok.decode(ids).endswith("assistant\n\n")  # BOS + header ... assistant header
    want = generate(torch_backend, [ids], GEN).tokens[0]
    assert report["answers"] == [tok.decode(want)] and report["prompts"] == [QUESTION]


def test_no_chat_template_tokenizes_the_prompt_as_it_is(torch_backend, capsys):
    tok = TextTokenizer(LLADA)
    report = run_json(capsys, ["generate", "--model", str(LLADA), "--prompt", QUESTION, "--no-chat-template", *DECODE])
    assert report["chat_template"] is None
    want = generate(torch_backend, [tok.encode(QUESTION)], GEN).tokens[0]
    assert report["answers"] == [tok.decode(want)]


def test_messages_file_batch_with_a_prompt(torch_backend, tmp_path, capsys):
    tok = TextTokenizer(LLADA)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    f = tmp_path / "chat.json"
    f.write_text(json.dumps(messages))
    report = run_json(capsys, ["generate", "--model", str(LLADA), "--prompt", "hi", "--messages", str(f), *DECODE])
    ids = [prompt_ids(LLADA, tok, prompt="hi"), prompt_ids(LLADA, tok, messages=messages)]
    want = generate(torch_backend, ids, GEN).tokens
    assert report["prompts"] == ["hi", QUESTION] and report["answers"] == [tok.decode(t) for t in want]
    # the text report names the template; without one (the demo's checkpoint) the lines are as before
    assert main(["generate", "--model", str(LLADA), "--messages", str(f), *DECODE]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"chat     {LLADA / 'tokenizer_config.json'} (chat_template)" and out[2] == f"prompt   {QUESTION}"
    assert main(["generate", "--model", str(BUNDLED), "--prompt", "add:1+2="]) == 0
    assert [line[:9] for line in capsys.readouterr().out.splitlines()] == ["model    ", "prompt   ", "answer   ",
                                                                           "nfe      "]


@pytest.mark.parametrize("content,expect", [
    (None, "no such file"),
    ("[{", "is not valid JSON"),
    ('[{"content": "x"}]', "must be an object with a string \"role\""),
    ("[]", "non-empty JSON list"),
])
def test_bad_messages_file_is_one_line(tmp_path, capsys, content, expect):
    f = tmp_path / "m.json"
    if content is not None:
        f.write_text(content)
    assert main(["generate", "--model", str(LLADA), "--messages", str(f), *DECODE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err and str(f) in err


def test_messages_need_a_template(tmp_path, capsys):
    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": "user", "content": "add:1+2="}]))
    assert main(["generate", "--model", str(BUNDLED), "--messages", str(f)]) == 2
    assert "--messages needs a chat template" in capsys.readouterr().err
    assert main(["generate", "--model", str(LLADA), "--messages", str(f), "--no-chat-template", *DECODE]) == 2
    assert "switched off (--no-chat-template)" in capsys.readouterr().err
    assert main(["generate", "--model", str(LLADA)]) == 2
    assert "--prompt TEXT or --messages FILE.json" in capsys.readouterr().err


def test_template_error_names_its_source(tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(LLADA, ckpt)
    (ckpt / "chat_template.jinja").write_text("{{ raise_exception('only system messages here') }}")
    assert main(["generate", "--model", str(ckpt), "--prompt", "x", *DECODE]) == 2
    err = capsys.readouterr().err
    assert f"chat template of {ckpt / 'chat_template.jinja'} failed to render" in err and "only system" in err


def test_export_records_the_template_and_run_applies_it(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from dllm_trt.export.onnx_export import export_onnx
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    out = tmp_path / "onnx"
    export_onnx(str(LLADA), str(out), progress=False, log=lambda s: None)
    meta = json.loads((out / "dllm_config.json").read_text())
    tc = json.loads((LLADA / "tokenizer_config.json").read_text())
    assert meta["chat_template"] == tc["chat_template"] and meta["chat_template_source"] == "tokenizer_config.json"
    assert meta["chat_special_tokens"] == {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                           "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}
    # the export's dllm_config.json record is what the runtime applies, and it gives the checkpoint's ids
    assert load_chat_template(out).source == f"{out / 'dllm_config.json'} (chat_template)"
    tok = TextTokenizer(out)
    ids = prompt_ids(out, tok, prompt=QUESTION)
    assert ids == prompt_ids(LLADA, TextTokenizer(LLADA), prompt=QUESTION)
    report = run_json(capsys, ["run", "--engine", str(out), "--prompt", QUESTION, *DECODE])
    assert report["chat_template"] == f"{out / 'dllm_config.json'} (chat_template)"
    want = generate(OrtBackend.from_pretrained(out), [ids], GEN).tokens[0]
    assert report["answers"] == [tok.decode(want)]


def test_demo_on_an_instruct_checkpoint_applies_its_template(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": "user", "content": QUESTION}]))
    argv = ["demo", "--model", str(LLADA), "--workdir", str(tmp_path / "w"), *DECODE]
    assert main(argv + ["--messages", str(f)]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    chat = [line for line in lines if line.startswith("chat     ")]
    assert len(chat) == 1 and chat[0].endswith("dllm_config.json (chat_template)")
    assert f"prompt   {QUESTION}" in lines and "prompt   add:457+368=" not in lines
