"""Continuous batching over the decode loop, server-agnostic (no HTTP, no asyncio, no torch).

Every request is decoded by its own :class:`~dllm_trt.runtime.decode.DecodeLoop` (batch of one, the
request's own settings), run in a worker thread, over a *slot backend*: a stand-in for the real
backend whose ``forward`` hands the call to the engine and waits. The engine's :meth:`BatchEngine.step`
waits until every admitted request has asked for its next forward (or finished), merges the calls
into as few real forwards as their shapes allow (one per past length: 0 or the whole cache), runs
them, and gives each request its own rows back. So:

* **joining**: a queued request is admitted into a free slot at the next step; its prefill rides in
  the same forward as the others' denoising steps (the join point is a forward, at the latest the next
  block boundary). It never waits for the running batch to finish;
* **leaving**: a request that finished (EOS, ``max_tokens``), was cancelled (client disconnect, stop
  string) or failed leaves at the next step, its slot and cache rows free for the next one;
* **equality with a solo run**: a request's tokens come from exactly the code ``generate()`` runs for
  it alone (same DecodeLoop, same strategy, same randomness stream: draws are counted per sequence).
  The only difference is the forward it shares: its rows are padded to the batch's window length with
  rows nobody reads, and its keys live in the slot's row of a shared cache (positions it may not see
  are masked by its own bias). Rows of a batch do not mix, so at temperature 0 each request gets the
  tokens ``dllm-trt run`` gives for it alone (the tests check this token for token).

Streaming: before each of its forwards (and at the end) a request publishes the tokens it has
*committed*: the unmasked prefix of its generation (a diffusion step may fill positions out of order;
only a prefix with no mask before it is final: the loop never re-masks a filled position). That is
per step for one-token-per-step strategies, per block at worst.

The engine is driven by :meth:`BatchEngine.step` (one batched forward round) or by its own thread
(:meth:`BatchEngine.start`); requests are read by a blocking generator (:meth:`Request.events`) or by
an ``on_event`` callback (what an asyncio server uses). An HTTP server, Ray Serve or a Triton Python
model sits on top of this module; nothing here knows about them.
"""
from __future__ import annotations

import copy
import heapq
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DllmError
from .backends import StepOutput
from .decode import DecodeLoop
from .layout import MASKED
from .sampling import SAMPLE_STREAM, counter_uniform
from .settings import GenerationConfig


LENGTH_ROUND = 32  # device paths pad a batch's window to a multiple of this (fewer shapes)


class QueueFull(DllmError):
    """The engine's waiting queue is full: the caller should retry later (HTTP 429)."""


class _Stop(Exception):
    """Raised inside a request's decode loop to end it early (finished, cancelled or the engine closed)."""


@dataclass
class Event:
    """What a request's stream yields: newly committed tokens, and at the end why it finished."""

    tokens: list[int]
    finish_reason: str | None = None  # stop (EOS) | length (max_tokens) | cancelled | error
    error: str | None = None


@dataclass
class StepStats:
    """One round of :meth:`BatchEngine.step`, for metrics."""

    batch_size: int  # requests that forwarded in this round
    forwards: int  # real forward calls it took (one per past length)
    seconds: float  # wall time of those forwards
    committed: int  # tokens committed by all requests since the previous round


