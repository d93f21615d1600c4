"""Where `dllm-trt demo` keeps its export: keyed by what the checkpoint holds, not by its folder name,
and re-made when the cached folder is damaged."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from . import __version__

# small files hashed whole; weights by name, size and modification time (hashing 16 GB per demo is too slow)
_CONTENT = ("config.json", "generation_config.json", "dllm_generation.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "model.safetensors.index.json")


def checkpoint_key(model_dir: Path) -> str:
    h = hashlib.sha256(f"dllm-trt {__version__}\n".encode())
    for name in _CONTENT:
        p = model_dir / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    for p in sorted(model_dir.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def demo_export_dir(workdir: Path, model_dir: Path) -> Path:
    return workdir / f"{model_dir.name}-{checkpoint_key(model_dir)}-onnx"


def usable_export(engine: Path, say: Callable[[str], None]) -> bool:
    """True when the cached export is complete and matches its manifest; a damaged one is removed."""
    from .integrity import verify_folder

    if not engine.exists():
        return False
    res = verify_folder(engine)
    if res.ok:
        return True
    say(f"cached export {engine} is unusable ({res.summary()}); exporting again")
    shutil.rmtree(engine, ignore_errors=True)
    return False
