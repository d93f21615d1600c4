"""CI's share of the mutation check (tests/mutation_check.py): the two precision mutations that once
left the whole suite green. The full list: ``python tests/mutation_check.py`` (about a minute)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

_spec = importlib.util.spec_from_file_location("mutation_check", Path(__file__).with_name("mutation_check.py"))
mutation_check = importlib.util.module_from_spec(_spec)
sys.modules["mutation_check"] = mutation_check  # its dataclasses look themselves up there
_spec.loader.exec_module(mutation_check)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rmsnorm_no_upcast", "softmax_fp16"])
def test_mutation_is_caught(name):
    (m,) = [m for m in mutation_check.MUTATIONS if m.name == name]
    status, _, detail = mutation_check.run(m)
    assert status == "caught", f"{name}: {status} ({detail})"


def test_every_mutation_still_applies():
    """Each mutation's target line exists exactly once: a refactor that moves it must update the
    mutation (else `python tests/mutation_check.py` would only report it STALE)."""
    root = Path(__file__).resolve().parents[1]
    for m in mutation_check.MUTATIONS:
        assert (root / m.file).read_text().count(m.old) == 1, f"{m.name}: {m.file} no longer holds {m.old!r} once"
