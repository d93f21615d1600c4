"""Text <-> token ids with a local ``tokenizer.json`` (the `tokenizers` library; no hub, no remote code)."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ..errors import DllmError


class TextTokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DllmError(f"{path} is missing: the folder needs a tokenizer.json (the `tokenizers` format)")
        self.tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
