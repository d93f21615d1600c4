"""Chat templates: messages -> prompt text -> token ids, rendered as transformers renders them.

An instruct checkpoint ships a Jinja template (``chat_template.jinja`` or ``tokenizer_config.json``'s
``chat_template``) that wraps the user's text in the role markers and special tokens the model was
tuned on; without it an instruct model sees text it was never trained on. This module reproduces
``PreTrainedTokenizerBase.apply_chat_template`` (sandboxed Jinja, ``trim_blocks``/``lstrip_blocks``,
``raise_exception``/``strftime_now``/``tojson``, the special tokens as variables) without importing
transformers or torch, and tokenizes the result without adding special tokens a second time.
jinja2 is imported lazily: folders without a template never need it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import DllmError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXPORT_CONFIG = "dllm_config.json"  # an export records its template here (contract.CONFIG_FILE; runtime may not import it)


@dataclass
class ChatTemplate:
    """A folder's chat template, where it came from, and the special tokens it may refer to."""

    text: str
    source: str  # file (and key) it was read from: named in rendering errors
    special_tokens: dict[str, Any] = field(default_factory=dict)  # bos_token, eos_token, ... as strings

    def check(self) -> None:
        """Compile the template (syntax errors surface here, at export, rather than at the first prompt)."""
        try:
            _environment().from_string(self.text)
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DllmError(f"the chat template of {self.source} does not compile ({type(e).__name__}: {message}); "
                            "fix it in the checkpoint folder") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text, exactly as transformers' ``apply_chat_template(..., tokenize=False)`` gives it."""
        check_messages(messages, self.source)
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers normalizes
        try:
            compiled = _environment().from_string(self.text)
            return compiled.render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except Exception as e:  # jinja2's TemplateError family plus whatever the template's own code raises
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DllmError(f"the chat template of {self.source} failed to render ({type(e).__name__}: {message}); "
                            "fix the messages or pass --no-chat-template") from None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(tokenizer_config: dict) -> dict[str, Any]:
    """The special-token variables transformers passes to a template (its ``special_tokens_map``)."""
    out: dict[str, Any] = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(tokenizer_config.get(key))
        if text is not None:
            out[key] = text
    return out  # transformers 5 passes only these named tokens (4.x also passed additional_special_tokens)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON: {e}; copy it again from the original checkpoint") from None
    return data if isinstance(data, dict) else {}


def _template_from_config_value(value: Any) -> str | None:
    """``chat_template`` is a string, or a list of ``{"name", "template"}`` of which "default" is used."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    if value is not None:  # a number or an object: a damaged file, not "no template" (prompts would go unwrapped)
        raise DllmError(f"tokenizer_config.json's chat_template is {type(value).__name__} {value!r:.40}: it must be "
                        "the template text or a list of {\"name\", \"template\"}; copy the file again from the checkpoint")
    return None


def load_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The folder's chat template: an export's record in dllm_config.json, else chat_template.jinja, else
    tokenizer_config.json's ``chat_template`` (the order transformers uses); None when it has none."""
    folder = Path(folder)
    tc_path = folder / "tokenizer_config.json"
    tc = _read_json(tc_path) if tc_path.is_file() else {}
    meta_path = folder / EXPORT_CONFIG
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if "chat_template" in meta:  # an export: what the export recorded is what the runtime applies
            text = meta.get("chat_template")
            if not isinstance(text, str):
                return None
            tokens = meta.get("chat_special_tokens")
            return ChatTemplate(text, f"{meta_path} (chat_template)",
                                tokens if isinstance(tokens, dict) else special_tokens(tc))
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(jinja.read_text(), str(jinja), special_tokens(tc))
    text = _template_from_config_value(tc.get("chat_template"))
    if text is not None:
        return ChatTemplate(text, f"{tc_path} (chat_template)", special_tokens(tc))
    return None


def check_messages(messages: Any, source: str = "messages") -> list[dict]:
    """An OpenAI-style list of ``{"role": str, "content": str | list}``; raises a one-line DllmError."""
    if not isinstance(messages, list) or not messages:
        raise DllmError(f"{source}: messages must be a non-empty JSON list of {{\"role\": ..., \"content\": ...}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DllmError(f"{source}: message {i} must be an object with a string \"role\" and a \"content\" "
                            f"(found {json.dumps(m)[:80]})")
        if not isinstance(m.get("content"), (str, list, type(None))):
            raise DllmError(f"{source}: message {i} has a {type(m['content']).__name__} \"content\"; use a string")
    return messages


def read_messages_file(path: str | Path) -> list[dict]:
    """``--messages FILE.json``: a list of messages, or an object with a ``messages`` list."""
    path = Path(path)
    if not path.is_file():
        raise DllmError(f"--messages {path}: no such file; pass a JSON file holding a list of "
                        "{\"role\": ..., \"content\": ...} objects")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DllmError(f"--messages {path} is not valid JSON ({e}); write a list of "
                        "{\"role\": ..., \"content\": ...} objects") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    return check_messages(data, f"--messages {path}")


def prompt_ids(folder: str | Path, tokenizer=None, prompt: str | None = None, messages: list[dict] | None = None,
               chat_template: bool = True) -> list[int]:
    """Token ids of one prompt, the way the folder's model expects it (``tokenizer``: a TextTokenizer,
    by default the folder's own).

    With a template (and ``chat_template`` true) ``prompt`` becomes one user message and ``messages``
    are rendered as they are; without one the prompt text is tokenized as it is. Special tokens are
    never added on top (the template writes the ones the model needs, e.g. LLaDA's BOS).
    """
    if (prompt is None) == (messages is None):
        raise DllmError("give either a prompt or messages")
    if tokenizer is None:
        from .tokenizer import TextTokenizer

        tokenizer = TextTokenizer(folder)
    template = load_chat_template(folder) if chat_template else None
    if template is None:
        if messages is not None:
            why = "chat templates are switched off (--no-chat-template)" if not chat_template else \
                "it has no chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja)"
            raise DllmError(f"--messages needs a chat template, and {folder}: {why}; pass --prompt TEXT instead")
        return tokenizer.encode(prompt)
    if messages is None:
        messages = [{"role": "user", "content": prompt}]
    return tokenizer.encode(template.render(messages))


def _environment():
    """transformers' ``_compile_jinja_template`` environment (sandboxed, same options and helpers)."""
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ModuleNotFoundError:
        raise DllmError("this folder has a chat template and rendering it needs jinja2: pip install 'jinja2>=3.1' "
                        "(or pass --no-chat-template)") from None

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): rendered as their body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env
