"""Fault injection: SIGTERM / SIGINT / SIGKILL at random points of export, quantize and build leave the
previous folder intact or the new one complete, never a hidden staging folder after the next run;
a second writer of the same --out is refused while the first runs (issue 11)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dllm_trt import atomic  # noqa: E402
from dllm_trt.errors import DllmError  # noqa: E402
from dllm_trt.integrity import verify_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLADA = REPO / "samples" / "checkpoints" / "llada-tiny"
SEED = int(os.environ.get("DLLM_TRT_FAULT_SEED", time.time_ns() % 10_000))


def cli(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dllm_trt.cli", *map(str, argv)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from dllm_trt.export import export_onnx

    out = tmp_path_factory.mktemp("faults") / "src"
    export_onnx(LLADA, out, validate=False, progress=False, log=lambda s: None)
    return out


COMMANDS = {
    "export": lambda src, out: ["export", "--model", LLADA, "--out", out, "--no-validate"],
    "quantize": lambda src, out: ["quantize", "--onnx", src, "--out", out, "--method", "int4-rtn", "--no-validate"],
    "build": lambda src, out: ["build", "--onnx", src, "--out", out, "--no-cache", "--shapes", "B=1:1:2,L=1:8:32,P=0:16:64"],
}


def _previous(kind: str, src: Path, out: Path) -> str:
    """Make a complete earlier result at ``out``; returns its dllm_config.json text."""
    if kind == "build":
        pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (the trt-rtx extra) builds the engine")
    proc = cli(*COMMANDS[kind](src, out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return (out / "dllm_config.json").read_text()


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_signals_at_random_points(kind, source, tmp_path):
    rng = random.Random(f"{SEED}-{kind}")
    out = tmp_path / "out"
    before = _previous(kind, source, out)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
        delay = rng.uniform(0.3, 4.0)
        proc = cli(*COMMANDS[kind](source, out))
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        where = f"seed {SEED}, {kind}, {sig.name} after {delay:.2f} s: rc {proc.returncode}, stderr {err[-500:]!r}"
        # -SIG: the signal came while Python was still starting (before the CLI's handlers: nothing written) or
        # while it was shutting down after the command finished (the new folder complete): either way the
        # folder is the previous one or the new one whole, which verify_folder checks below
        assert proc.returncode in (0, 130, 143, -sig), where
        if proc.returncode > 0:
            assert err.strip().splitlines()[-1].startswith(("interrupted", "terminated")), where
            assert "Traceback" not in err, where
        assert hidden(tmp_path) == [], where  # no staging folder, no lock
        assert verify_folder(out, full_hash=True).ok, where  # the previous folder, or the new one complete
        if proc.returncode > 0:  # interrupted by the CLI's handlers: the previous folder stays
            assert (out / "dllm_config.json").read_text() == before, where
        before = (out / "dllm_config.json").read_text()


STALL = """import os, sys, time
class Stall:  # holds the CLI inside `import NAME` (a meta path finder runs first) until the signal comes
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["DLLM_TEST_STALL_ON"]:
            open(os.environ["DLLM_TEST_STALL_MARK"], "w").close()
            time.sleep(60)
sys.meta_path.insert(0, Stall())
"""


@pytest.mark.parametrize("module", ["numpy", "torch"])
def test_ctrl_c_while_importing_is_one_line(tmp_path, module):
    """Ctrl-C while the CLI still imports its modules (numpy and tokenizers of the option checks, then torch or
    onnxruntime of the command): rc 130 and the one line, not an import traceback (numpy's came from outside
    main's handlers)."""
    site, mark, out = tmp_path / "site", tmp_path / "importing", tmp_path / "out"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "DLLM_TEST_STALL_ON": module,
           "DLLM_TEST_STALL_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "dllm_trt.cli", "export", "--model", str(LLADA), "--out", str(out),
                             "--no-validate"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not mark.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert mark.exists(), f"the CLI never imported {module}: rc {proc.poll()}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert err.strip().splitlines() == ["interrupted (Ctrl-C); nothing was left half-written"], err[-2000:]
    assert not out.exists() and hidden(tmp_path) == []


def test_sigkill_leftovers_are_swept_by_the_next_run(source, tmp_path):
    out = tmp_path / "out"
    proc = cli(*COMMANDS["quantize"](source, out))
    deadline = time.time() + 60
    while not hidden(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no cleanup can run
    proc.wait()
    left = hidden(tmp_path)
    assert left, "the run ended before it made its staging folder; nothing to sweep"
    done = cli(*COMMANDS["quantize"](source, out))
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert hidden(tmp_path) == [] and verify_folder(out, full_hash=True).ok


def test_stale_old_folder_is_restored(source, tmp_path):
    """A run killed between moving the previous folder aside and renaming the new one in: put back."""
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{dead_pid()}-abc"
    old.mkdir()
    shutil.copytree(source, old / "out")
    assert atomic.sweep_stale(out) == [old]
    assert verify_folder(out, full_hash=True).ok and hidden(tmp_path) == []


def test_lock_refuses_a_second_writer(source, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging = tmp_path / f".out.export-{holder.pid}-xyz"
        staging.mkdir()
        atomic.lock_path(out).write_text(f"{holder.pid}\n{staging.name}\n")
        with pytest.raises(DllmError, match=f"being written by another dllm-trt run \\(pid {holder.pid}"):
            atomic.staging_dir(out, "export")
        assert staging.is_dir()  # a live writer's staging folder is not swept
    finally:
        holder.kill()
        holder.wait()
    tmp = atomic.staging_dir(out, "export")  # its owner is gone: the lock is stale, the folder swept
    assert not staging.exists() and json.loads("{}") == {}
    atomic.discard(tmp)
    assert hidden(tmp_path) == []


def test_two_concurrent_exports_one_refused(tmp_path):
    out = tmp_path / "out"
    a, b = cli(*COMMANDS["export"](None, out)), cli(*COMMANDS["export"](None, out))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (a, b)]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is being written by another dllm-trt run" in refused, refused
    assert verify_folder(out, full_hash=True).ok and hidden(tmp_path) == []
