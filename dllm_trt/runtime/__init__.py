"""The lean decode loop: numpy + tokenizers + one backend. Never imports torch or transformers."""
from .chat import load_chat_template, prompt_ids
from .decode import generate
from .settings import GenerationConfig, GenerationResult, StepRecord
from .tokenizer import TextTokenizer

__all__ = ["generate", "load_chat_template", "prompt_ids", "GenerationConfig", "GenerationResult", "StepRecord", "TextTokenizer"]
