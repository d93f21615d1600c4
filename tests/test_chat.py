"""Chat templates rendered and tokenized as transformers does it (expected outputs made by transformers
itself: tools/chat_expected.py), over the byte-level BPE tokenizers of each family's fixture."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from dllm_trt.errors import DllmError
from dllm_trt.runtime import TextTokenizer
from dllm_trt.runtime.chat import (ChatTemplate, load_chat_template, prompt_ids, read_messages_file,
                                   special_tokens)

UPSTREAM = REPO / "tests" / "fixtures" / "upstream"
EXPECTED = json.loads((REPO / "tests" / "fixtures" / "chat" / "expected.json").read_text())
FAMILIES = sorted(EXPECTED["families"])
SPECIALS = {"llada": ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                      "<|mdm_mask|>"],
            "dream": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"],
            "fast_dllm_v2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"],
            "sdar": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]}


def test_expected_outputs_cover_every_family_and_conversation():
    assert FAMILIES == ["dream", "fast_dllm_v2", "llada", "sdar"]
    for family in FAMILIES:
        assert set(EXPECTED["families"][family]) == set(EXPECTED["conversations"])
    assert EXPECTED["made_with"]["transformers"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_template_renders_and_tokenizes_like_transformers(family):
    folder = UPSTREAM / family
    template = load_chat_template(folder)
    assert template is not None and template.source.endswith("tokenizer_config.json (chat_template)")
    tok = TextTokenizer(folder)
    for name, messages in EXPECTED["conversations"].items():
        want = EXPECTED["families"][family][name]
        assert template.render(messages) == want["text"], (family, name)
        assert prompt_ids(folder, tok, messages=messages) == want["ids"], (family, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_special_tokens_are_single_ids_and_text_round_trips(family):
    """Byte-level BPE with the family's special tokens: each is one id, any text decodes back to itself."""
    tok = TextTokenizer(UPSTREAM / family)
    for i, special in enumerate(SPECIALS[family]):
        assert tok.encode(special) == [256 + i]
    text = "Grüße, 世界! 🙂\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.unknown_pieces(text) == []
    # A prompt through the template begins with the family's markers; decoding skips them.
    ids = prompt_ids(UPSTREAM / family, tok, prompt="hi")
    start = "<|startoftext|>" if family == "llada" else "<|im_start|>"
    assert ids[0] == 256 + SPECIALS[family].index(start)
    assert "hi" in tok.decode(ids) and start not in tok.decode(ids)


def test_llada_template_writes_bos_once():
    """The template writes BOS itself, so tokenizing must not add a second one (add_special_tokens=False)."""
    tok = TextTokenizer(UPSTREAM / "llada")
    ids = prompt_ids(UPSTREAM / "llada", tok, prompt="x")
    assert ids.count(256) == 1 and ids[0] == 256


@pytest.mark.parametrize("tname", sorted(EXPECTED["template_cases"]))
def test_template_features_match_transformers(tname):
    """Default system prompt, namespace, loop controls, trim/lstrip of block tags, tojson, raise_exception,
    bos_token left undefined when tokenizer_config.json has none, {% generation %}."""
    tc = json.loads((UPSTREAM / "dream" / "tokenizer_config.json").read_text())
    template = ChatTemplate(EXPECTED["templates"][tname], f"test:{tname}", special_tokens(tc))
    tok = TextTokenizer(UPSTREAM / "dream")
    for name, messages in EXPECTED["template_conversations"].items():
        want = EXPECTED["template_cases"][tname][name]
        if "error" in want:
            with pytest.raises(DllmError, match=rf"test:{tname} failed to render .*must alternate"):
                template.render(messages)
        else:
            got = template.render(messages)
            assert got == want["text"], (tname, name)
            assert tok.encode(got) == want["ids"], (tname, name)


def test_special_tokens_accept_added_token_dicts():
    tc = {"bos_token": {"content": "<s>", "lstrip": False, "special": True}, "eos_token": "</s>", "pad_token": None,
          "additional_special_tokens": ["<x>"]}
    assert special_tokens(tc) == {"bos_token": "<s>", "eos_token": "</s>"}


