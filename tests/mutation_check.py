"""Mutation check: break the code on purpose and make sure the test suite notices.

Each mutation replaces one exact piece of source in a temporary copy of the repository, runs a
fast subset of the tests there, and must make them FAIL. A mutation the tests survive is a hole
in the suite; a mutation whose source text is gone (the code was rewritten) is reported too, so
this list follows the code.

    python tests/mutation_check.py              # every mutation (about 2-3 minutes on 2 cores)
    python tests/mutation_check.py rmsnorm_no_upcast softmax_fp16   # some of them

rc 0 when every chosen mutation was caught. CI runs two of them through
tests/test_mutation.py (marked slow).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST = ["tests/test_numerics.py", "tests/test_models.py", "tests/test_strategies.py", "tests/test_decode.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...] = tuple(FAST)


MUTATIONS = [
    Mutation("rmsnorm_no_upcast", "dllm_trt/models/layers.py", "h = x.float()", "h = x",
             ("tests/test_numerics.py",)),
    Mutation("softmax_fp16", "dllm_trt/models/layers.py",
             "F.softmax(scores.float() + attention_bias, dim=-1)",
             "F.softmax(scores + attention_bias.to(scores.dtype), dim=-1)", ("tests/test_numerics.py",)),
    Mutation("drop_logit_shift", "dllm_trt/runtime/decode.py",
             "self.shift = 1 if self.cfg.logits_shift else 0", "self.shift = 0"),
    Mutation("swap_rope_halves", "dllm_trt/models/layers.py",
             "rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)",
             "rotated = torch.cat((x[..., half:], -x[..., :half]), dim=-1)"),
    Mutation("threshold_ge", "dllm_trt/runtime/unmask.py", "chosen = conf >= threshold if inclusive else conf > threshold",
             "chosen = conf > threshold if inclusive else conf >= threshold"),
    Mutation("rope_theta_ignored", "dllm_trt/models/layers.py",
             "inv_freq = 1.0 / (theta ** (", "inv_freq = 1.0 / (10000.0 ** ("),
]


def copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for name in ("dllm_trt", "tests", "samples"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)


def run(m: Mutation, timeout: int = 900) -> tuple[str, float, str]:
    """('caught' | 'SURVIVED' | 'STALE', seconds, detail)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutation-{m.name}-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        path = root / m.file
        src = path.read_text()
        if src.count(m.old) != 1:
            return "STALE", 0.0, f"{m.file} no longer holds {m.old!r} exactly once: update the mutation"
        path.write_text(src.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        # rc 1 = tests failed; anything else (collection error, usage) does not count as a catch
        status = "caught" if proc.returncode == 1 else "SURVIVED"
        return status, time.perf_counter() - t0, f"pytest rc {proc.returncode}: {last}"


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    unknown = set(names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutation(s): {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}")
        return 2
    bad = 0
    for m in chosen:
        status, seconds, detail = run(m)
        bad += status != "caught"
        print(f"{status:<8} {m.name:<20} {seconds:6.1f} s  {detail}", flush=True)
    print(f"{len(chosen) - bad}/{len(chosen)} mutations caught")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
