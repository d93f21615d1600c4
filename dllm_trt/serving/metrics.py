"""Prometheus metrics of one served model, in a registry of its own (several servers in one process,
as in the tests, do not collide): requests, queue length, batch size, tokens/s, step latency."""
from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..runtime.engine_loop import BatchEngine, StepStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_WINDOW_S = 10.0


class ServingMetrics:
    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dllm_requests", "finished requests by finish reason", ["model", "reason"], registry=r)
        self.rejects = Counter("dllm_rejected_requests", "requests refused (4xx, queue full)", ["model", "why"],
                               registry=r)
        self.tokens = Counter("dllm_generated_tokens", "tokens committed to answers", ["model"], registry=r)
        self.queue = Gauge("dllm_queue_length", "requests waiting for a batch slot", ["model"], registry=r)
        self.active = Gauge("dllm_active_requests", "requests decoding in the batch", ["model"], registry=r)
        self.batch = Histogram("dllm_batch_size", "requests per decode step", ["model"], buckets=BATCH_BUCKETS,
                               registry=r)
        self.batch_max = Gauge("dllm_batch_size_max", "largest batch since start", ["model"], registry=r)
        self.step = Histogram("dllm_step_seconds", "forward time of one batched decode step", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tps = Gauge("dllm_tokens_per_second", f"tokens committed per second over the last {RATE_WINDOW_S:.0f} s",
                         ["model"], registry=r)
        self.latency = Histogram("dllm_request_seconds", "request latency, submit to last token", ["model"],
                                 buckets=REQUEST_BUCKETS, registry=r)
        self.ttft = Histogram("dllm_time_to_first_token_seconds", "submit to first committed token", ["model"],
                              buckets=REQUEST_BUCKETS, registry=r)
        self.crashes = Counter("dllm_engine_crashes", "decode engine crashes (each restarts the engine while the "
                               "restart budget lasts)", ["model"], registry=r)
        self.model = model
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()
        self._max_batch = 0

    def bind_engine(self, engine: BatchEngine) -> None:
        self.queue.labels(self.model).set_function(lambda: engine.queue_length)
        self.active.labels(self.model).set_function(lambda: engine.active)
        self.tps.labels(self.model).set_function(self.tokens_per_second)

    def observe_step(self, s: StepStats) -> None:
        m = self.model
        self.batch.labels(m).observe(s.batch_size)
        self.step.labels(m).observe(s.seconds)
        with self._lock:
            if s.batch_size > self._max_batch:
                self._max_batch = s.batch_size
                self.batch_max.labels(m).set(s.batch_size)

    def add_tokens(self, n: int) -> None:
        """Tokens delivered to a request (counted where they leave, so the last ones of a request count too)."""
        if n:
            self.tokens.labels(self.model).inc(n)
            with self._lock:
                self._recent.append((time.monotonic(), n))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def finished(self, reason: str, tokens: int, seconds: float) -> None:
        self.requests.labels(self.model, reason).inc()
        self.latency.labels(self.model).observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(self.model).observe(seconds)

    def engine_crashed(self) -> None:
        self.crashes.labels(self.model).inc()

    def rejected(self, why: str) -> None:
        self.rejects.labels(self.model, why).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