@dataclass
class _Call:
    """One forward a request asks for (batch of one), and its answer."""

    args: tuple
    result: StepOutput | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class Request:
    """One generation: prompt ids, its own settings, its slot while it runs, and its event stream."""

    id: int
    prompt: list[int]
    gen: GenerationConfig  # gen_length possibly rounded up from max_tokens (the block structure)
    max_tokens: int
    on_event: Callable[[Event], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    slot: int | None = None
    tokens: list[int] = field(default_factory=list)  # committed so far
    finish_reason: str | None = None
    loop: DecodeLoop | None = None
    _call: _Call | None = None
    _sampled: StepOutput | None = None  # its rows of the latest forward, sampled on the device by the engine
    _done: bool = False  # the worker thread has returned
    _cancelled: bool = False
    _queue: "queue.Queue[Event] | None" = None
    _engine: "BatchEngine | None" = field(default=None, repr=False)

    def __post_init__(self):
        if self.on_event is None:
            self._queue = queue.Queue()

    def cancel(self) -> None:
        """Leave the batch at the next step (client gone, stop string seen); idempotent."""
        self._cancelled = True
        if self._engine is not None:
            self._engine._cancel(self)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The request's events until the last one (blocking; only without ``on_event``)."""
        if self._queue is None:
            raise DllmError("this request delivers its events to on_event")
        while True:
            ev = self._queue.get(timeout=timeout)
            yield ev
            if ev.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], str]:
        """Block until finished: (tokens, finish_reason)."""
        for _ in self.events(timeout):
            pass
        return self.tokens, self.finish_reason

    def _emit(self, ev: Event) -> None:
        if self.on_event is not None:
            self.on_event(ev)
        else:
            self._queue.put(ev)


class _SlotCache:
    """What a request's loop holds as its cache: the slot's row of the engine's shared cache."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.batch = 1


class _SlotBackend:
    """The backend a request's DecodeLoop sees: forwards go to the engine, which batches them."""

    def __init__(self, engine: "BatchEngine", request: Request):
        self.engine, self.request = engine, request
        self.config = engine.backend.config

    def allocate_cache(self, batch: int, capacity: int) -> _SlotCache:
        if capacity > self.engine.capacity:  # submit() checks this first; a clear error if it ever slips
            raise DllmError(f"the request needs {capacity} cache positions, the engine holds {self.engine.capacity}")
        return _SlotCache(self.engine.capacity)

    @property
    def samples_on_device(self) -> bool:
        return bool(getattr(self.engine.backend, "samples_on_device", False))

    @property
    def samples_dream_on_device(self) -> bool:
        return bool(getattr(self.engine.backend, "samples_dream_on_device", False))

    @property
    def samples_untempered(self) -> bool:
        return bool(getattr(self.engine.backend, "samples_untempered", False))

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False) -> StepOutput:
        return self.engine._forward_for(self.request, (input_ids, position_ids, attention_bias, past_len,
                                                       write_mask, logits_index, want_logits))

    def sample(self, temperature, top_k, top_p, uniform) -> StepOutput:
        """The request's rows of its latest forward, sampled by the engine right after that batched forward
        (with the uniforms its loop draws for its candidate rows: same seed, counter and positions)."""
        if self.request._sampled is None:
            raise DllmError("internal: the engine did not sample this request's rows on the device")
        return self.request._sampled


