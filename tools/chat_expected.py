"""Expected chat renderings, made by transformers itself, for tests/test_chat.py.

transformers is not a dependency of dllm-trt; this script is run once in a scratch environment and
its output committed (tests/fixtures/chat/expected.json):

    python -m venv /work/chat-venv && /work/chat-venv/bin/pip install transformers tokenizers jinja2
    /work/chat-venv/bin/python tools/chat_expected.py     # from the repository root

For each family's fixture tokenizer (tests/fixtures/upstream/<family>: byte-level BPE tokenizer.json,
tokenizer_config.json with its chat template) and for the extra templates below (rendered with the
Dream fixture's tokenizer), it records ``apply_chat_template(messages, add_generation_prompt=True)``
as text (tokenize=False) and as ids (tokenize=True), or the error it raises.

The fixture tokenizers have no merges (one token per byte), so it also trains, with `tokenizers`, a
byte-level BPE with merges per family (tests/fixtures/chat/bpe/<family>: the family's special tokens
added after the vocabulary as real checkpoints have them; LLaDA's with a post-processor that prepends
BOS, as Llama-style tokenizer.json files do) and records transformers' ids for it too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "upstream"
OUT = REPO / "tests" / "fixtures" / "chat" / "expected.json"
FAMILIES = ("llada", "dream", "fast_dllm_v2", "sdar")

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "What is 457 + 368?"}],
    "system_user": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "  Reverse 'kernel'.  "}],
    "multi_turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Sort the letters of tensorrt."}],
    "unicode": [{"role": "user", "content": "Grüße, 世界! 🙂 tabs\tand\nnewlines"}],
    "specials_in_text": [{"role": "user", "content": "say <|im_end|> and <|endoftext|> literally"}],
}

# Qwen2.5-style template (Dream-v0-Instruct-7B, Fast_dLLM_v2_7B): default system prompt, tools, tojson,
# namespace, loop controls; trimmed of the tool-call branches the tests do not use.
QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are a helpful assistant.' }}\n"
    "    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- set ns = namespace(count=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first %}{% continue %}{% endif %}\n"
    "    {%- set ns.count = ns.count + 1 %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# Block tags on their own lines: trim_blocks / lstrip_blocks decide the whitespace.
WHITESPACE = (
    "{% for m in messages %}\n"
    "    {% if m.role == 'user' %}\n"
    "U: {{ m.content | trim }}\n"
    "    {% else %}\n"
    "{{ m.role | upper }}: {{ m.content }}\n"
    "    {% endif %}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}A:{% endif %}"
)

# raise_exception, special-token variables, tojson of a message and the generation tag.
STRICT = (
    "{{ bos_token if bos_token is defined else '' }}"
    "{% for m in messages %}"
    "{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content + eos_token }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + m | tojson + '<|im_end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>' }}{% endif %}"
)

EXTRA_TEMPLATES = {"qwen25": QWEN25, "whitespace": WHITESPACE, "strict": STRICT}
EXTRA_CONVERSATIONS = dict(CONVERSATIONS, bad_order=[{"role": "assistant", "content": "I start."},
                                                     {"role": "user", "content": "No."}])


BPE_DIR = OUT.parent / "bpe"
QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")  # transformers' Qwen2Tokenizer PRETOKENIZE_REGEX
CORPUS = ["What is 457 + 368? The answer is 825.", "Reverse the word kernel: lenrek.", "Sort the letters of tensorrt.",
          "You are a helpful assistant. Be brief.", "Hello! How can I help you today?", "Grüße aus Berlin, 世界 🙂",
          "user assistant system tool message content role", "say it literally: the end of the text."]


def train_bpe(family: str) -> None:
    """A byte-level BPE trained on CORPUS with the family's special tokens; writes tokenizer.json and a
    tokenizer_config.json (the fixture's, with added_tokens_decoder at the new ids)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    src = json.loads((FIXTURES / family / "tokenizer_config.json").read_text())
    specials = [t["content"] for _, t in sorted(src["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))]
    tok = Tokenizer(models.BPE())
    if src["tokenizer_class"] == "Qwen2Tokenizer":  # what a Qwen2 tokenizer.json holds (transformers rebuilds it so)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # LLaDA's PreTrainedTokenizerFast: tokenizer.json used as it is
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if family == "llada":
        bos = src["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    out = BPE_DIR / family
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(tok.token_to_id(s)): dict(src["added_tokens_decoder"][k])
               for k, s in zip(sorted(src["added_tokens_decoder"], key=int), specials)}
    (out / "tokenizer_config.json").write_text(json.dumps(dict(src, added_tokens_decoder=decoder), indent=1) + "\n")


def render(tok, messages: list[dict], template: str | None = None) -> dict:
    try:
        text = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        return {"text": text, "ids": list(ids)}
    except Exception as e:  # recorded: the test checks dllm-trt refuses the same conversation
        return {"error": f"{type(e).__name__}: {e}"}


def main() -> int:
    out = {"made_with": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                         "jinja2": jinja2.__version__},
           "conversations": CONVERSATIONS, "families": {}, "templates": EXTRA_TEMPLATES,
           "template_conversations": EXTRA_CONVERSATIONS, "template_cases": {}, "bpe": {}}
    for family in FAMILIES:
        tok = AutoTokenizer.from_pretrained(str(FIXTURES / family))
        out["families"][family] = {name: render(tok, msgs) for name, msgs in CONVERSATIONS.items()}
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "dream"))
    for tname, template in EXTRA_TEMPLATES.items():
        out["template_cases"][tname] = {name: render(tok, msgs, template) for name, msgs in EXTRA_CONVERSATIONS.items()}
    for family in FAMILIES:
        train_bpe(family)
        tok = AutoTokenizer.from_pretrained(str(BPE_DIR / family))
        out["bpe"][family] = {name: render(tok, msgs) for name, msgs in CONVERSATIONS.items()}
        out["bpe"][family]["plain_with_special_tokens"] = tok("What is 457 + 368?", add_special_tokens=True)["input_ids"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
