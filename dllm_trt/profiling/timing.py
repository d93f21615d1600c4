"""Wall-clock timing of the decode loop: the hooks :class:`StepTimer` gives ``generate(..., timer=)``.

A *step* is one forward call and the unmasking that reads its logits. Its time runs from the
start of its forward to the start of the next one (the last step: to the end of the request):

    step = model forward + cache update (inside the backend's forward, where the backend times
           it: the in-place cache_write) + unmask/sampling + host overhead (the rest: building the
           window and the attention bias, EOS checks, the loop's bookkeeping).

``setup`` is the time from the call of ``generate`` to the first forward (allocating the cache).
On a device backend ``sync`` (the backend's ``synchronize``, if it has one) is called before each
clock reading around a forward, so a forward's time includes its device work.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

CACHE_SECTIONS = ("cache_write",)


@dataclass
class StepTiming:
    kind: str
    start: float  # clock at the forward's start (seconds, perf_counter)
    forward_s: float = 0.0  # the backend's forward, cache sections included
    unmask_s: float = 0.0
    sections: dict[str, float] = field(default_factory=dict)  # cache_write, inside forward_s
    step_s: float = 0.0  # filled when the request ends

    @property
    def cache_s(self) -> float:
        return sum(self.sections.values())

    @property
    def model_s(self) -> float:
        return self.forward_s - self.cache_s

    @property
    def host_s(self) -> float:
        return max(self.step_s - self.forward_s - self.unmask_s, 0.0)


@dataclass
class RequestTiming:
    """One ``generate`` call (one batch of prompts)."""

    start: float
    end: float = 0.0
    steps: list[StepTiming] = field(default_factory=list)
    first_block_s: float | None = None  # from the call to the end of the first finished block

    @property
    def wall_s(self) -> float:
        return self.end - self.start

    @property
    def setup_s(self) -> float:
        return (self.steps[0].start - self.start) if self.steps else self.wall_s


class _Section:
    __slots__ = ("timer", "name", "t0")

    def __init__(self, timer: "StepTimer", name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.t0 = self.timer.clock()
        return self

    def __exit__(self, *exc):
        self.timer.add(self.name, self.timer.clock() - self.t0)
        return False


class StepTimer:
    """Collects :class:`RequestTiming` records. Use::

        timer = StepTimer(sync=getattr(backend, "synchronize", None))
        backend.timer = timer            # optional: the backend then times its cache sections
        timer.begin_request()
        result = generate(backend, prompts, gen, timer=timer)
        timer.end_request()
    """

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.sync, self.clock = sync, clock
        self.requests: list[RequestTiming] = []
        self._req: RequestTiming | None = None
        self._t = 0.0

    # ------------------------------------------------------------------ around generate()
    def begin_request(self) -> None:
        if self.sync is not None:
            self.sync()
        self._req = RequestTiming(self.clock())

    def end_request(self) -> RequestTiming:
        if self.sync is not None:
            self.sync()
        req, self._req = self._req, None
        if req is None:
            raise RuntimeError("end_request without begin_request")
        req.end = self.clock()
        for i, s in enumerate(req.steps):
            nxt = req.steps[i + 1].start if i + 1 < len(req.steps) else req.end
            s.step_s = nxt - s.start
        self.requests.append(req)
        return req

    # ------------------------------------------------------------------ the decode loop's hooks
    def forward_start(self, kind: str) -> None:
        if self.sync is not None:
            self.sync()
        t = self.clock()
        if self._req is not None:
            self._req.steps.append(StepTiming(kind, t))
        self._t = t

    def forward_end(self) -> None:
        if self.sync is not None:
            self.sync()
        if self._req is not None and self._req.steps:
            self._req.steps[-1].forward_s = self.clock() - self._t

    def unmask_start(self) -> None:
        self._t = self.clock()

    def unmask_end(self) -> None:
        if self._req is not None and self._req.steps:
            self._req.steps[-1].unmask_s += self.clock() - self._t

    def block_done(self) -> None:
        if self._req is not None and self._req.first_block_s is None:
            self._req.first_block_s = self.clock() - self._req.start

    # ------------------------------------------------------------------ the backends' hooks
    def section(self, name: str) -> _Section:
        return _Section(self, name)

    def add(self, name: str, seconds: float) -> None:
        if self._req is not None and self._req.steps:
            d = self._req.steps[-1].sections
            d[name] = d.get(name, 0.0) + seconds


# ---------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]; NaN for no values."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict:
    """count, median, p90, mean, min, max of durations given in seconds, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    if not ms:
        return {"count": 0, "median": None, "p90": None, "mean": None, "min": None, "max": None}
    return {"count": len(ms), "median": percentile(ms, 50), "p90": percentile(ms, 90),
            "mean": sum(ms) / len(ms), "min": min(ms), "max": max(ms)}


def step_dict(s: StepTiming) -> dict:
    d = asdict(s)
    d.pop("start")
    d.update(cache_s=s.cache_s, model_s=s.model_s, host_s=s.host_s)
    return d