class BatchEngine:
    """Continuous batching of many requests over one backend (see the module docstring).

    ``max_batch`` requests decode at once (slots, rows of the shared cache); up to ``max_queue`` more
    wait; ``capacity`` bounds prompt + generation (+ one block for block diffusion) per request (default:
    the backend's shape range). ``on_step`` is called with each round's :class:`StepStats` (metrics).
    ``on_crash(engine, error)`` is called in the engine's thread when an exception escapes its loop (the thread
    then ends; ``crash`` keeps the error): a server restarts the engine, with ``cache`` = the dead engine's cache
    (same ``max_batch`` and ``capacity``), so that a GPU never holds two.
    """

    def __init__(self, backend, gen: GenerationConfig, max_batch: int = 8, max_queue: int = 256,
                 capacity: int | None = None, on_step: Callable[[StepStats], None] | None = None,
                 on_crash: Callable[["BatchEngine", BaseException], None] | None = None, cache: Any = None):
        if max_batch < 1 or max_queue < 0:
            raise DllmError(f"max_batch must be >= 1 (got {max_batch}) and max_queue >= 0 (got {max_queue})")
        self.backend = backend
        self.config = backend.config
        self.gen = gen.resolved(self.config.attention)  # the server's defaults; requests vary a few fields
        self.max_batch, self.max_queue = max_batch, max_queue
        if self.gen.batch_sample:
            raise DllmError("batch_sample (Fast-dLLM v2's eval harness: a row's tokens depend on its batch) is not "
                            "served: requests join and leave the batch at any step; decode them with `dllm-trt run "
                            "--batch-sample`")
        if self.gen.cfg_scale > 0 or self.gen.strategy == "freedave":
            raise DllmError("classifier-free guidance (cfg_scale > 0) and FreeDave's drafts are not served: their "
                            "forwards carry several batch rows per request; decode them with `dllm-trt run`")
        bs = self.gen.block_size or self.config.block_size or 0
        self.extra = bs + 1 if self.config.attention == "block_causal" else 0  # DecodeLoop's spare block
        top = int(getattr(backend, "max_positions", None) or self.config.max_position_embeddings)
        if capacity and capacity > top:  # capped silently, a client would meet the smaller limit request by request
            raise DllmError(f"max_model_len {capacity} is more than the {top} positions this engine holds (its shape "
                            f"range or the model's window); use --max-model-len {top} or less, or export/build "
                            "for longer sequences")
        self.max_positions = min(top, capacity) if capacity else top
        self.capacity = self.max_positions + self.extra
        self.on_step = on_step
        self.on_crash = on_crash
        self.crash: BaseException | None = None
        if self.gen.cache == "none":
            self.cache = None
        else:
            self.cache = cache if cache is not None else backend.allocate_cache(max_batch, self.capacity)
        if self.cache is not None:
            self.capacity = int(self.cache.capacity)  # backends may round up
        # A forward over the first n slots passes a view of the cache's first n rows (batch is the leading
        # dimension): numpy slices on the host path, the same device addresses with batch n on TensorRT and on
        # ONNX Runtime's bound path (which binds the view's rows by address).
        flat = self.cache.flat() if self.cache is not None and hasattr(self.cache, "flat") else []
        if flat and all(isinstance(t, np.ndarray) for t in flat):
            self._view: str | None = "numpy"
        elif flat and all(isinstance(t, int) or hasattr(t, "ptr") for t in flat):
            self._view = "pointer"  # device addresses (TensorRT) or ONNX Runtime's bound tensors
        else:
            self._view = None
        self._device = getattr(backend, "io_binding", True) is not False  # not ORT's host (numpy) path
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._active: list[Request] = []
        self._free = list(range(max_batch))
        heapq.heapify(self._free)
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._committed_since = 0
        self.steps = 0

    # ------------------------------------------------------------------ requests
    def request_gen(self, max_tokens: int, **overrides: Any) -> GenerationConfig:
        """The settings a request with ``max_tokens`` runs with: the server's, gen_length rounded up to whole
        blocks (bidirectional) and the server's steps per block kept (what `dllm-trt run --gen-length` with
        those numbers does), plus ``overrides`` (temperature, top_p, seed ...)."""
        if max_tokens < 1:
            raise DllmError(f"max_tokens must be >= 1 (got {max_tokens})")
        g = self.gen
        values: dict[str, Any] = {"gen_length": max_tokens}
        if self.config.attention == "bidirectional":
            blocks = -(-max_tokens // g.block_length)
            values["gen_length"] = blocks * g.block_length
            per_block = g.steps // (g.gen_length // g.block_length)
            values["steps"] = per_block * blocks
        return replace(g, **values, **overrides).resolved(self.config.attention)

    def check(self, prompt: list[int], gen: GenerationConfig) -> None:
        """Raise a DllmError when the request cannot run on this engine (prompt or length out of range)."""
        if not prompt:
            raise DllmError("the prompt is empty; give at least one token")
        need = len(prompt) + gen.gen_length
        if need > self.max_positions:
            rounded = f" (max_tokens rounded up to whole blocks of {gen.block_length})" \
                if self.config.attention == "bidirectional" else ""
            raise DllmError(f"the prompt has {len(prompt)} tokens and the generation needs {gen.gen_length}{rounded}: "
                            f"{need} positions, more than this engine's {self.max_positions}; shorten the prompt or "
                            "max_tokens")
        vocab = self.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise DllmError(f"prompt token ids must lie in 0..{vocab - 1}")

    def submit(self, prompt: list[int], max_tokens: int, on_event: Callable[[Event], None] | None = None,
               **overrides: Any) -> Request:
        """Queue a request; raises DllmError for a bad one, QueueFull when the queue is full."""
        gen = self.request_gen(max_tokens, **overrides)
        self.check(prompt, gen)
        with self._cond:
            if self._closed:
                raise DllmError("the engine is shut down")
            if len(self._waiting) >= self.max_queue + len(self._free):
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_queue}); "
                                "retry later")
            req = Request(next(self._ids), list(prompt), gen, max_tokens, on_event)
            req._engine = self
            self._waiting.append(req)
            self._cond.notify_all()
        return req

    def _cancel(self, req: Request) -> None:
        with self._cond:
            last = None
            if req in self._waiting:  # never started: finish it here
                self._waiting.remove(req)
                last = self._finish(req, "cancelled")
            self._cond.notify_all()
        if last is not None:
            req._emit(last)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def running(self) -> bool:
        """Whether the background thread of :meth:`start` is still stepping (a server's health check)."""
        return self._thread is not None and self._thread.is_alive() and not self._closed

    # ------------------------------------------------------------------ the request's side (worker thread)
    def _run(self, req: Request) -> None:
        try:
            loop = DecodeLoop(_SlotBackend(self, req), [req.prompt], req.gen)
            req.loop = loop
            if loop.cfg.attention == "block_causal":
                loop.run_blocks()
            else:
                loop.run_masked()
            self._publish(req, final=True)
        except _Stop:
            pass
        except Exception as e:  # a broken request fails alone; the others go on
            with self._cond:
                last = None if req.finished else self._finish(req, "error", f"{type(e).__name__}: {e}")
            if last is not None:
                req._emit(last)
        finally:
            with self._cond:
                last = None if req.finished else self._finish(req, "cancelled")
            if last is not None:
                req._emit(last)
            with self._cond:
                req._done = True
                self._cond.notify_all()

    def _publish(self, req: Request, final: bool = False) -> None:
        """Send the newly committed tokens; finish the request at EOS or ``max_tokens`` (raises _Stop there)."""
        loop = req.loop
        start = int(loop.prompt_len[0])
        gen = loop.x[0, start: start + min(req.gen.gen_length, req.max_tokens)]
        masked = np.flatnonzero(gen == loop.mask_id)
        prefix = gen[: masked[0]] if masked.size else gen
        reason = None
        if req.gen.stop_at_eos:
            hit = np.flatnonzero(np.isin(prefix, loop.eos))
            if hit.size:
                prefix, reason = prefix[: hit[0]], "stop"
        if reason is None and (prefix.size >= req.max_tokens or final):
            reason = "length"
        new = prefix[len(req.tokens):].tolist()
        with self._cond:
            if req.finished:
                raise _Stop
            req.tokens.extend(new)
            self._committed_since += len(new)
            last = self._finish(req, reason, new=new) if reason is not None else None
        if last is not None:
            req._emit(last)
            raise _Stop
        if new:
            req._emit(Event(new))

    def _finish(self, req: Request, reason: str, error: str | None = None, new: list[int] | None = None) -> Event:
        """Mark finished (with the lock held) and return the last event, which the caller sends once the
        lock is released: a consumer that blocks never holds up the engine's lock."""
        req.finish_reason = reason
        self._cond.notify_all()
        return Event(new or [], reason, error)

    def _forward_for(self, req: Request, args: tuple) -> StepOutput:
        """A request's forward: publish what it committed, hand the call to the engine and wait."""
        self._publish(req)
        call = _Call(args)
        with self._cond:
            if req._cancelled or self._closed:
                raise _Stop
            req._call = call
            self._cond.notify_all()
            while call.result is None and call.error is None:
                if req._cancelled or self._closed:
                    req._call = None
                    raise _Stop
                self._cond.wait()
            req._call = None
        if call.error is not None:
            raise call.error
        return call.result

    # ------------------------------------------------------------------ the engine's side
    def _admit(self) -> None:
        while self._waiting and self._free:
            req = self._waiting.pop(0)
            req.slot = heapq.heappop(self._free)
            self._active.append(req)
            threading.Thread(target=self._run, args=(req,), name=f"dllm-request-{req.id}", daemon=True).start()

    @staticmethod
    def _ready(req: Request) -> bool:
        """Finished, or waiting on a forward not answered yet."""
        c = req._call
        return req._done or (c is not None and c.result is None and c.error is None)

    def _release(self) -> None:
        for req in [r for r in self._active if r._done]:
            self._active.remove(req)
            heapq.heappush(self._free, req.slot)
            req.loop = None  # its token buffer

    def step(self, timeout: float | None = None) -> StepStats | None:
        """One round: admit waiting requests into free slots, wait (up to ``timeout``) for every running
        request's next forward, run the ones asked for batched, hand the rows back. None when there was
        nothing to run."""
        with self._cond:
            self._release()
            self._admit()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not all(self._ready(r) for r in self._active):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break  # a request slow to ask (its consumer blocks): the others go on without it
                self._cond.wait(left)
            self._release()
            calls = [(r, r._call) for r in self._active if not r._done and self._ready(r)]
            committed, self._committed_since = self._committed_since, 0
        if not calls:
            return None
        t0 = time.perf_counter()
        groups: dict[int, list[tuple[Request, _Call]]] = {}
        for r, c in calls:
            groups.setdefault(int(c.args[3]), []).append((r, c))
        try:
            for past_len, members in groups.items():
                self._run_group(past_len, members)
        except BaseException as e:  # a backend failure fails this round's requests, not the engine
            for _, c in calls:
                if c.result is None:
                    c.error = e
        seconds = time.perf_counter() - t0
        with self._cond:
            self.steps += 1
            self._cond.notify_all()
        stats = StepStats(len(calls), len(groups), seconds, committed)
        if self.on_step is not None:
            self.on_step(stats)
        return stats

    def _run_group(self, past_len: int, members: list[tuple[Request, _Call]]) -> None:
        """One real forward for calls that share a past length; rows are padded to the longest window."""
        uses_cache = self.cache is not None and (past_len > 0 or any(c.args[4] is not None for _, c in members))
        if uses_cache:  # row = slot: the keys/values live in the slot's row of the shared cache
            rows = [r.slot for r, _ in members]
            batch = max(rows) + 1 if self._view else self.max_batch
            if self._view and self._device:
                batch = min(1 << (batch - 1).bit_length(), self.max_batch)
            cache = self._cache_rows(batch)
        else:
            rows, batch, cache = list(range(len(members))), len(members), None
        length = max(c.args[0].shape[1] for _, c in members)
        reads = max(c.args[5].shape[1] for _, c in members)
        if self._device:  # few shapes: each is a bucket of buffers, a CUDA graph, an optimisation profile
            if not uses_cache:
                batch = min(1 << (batch - 1).bit_length(), self.max_batch)
            limit = max(length, int(getattr(self.backend, "query_range", (0, self.capacity))[1]))
            length = min(-(-length // LENGTH_ROUND) * LENGTH_ROUND, limit)
        ids = np.full((batch, length), self.config.mask_token_id, np.int64)
        pos = np.zeros((batch, length), np.int64)
        bias = np.full((batch, 1, length, past_len + length), MASKED, np.float32)
        idx = np.arange(length)
        bias[:, 0, idx, past_len + idx] = 0.0  # padding rows see themselves (no empty softmax row)
        write = np.zeros((batch, length), bool)
        index = np.zeros((batch, reads), np.int64)
        want_logits = False
        for row, (_, c) in zip(rows, members):
            i, p, b, _, w, li, wl = c.args
            n = i.shape[1]
            ids[row, :n], pos[row, :n] = i[0], p[0]
            bias[row, 0, :n, :past_len] = b[0, 0, :, :past_len]
            bias[row, 0, :n, past_len: past_len + n] = b[0, 0, :, past_len:]
            bias[row, 0, :n, past_len + n:] = MASKED
            if w is not None:
                write[row, :n] = w[0]
            index[row, : li.shape[1]] = li[0]
            index[row, li.shape[1]:] = li[0, -1]
            want_logits |= bool(wl)
        out = self.backend.forward(ids, pos, bias, cache, past_len, write if write.any() else None, index,
                                   want_logits)
        self._sample_rows(rows, members, batch, reads)
        for row, (_, c) in zip(rows, members):
            r = c.args[5].shape[1]

            def take(a, row=row, r=r):
                return None if a is None else a[row: row + 1, :r].copy()

            c.result = StepOutput(take(out.tokens), take(out.confidence), take(out.logits) if c.args[6] else None,
                                  take(out.margin), take(out.neg_entropy))

    def _sample_rows(self, rows: list[int], members: list[tuple[Request, _Call]], batch: int, reads: int) -> None:
        """Sampling on the device for the members whose loops sample there (temperature > 0, or Dream's filtered
        distribution): one sampler run over the forward's rows per distinct (temperature, top_k, top_p, flavour). Row r of a request predicts position
        position_ids[logits_index[r]] + shift (its loop's lo + r for every candidate row) and draws the uniform
        of its own stream at its loop's counter, so its tokens are those of its solo run."""
        groups: dict[tuple, list[tuple[int, Request, _Call]]] = {}
        for row, (req, c) in zip(rows, members):
            req._sampled = None
            g = req.gen
            if req.loop is not None and req.loop.device_sampling:
                groups.setdefault((g.temperature, g.top_k, g.top_p, req.loop.dream_sampling), []).append((row, req, c))
        for (t, k, p, dream), who in groups.items():
            u = np.full((batch, reads), 0.5)
            for row, req, c in who:
                pos, li = c.args[1][0], c.args[5][0]
                u[row, : li.size] = counter_uniform(req.gen.seed, SAMPLE_STREAM, int(req.loop.draws[0]),
                                                    pos[li] + req.loop.shift)
            out = self.backend.sample(t, k, p, u, dream=True) if dream else self.backend.sample(t, k, p, u)
            for row, req, c in who:
                r = c.args[5].shape[1]
                req._sampled = StepOutput(*(None if a is None else a[row: row + 1, :r].copy() for a in out))

    def _cache_rows(self, batch: int):
        """The shared cache, or a view of its first ``batch`` rows (see __init__): no copy, fewer rows to
        compute when few slots are busy."""
        if batch == self.max_batch or not self._view:
            return self.cache
        view = copy.copy(self.cache)
        if self._view == "numpy":
            view.layers = [[t[:batch] for t in layer] for layer in self.cache.layers]
        view.batch = batch
        return view

    # ------------------------------------------------------------------ running
    def start(self) -> "BatchEngine":
        """Run :meth:`step` in a background thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="dllm-engine", daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._closed:
                        return
                self.step(timeout=0.25)
        except BaseException as e:  # noqa: BLE001 - kept in ``crash`` and handed to on_crash, else re-raised
            self.crash = e
            if self.on_crash is None:
                raise
            self.on_crash(self, e)

    def close(self) -> None:
        """Stop the engine: running and waiting requests end with finish_reason ``cancelled``."""
        with self._cond:
            self._closed = True
            last = [(req, self._finish(req, "cancelled")) for req in self._waiting]
            self._waiting.clear()
            self._cond.notify_all()
        for req, ev in last:
            req._emit(ev)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def generate(self, prompts: list[list[int]], max_tokens: int, **overrides: Any) -> list[list[int]]:
        """Submit many prompts and wait for them all (tests and benchmarks; needs :meth:`start`)."""
        reqs = [self.submit(p, max_tokens, **overrides) for p in prompts]
        return [r.result()[0] for r in reqs]