def test_chat_template_jinja_file_wins_and_list_templates(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(UPSTREAM / "dream", folder)
    (folder / "chat_template.jinja").write_text("{{ messages[0].content }}!")
    t = load_chat_template(folder)
    assert t.source == str(folder / "chat_template.jinja") and t.render([{"role": "user", "content": "a"}]) == "a!"
    (folder / "chat_template.jinja").unlink()
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert load_chat_template(folder).render([{"role": "user", "content": "a"}]) == "D<|endoftext|>"


def test_no_template_means_plain_text(tmp_path):
    ckpt = REPO / "samples" / "checkpoints" / "llada-tiny"
    assert load_chat_template(ckpt) is None
    tok = TextTokenizer(ckpt)
    assert prompt_ids(ckpt, tok, prompt="add:1+2=") == tok.encode("add:1+2=")
    with pytest.raises(DllmError, match="--messages needs a chat template.*has no chat template"):
        prompt_ids(ckpt, tok, messages=[{"role": "user", "content": "x"}])
    # --no-chat-template: the prompt is tokenized as it is, and messages are refused
    tok = TextTokenizer(UPSTREAM / "dream")
    assert prompt_ids(UPSTREAM / "dream", tok, prompt="hi", chat_template=False) == tok.encode("hi")
    with pytest.raises(DllmError, match="switched off"):
        prompt_ids(UPSTREAM / "dream", tok, messages=[{"role": "user", "content": "x"}], chat_template=False)


def test_messages_file_errors_are_one_line(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert read_messages_file(good) == [{"role": "user", "content": "hi"}]
    cases = {"missing.json": None, "bad.json": "[{", "empty.json": "[]", "norole.json": '[{"content": "x"}]',
             "number.json": '[{"role": "user", "content": 5}]', "dict.json": '{"role": "user"}'}
    for name, text in cases.items():
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        with pytest.raises(DllmError) as e:
            read_messages_file(p)
        assert "\n" not in str(e.value) and str(p) in str(e.value), name


def test_rendering_error_names_the_template_source():
    template = ChatTemplate("{{ messages[0].content + 1 }}", "ckpt/chat_template.jinja")
    with pytest.raises(DllmError, match=r"chat template of ckpt/chat_template.jinja failed to render") as e:
        template.render([{"role": "user", "content": "x"}])
    assert "\n" not in str(e.value)
    with pytest.raises(DllmError, match="chat_template.jinja failed to render.*TemplateSyntaxError"):
        ChatTemplate("{% for %}", "ckpt/chat_template.jinja").render([{"role": "user", "content": "x"}])


def test_template_is_sandboxed():
    """Templates from the hub are untrusted: the sandbox refuses attribute escapes, as transformers' does."""
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(DllmError, match="SecurityError|failed to render"):
        ChatTemplate(evil, "evil.jinja").render([{"role": "user", "content": "x"}])


def test_none_valued_keys_are_dropped_like_transformers():
    t = ChatTemplate("{% for m in messages %}{{ m.content if m.content is defined else 'none' }}{% endfor %}", "t")
    assert t.render([{"role": "assistant", "content": None}]) == "none"


def test_export_check_refuses_a_template_that_does_not_compile():
    ChatTemplate("{{ messages }}", "ok.jinja").check()
    with pytest.raises(DllmError, match=r"chat template of bad.jinja does not compile \(TemplateSyntaxError"):
        ChatTemplate("{% if %}", "bad.jinja").check()


def test_runtime_api_exports_the_chat_entry_points():
    import dllm_trt.runtime as rt

    assert rt.prompt_ids is prompt_ids and rt.load_chat_template is load_chat_template
    messages = EXPECTED["conversations"]["multi_turn"]
    assert rt.prompt_ids(UPSTREAM / "sdar", messages=messages) == EXPECTED["families"]["sdar"]["multi_turn"]["ids"]


BPE = REPO / "tests" / "fixtures" / "chat" / "bpe"  # trained byte-level BPE (merges) with each family's specials


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_byte_level_bpe_matches_transformers(family):
    folder = BPE / family
    tok = TextTokenizer(folder)
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]  # real merges, not bytes only
    for name, messages in EXPECTED["conversations"].items():
        want = EXPECTED["bpe"][family][name]
        ids = prompt_ids(folder, tok, messages=messages)
        assert ids == want["ids"], (family, name)
        assert len(ids) < len(want["text"].encode()), (family, name)  # merges were applied
    for special in SPECIALS[family]:
        assert len(tok.encode(special)) == 1 and tok.decode(tok.encode(special)) == ""


def test_template_bos_is_not_doubled_by_the_post_processor():
    """LLaDA's tokenizer.json prepends BOS when special tokens are added; the template already writes it."""
    folder = BPE / "llada"
    tok = TextTokenizer(folder)
    bos = tok.tok.token_to_id("<|startoftext|>")
    assert EXPECTED["bpe"]["llada"]["plain_with_special_tokens"][0] == bos  # the post-processor is there
    ids = prompt_ids(folder, tok, prompt="What is 457 + 368?")
    assert ids[0] == bos and ids.count(bos) == 1


def test_a_chat_template_that_is_not_text_is_named(tmp_path):
    """A number or an object where the template goes is a damaged tokenizer_config.json: refused with the file
    named, not read as "no template" (prompts would go to the model without their role markers)."""
    for value in (5, {"default": "x"}):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": value}))
        with pytest.raises(DllmError, match="chat_template is"):
            load_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": None}))
    assert load_chat_template(tmp_path) is None
