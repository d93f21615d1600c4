"""The lean decode loop: numpy + tokenizers + one backend. Never imports torch or transformers."""
from .decode import generate
from .settings import GenerationConfig, GenerationResult, StepRecord
from .tokenizer import TextTokenizer

__all__ = ["generate", "GenerationConfig", "GenerationResult", "StepRecord", "TextTokenizer"]
