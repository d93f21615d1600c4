"""Text <-> token ids with a local ``tokenizer.json`` (the `tokenizers` library; no hub, no remote code)."""
from __future__ import annotations

import json
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
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception for every parse error
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DllmError(f"{path} is not a readable tokenizer.json ({first}); copy it again from the "
                            "original checkpoint") from None
        try:
            self.unk_token = json.loads(self.tok.to_str()).get("model", {}).get("unk_token")
        except (ValueError, AttributeError):
            self.unk_token = None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def unknown_pieces(self, text: str) -> list[str]:
        """The parts of ``text`` that the tokenizer maps to its unknown token (empty for byte-level BPE)."""
        if not self.unk_token:
            return []
        enc = self.tok.encode(text, add_special_tokens=False)
        return [text[a:b] for t, (a, b) in zip(enc.tokens, enc.offsets) if t == self.unk_token]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
