"""Write a folder atomically: build it in a hidden sibling, then rename it into place.

Every command that writes an artefact (checkpoint save, export, quantize, build) goes through
here, so an interrupted run never leaves a half-written folder where the result belongs:

- ``staging_dir(out, kind)`` takes the ``--out`` lock (``.NAME.lock``, created with O_EXCL and
  holding the owner's pid), removes staging folders that dead runs left next to ``out``, and
  makes ``.NAME.KIND-PID-XXXX``; a second writer of the same ``out`` is refused while the
  first is alive.
- ``publish(tmp, out)`` records the file manifest (``integrity.py``) when the folder has a
  ``dllm_config.json``, renames it into place with SIGINT/SIGTERM deferred, and frees the lock.
- ``discard(tmp)`` removes an unfinished staging folder and frees the lock (the error path).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import integrity
from .errors import DllmError

_STAGED: dict[Path, Path] = {}  # staging folder -> the lock file it holds
_NAME = re.compile(r"^\.(?P<out>.+)\.(?P<kind>[a-z]+)-(?P<pid>\d+)-[^/]*$")


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: Path) -> tuple[int, str] | None:
    try:
        pid, _, staging = lock.read_text().partition("\n")
        return int(pid), staging.strip()
    except (OSError, ValueError):
        return None


def _lock_is_stale(lock: Path) -> bool:
    """A lock whose owner died, or whose staging folder is gone (its owner cleaned up without unlocking)."""
    held = _read_lock(lock)
    if held is None:
        return True  # empty or garbled: a writer died between create and write
    pid, staging = held
    return not pid_alive(pid) or not staging or not (lock.parent / staging).is_dir()


def _take_lock(out: Path, tmp: Path) -> Path:
    lock = lock_path(out)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _lock_is_stale(lock):
                lock.unlink(missing_ok=True)
                continue
            pid = (_read_lock(lock) or (0, ""))[0]
            raise DllmError(f"--out {out} is being written by another dllm-trt run (pid {pid}, lock {lock}); "
                            "wait for it to finish or pick another --out (remove the lock only if that process "
                            "is gone)") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n{tmp.name}\n")
        return lock
    raise DllmError(f"could not take the lock {lock} for --out {out}; remove it if no dllm-trt run is writing there")


def sweep_stale(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` whose owning process is dead; returns what was removed.

    An ``old`` folder (the previous artefact, moved aside while publishing) is put back when the
    run that moved it died before the new one arrived."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _NAME.match(p.name)
        if not m or m["out"] != out.name or not p.is_dir() or pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and (p / out.name).is_dir() and not out.exists():
            os.replace(p / out.name, out)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def staging_dir(out: Path, kind: str) -> Path:
    """A hidden temporary sibling of ``out`` (same filesystem, so the final rename is atomic), under the lock."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))
    try:
        lock = _take_lock(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _STAGED[tmp] = lock
    sweep_stale(out)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artefact gets the usual folder mode
    return tmp


def _release(tmp: Path) -> None:
    lock = _STAGED.pop(tmp, None)
    if lock is not None:
        held = _read_lock(lock)
        if held is not None and held == (os.getpid(), tmp.name):
            lock.unlink(missing_ok=True)


def discard(tmp: Path) -> None:
    """Remove an unfinished staging folder and free its ``--out`` lock."""
    shutil.rmtree(tmp, ignore_errors=True)
    _release(tmp)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during a few renames; deliver them afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    saved = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        for s in got[:1]:
            os.kill(os.getpid(), s)


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place, replacing an earlier one only once the new one is complete."""
    out = Path(out)
    integrity.write_manifest(tmp)
    with deferred_signals():
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        _release(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file(dest: str | Path, write) -> None:
    """One file written atomically: ``write(tmp_path)`` fills a hidden temporary file beside ``dest``, which is
    then renamed onto it, so an interrupted or failed write leaves the old file or none (reports, plots)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
