"""Write a folder atomically: build it in a hidden sibling, then rename it into place.

Every command that writes an artefact (checkpoint save, export, quantize, build) goes through
here, so an interrupted run never leaves a half-written folder where the result belongs.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_dir(out: Path, kind: str) -> Path:
    """A hidden temporary sibling of ``out`` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artefact gets the usual folder mode
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place, replacing an earlier one only once the new one is complete."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
