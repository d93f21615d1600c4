"""File manifests of artefact folders: SHA-256 and size of every file, recorded at publish time.

An exported, quantized or built folder records its files under ``files`` in ``dllm_config.json``
so that a truncated copy, a missing external-data file or flipped bytes are found before a
backend loads garbage. Sizes are checked on every run (cheap); hashes on request
(``dllm-trt check``, ``run --verify``). ``dllm_config.json`` cannot list its own hash, so it carries
``config_sha256``, the digest of its other fields (contract.config_digest), checked on every run too:
an edited dtype or shape is refused before a backend fails on it. Standard library and the contract
only: the runtime imports it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .contract import CONFIG_DIGEST_KEY, FORMAT_VERSION, config_digest, config_edited, redo_hint

CONFIG_FILE = "dllm_config.json"
MANIFEST_KEY = "files"


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """The files a manifest covers: every regular file below ``folder`` except the config itself and
    hidden scratch entries (names starting with a dot)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if rel.as_posix() == CONFIG_FILE:
            continue
        out.append(p)
    return out


def build_manifest(folder: str | Path) -> dict[str, dict]:
    """``{relative path: {"bytes": n, "sha256": hex}}`` for the files of ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in folder_files(folder)}


def write_manifest(folder: str | Path) -> bool:
    """Record the manifest, then the config's own digest, in ``folder/dllm_config.json`` (if there is one);
    True when written."""
    folder = Path(folder)
    cfg = folder / CONFIG_FILE
    if not cfg.is_file():
        return False
    meta = json.loads(cfg.read_text())
    meta.pop(CONFIG_DIGEST_KEY, None)  # a copied source config's digest (quantize, build) is stale
    meta[MANIFEST_KEY] = build_manifest(folder)
    meta[CONFIG_DIGEST_KEY] = config_digest(meta)
    cfg.write_text(json.dumps(meta, indent=2) + "\n")
    return True


@dataclass
class FolderCheck:
    """What :func:`verify_folder` found; ``problems`` is empty when the folder matches its manifest."""

    folder: str
    checked: int = 0
    hashed: bool = False
    has_manifest: bool = True
    config_checked: bool = False  # dllm_config.json carries a digest (folders of older versions do not)
    remedy: str = "re-export (or re-copy) the folder"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.has_manifest and not self.problems

    def summary(self) -> str:
        if not self.has_manifest:
            return (f"{self.folder}/{CONFIG_FILE} records no file manifest (made by an older dllm-trt); "
                    "re-export the folder to get one")
        if self.problems:
            return (f"{self.folder} does not match its manifest: {'; '.join(self.problems[:4])}"
                    f"{' ...' if len(self.problems) > 4 else ''}; {self.remedy}")
        how = "sizes and SHA-256" if self.hashed else "sizes"
        unchecked = "" if self.config_checked else (f"; {CONFIG_FILE} itself is unchecked (it has no "
                                                    f"{CONFIG_DIGEST_KEY}: made by an older dllm-trt)")
        return f"{self.folder}: {self.checked} files match the manifest ({how}){unchecked}"


def verify_folder(folder: str | Path, full_hash: bool = False) -> FolderCheck:
    """Compare ``folder`` with the manifest in its ``dllm_config.json``: sizes always, SHA-256 when
    ``full_hash``. Never raises for a mismatch: the caller decides (see :meth:`FolderCheck.summary`)."""
    folder = Path(folder)
    res = FolderCheck(folder=str(folder), hashed=full_hash)
    cfg = folder / CONFIG_FILE
    try:
        meta = json.loads(cfg.read_text())
    except FileNotFoundError:
        res.problems.append(f"{CONFIG_FILE} is missing")
        return res
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        res.problems.append(f"{CONFIG_FILE} is unreadable ({e})")
        return res
    if isinstance(meta, dict):  # an engine folder is rebuilt, a quantized one quantized again
        res.remedy = f"{redo_hint(meta)} or re-copy the folder"
    # a folder of another format version is the reader's to refuse (contract.read_artifact_config: re-export)
    if isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION and CONFIG_DIGEST_KEY in meta:
        res.config_checked = True
        if config_edited(meta):
            res.problems.append(f"{CONFIG_FILE} was edited after it was written (its content no longer matches "
                                f"its {CONFIG_DIGEST_KEY})")
    manifest = meta.get(MANIFEST_KEY) if isinstance(meta, dict) else None
    if not isinstance(manifest, dict):
        res.has_manifest = False
        return res
    for name, rec in manifest.items():
        p = folder / name
        if not p.is_file():
            res.problems.append(f"{name} is missing")
            continue
        res.checked += 1
        size = p.stat().st_size
        want = rec.get("bytes") if isinstance(rec, dict) else None
        if size != want:
            res.problems.append(f"{name} has {size} bytes, the manifest says {want}")
        elif full_hash and file_sha256(p) != rec.get("sha256"):
            res.problems.append(f"{name} has a different SHA-256 than the manifest (the file is damaged)")
    return res


def require_intact(folder: str | Path, full_hash: bool = False, warn=None) -> FolderCheck:
    """:func:`verify_folder`, raising ``DllmError`` (one line: what differs, what to do) on a mismatch; a folder
    without a manifest passes with a warning through ``warn`` (older dllm-trt versions wrote none)."""
    from .errors import DllmError

    res = verify_folder(folder, full_hash=full_hash)
    if not res.has_manifest:
        if warn is not None:
            warn(f"warning: {res.summary()}")
    elif not res.ok:
        raise DllmError(res.summary())
    return res
