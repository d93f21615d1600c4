"""A progress bar over the named phases of a long command, recording each phase's seconds."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm


class PhaseProgress:
    def __init__(self, phases: list[str], desc: str, enabled: bool = True):
        self.bar = tqdm(total=len(phases), desc=desc, unit="phase", disable=not enabled, leave=False)
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
