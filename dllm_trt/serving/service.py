"""One served model: backend + tokenizer + chat template + the batching engine + metrics, and the
asyncio side of a request (text deltas, stop strings, disconnects). No HTTP here: the FastAPI app
(openai_api.py) and the Ray Serve deployment (ray_app.py) both sit on a :class:`Service`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from ..errors import DllmError
from ..runtime.engine_loop import BatchEngine, Event, QueueFull, Request, StepStats
from .metrics import ServingMetrics

log = logging.getLogger("dllm_trt.serving")

DISCONNECT_POLL_S = 0.5  # how often a request asks whether its client is still there
# Text longer than this many characters per engine position is tokenized only as far as this prefix: no real
# tokenizer packs that many characters into every token of a prompt, so the prefix alone already holds more
# tokens than the engine has positions, and a multi-megabyte prompt costs milliseconds instead of minutes.
CHARS_PER_POSITION = 64
# A crashed engine is replaced at most this many times within this many seconds; one more crash leaves the
# server unhealthy (/health 503) for the orchestrator to replace, instead of a restart loop over a broken device.
ENGINE_RESTARTS = 3
RESTART_WINDOW_S = 600.0

# GenerationConfig fields the server's command line may set (the decode structure every request shares)
def _method_fields() -> tuple[str, ...]:
    from ..options import METHOD_OPTIONS, REFRESH_OPTIONS

    return tuple(METHOD_OPTIONS) + ("cache_refresh",) + tuple(REFRESH_OPTIONS)


# the decode settings `dllm-trt serve` takes on its command line (the server's defaults for every request)
DECODE_FIELDS = ("gen_length", "block_length", "steps", "strategy", "threshold", "factor", "cache",
                 "sub_block_length", "temperature", "top_k", "top_p", "seed") + _method_fields()


@dataclass
class ServeOptions:
    """What ``dllm-trt serve`` was asked for; picklable, so a Ray replica builds its Service from it."""

    engine: str
    backend: str = "ort"
    provider: str = "cpu"
    max_batch: int = 8
    max_queue: int = 256
    max_model_len: int | None = None
    model_name: str | None = None
    decode: dict[str, Any] = field(default_factory=dict)  # DECODE_FIELDS given on the command line
    no_stop: bool = False

    @property
    def name(self) -> str:
        return self.model_name or Path(self.engine).resolve().name


@dataclass
class Delta:
    """A piece of one answer: new text, and at the end why it finished and how many tokens it took."""

    text: str
    finish_reason: str | None = None  # stop | length
    completion_tokens: int = 0


class IdsTokenizer:
    """For a folder without tokenizer.json (e.g. a random-weight export for benchmarks): prompts must be
    token ids, and answers are the ids as text (" 17 4 9"), so that the server still runs end to end."""

    def __init__(self, why: str):
        self.why = why

    def encode(self, text: str) -> list[int]:
        raise DllmError(f"{self.why}; this server takes prompts as token ids only")

    def decode(self, ids: list[int]) -> str:
        return "".join(f" {i}" for i in ids)


class RequestFailed(DllmError):
    """The engine could not finish a request (a backend error, or the server shutting down)."""


class EngineCrashed(RequestFailed):
    """The decode engine's thread died under the request (HTTP 503: a client may retry once it is restarted)."""


class BadRequest(DllmError):
    """A request the server refuses, with the request field at fault (``prompt``, ``max_tokens`` or a sampling
    override; None: no single one), so that the HTTP error can name it (OpenAI's ``param``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@contextmanager
def blame(field: str) -> Iterator[None]:
    """Turn a DllmError raised inside into a BadRequest about ``field`` (one that names its field already stays)."""
    try:
        yield
    except BadRequest:
        raise
    except DllmError as e:
        raise BadRequest(str(e), field) from None


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds: a crash that repeats at once (a lost device)
    must end in an unhealthy server that is replaced, not in a loop of restarts that fail every request."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self.times: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Whether one more restart is allowed at ``now`` (and count it)."""
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


class _TextStream:
    """Tokens -> text deltas: holds back an incomplete UTF-8 character and any tail that could still
    become a stop string, and cuts the text where a stop string appears (the stop itself not sent)."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode, self.stops = decode, [s for s in stops if s]
        self.tokens: list[int] = []
        self.sent = 0
        self.text = ""

    def feed(self, new: list[int]) -> tuple[str, bool]:
        """(text to send now, whether a stop string ended the answer)."""
        self.tokens.extend(new)
        self.text = self.decode(self.tokens)
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.sent: cut]
            self.sent = max(self.sent, cut)
            return out, True
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1  # an incomplete multi-byte character: wait for its next token
        for s in self.stops:
            for k in range(min(len(s) - 1, safe - self.sent), 0, -1):
                if self.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        out = self.text[self.sent: safe]
        self.sent = max(self.sent, safe)
        return out, False

    def flush(self) -> str:
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out


class Service:
    """Loads the engine folder and runs the batching engine in a background thread."""

    def __init__(self, opts: ServeOptions):
        from ..runtime import TextTokenizer
        from ..runtime.backends import load_backend
        from ..runtime.chat import load_chat_template
        from ..runtime.settings import generation_config_from_args

        folder = Path(opts.engine)
        if not folder.is_dir():
            raise DllmError(f"--engine {folder} is not a folder; pass a folder written by `dllm-trt export` or `build`")
        self.opts = opts
        self.folder = folder
        self.model = opts.name
        if opts.backend == "trt":
            self.backend = load_backend("trt", str(folder))
            self.backend_name = f"{self.backend.engine_record['backend']} {self.backend.engine_record['backend_version']}"
        elif opts.backend == "ort":
            self.backend = load_backend("ort", str(folder), provider=opts.provider)
            self.backend_name = f"onnxruntime {opts.provider}"
        else:
            raise DllmError(f"unknown backend {opts.backend!r}; use ort or trt")
        if (folder / "tokenizer.json").is_file():
            self.tokenizer = TextTokenizer(folder)
        else:
            self.tokenizer = IdsTokenizer(f"{folder} has no tokenizer.json")
        self.template = load_chat_template(folder)
        args = argparse.Namespace(**opts.decode, no_stop=opts.no_stop)
        self.gen = generation_config_from_args(folder, args)
        from ..options import check_decode_options

        check_decode_options(args, self.gen, self.backend.config, 0)  # knobs this model / strategy would ignore
        self.metrics = ServingMetrics(self.model)
        self._lock = threading.Lock()  # the engine swap of a restart against close()
        self._closing = False
        self._restarts = RestartBudget(ENGINE_RESTARTS, RESTART_WINDOW_S)
        # what became of each crashed engine (absent: not decided yet): restarted, or not (the server gave up)
        self._restarted: weakref.WeakKeyDictionary[BatchEngine, bool] = weakref.WeakKeyDictionary()
        self.engine = self._new_engine()
        self.created = int(time.time())

    def _new_engine(self, cache: Any = None) -> BatchEngine:
        """A started batching engine (over ``cache`` when one is given: a dead engine's)."""
        o = self.opts
        engine = BatchEngine(self.backend, self.gen, max_batch=o.max_batch, max_queue=o.max_queue,
                             capacity=o.max_model_len, on_step=self._on_step, on_crash=self._on_crash, cache=cache)
        self.metrics.bind_engine(engine)
        return engine.start()

    def _on_step(self, stats: StepStats) -> None:
        self.metrics.observe_step(stats)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self.engine.close()

    # ------------------------------------------------------------------ a crashed engine
    def _on_crash(self, engine: BatchEngine, error: BaseException) -> None:
        """In the dying engine thread: log the crash once, and recover in another thread (closing the dead
        engine joins this one)."""
        log.error("the decode engine crashed (%s: %s); its requests fail with 503", type(error).__name__, error,
                  exc_info=error)
        self.metrics.engine_crashed()
        threading.Thread(target=self._recover, args=(engine,), name="dllm-engine-restart", daemon=True).start()

    def _recover(self, dead: BatchEngine) -> None:
        """Replace the dead engine while the restart budget lasts, then fail its requests (their error says
        whether it was restarted); past the budget keep it, so that /health says 503 until the server is replaced."""
        with self._lock:
            if self._closing:
                return
            allowed = self._restarts.take(time.monotonic())
            self._restarted[dead] = allowed
            if allowed:
                self.engine = self._restart(dead)
        dead.close()  # its running and waiting requests end now (cancelled): stream() reports the crash
        budget = f"{self._restarts.limit} restarts allowed within {self._restarts.window_s:.0f} s"
        if not allowed:
            log.error("the decode engine crashed again after %s; not restarting it. /health answers 503 and "
                      "requests fail: restart the server (the crashes above say why)", budget)
        elif self._restarted.get(dead):
            log.warning("the decode engine was restarted (%d of %s)", len(self._restarts.times), budget)

    def _restart(self, dead: BatchEngine) -> BatchEngine:
        """A new engine over the dead one's cache; the dead one if that fails (logged; it stays down)."""
        try:
            return self._new_engine(dead.cache)
        except Exception:  # noqa: BLE001 - the server stays up, unhealthy, and says why
            log.exception("the decode engine could not be restarted; /health answers 503: restart the server")
            self._restarted[dead] = False
            return dead

    def _crash_error(self, engine: BatchEngine) -> EngineCrashed:
        """What a request of a crashed engine is told: retry (restarted or restarting) or restart the server."""
        restarted = self._restarted.get(engine)
        if restarted is False:
            return EngineCrashed("the decode engine crashed and was not restarted (the server's log says why); "
                                 "restart the server")
        what = "was restarted" if restarted else "is being restarted"
        return EngineCrashed(f"the decode engine crashed while running this request and {what} (the server's log "
                             "has the traceback); retry the request")

    def _engine_gone(self, engine: BatchEngine) -> RequestFailed:
        if engine.crash is not None:
            return self._crash_error(engine)
        return RequestFailed("the decode engine stopped (the server is shutting down); retry on another server")

    @property
    def healthy(self) -> bool:
        """Whether requests are being decoded: the engine's thread runs (False for a moment during a restart)."""
        return self.engine.running

    @property
    def given_up(self) -> bool:
        """The engine crashed past its restart budget (or could not restart): only a new server helps."""
        return self._restarted.get(self.engine) is False

    # ------------------------------------------------------------------ prompts
    def encode(self, text: str) -> list[int]:
        """``text``'s token ids; a text too long for the engine is refused after tokenizing a bounded prefix
        (tokenizing megabytes takes minutes of CPU)."""
        limit = self.engine.max_positions * CHARS_PER_POSITION
        if len(text) > limit:
            n = len(self.tokenizer.encode(text[:limit]))
            if n > self.engine.max_positions:
                raise DllmError(f"the prompt has {len(text)} characters; its first {limit} alone are {n} tokens, "
                                f"more than this engine's {self.engine.max_positions} positions; shorten the prompt")
        return self.tokenizer.encode(text)

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt: text tokenized as it is (no chat template), or token ids. Raises BadRequest."""
        if isinstance(prompt, str):
            with blame("prompt"):
                return self.encode(prompt)
        return list(prompt)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """A chat's prompt (the template over the messages). Raises BadRequest; "prompt" is the messages here."""
        from ..runtime.chat import check_messages

        if self.template is None:  # no field of the request is at fault: the model has no template
            raise BadRequest(f"model {self.model!r} has no chat template (the export recorded none); use "
                             "/v1/completions with a plain prompt")
        with blame("prompt"):
            return self.encode(self.template.render(check_messages(messages)))

    @property
    def default_max_tokens(self) -> int:
        return self.engine.gen.gen_length

    # ------------------------------------------------------------------ admission
    @staticmethod
    def field_at_fault(engine: BatchEngine, ids: list[int], max_tokens: int, overrides: dict[str, Any]) -> str | None:
        """Which request field the engine refuses, found by asking it again with the other fields at their
        mildest (its rules stay in one place and its message is not parsed): the prompt if it is refused with a
        one-token answer, else max_tokens if refused with no overrides, else the first override refused alone."""
        def refused(n: int, **values: Any) -> bool:
            try:
                engine.check(ids, engine.request_gen(n, **values))
            except DllmError:
                return True
            return False

        if refused(1):
            return "prompt"
        if refused(max_tokens):
            return "max_tokens"
        return next((name for name, value in overrides.items() if refused(1, **{name: value})), None)

    def _submit(self, engine: BatchEngine, ids: list[int], max_tokens: int, on_event: Callable[[Event], None],
                overrides: dict[str, Any]) -> Request:
        """``engine.submit``, its refusals as BadRequest (field named), QueueFull, or the engine's failure."""
        if not engine.running and engine.crash is not None:  # do not queue on a dead engine
            raise self._crash_error(engine)
        try:
            return engine.submit(ids, max_tokens, on_event=on_event, **overrides)
        except QueueFull:
            self.metrics.rejected("queue_full")
            raise
        except DllmError as e:
            if not engine.running:  # closed under us: a crash or a shutdown, not the request's fault
                raise self._engine_gone(engine) from None
            raise BadRequest(str(e), self.field_at_fault(engine, ids, max_tokens, overrides)) from None

    # ------------------------------------------------------------------ one request
    async def stream(self, ids: list[int], max_tokens: int | None, stops: list[str] | None = None,
                     is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                     **overrides: Any) -> AsyncIterator[Delta]:
        """Text deltas of one request as its tokens are committed; the last has ``finish_reason``.
        Raises BadRequest, QueueFull, or RequestFailed (EngineCrashed when the engine's thread died under it).
        Cancels the request when the consumer stops early (client gone) or ``is_disconnected`` says so."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(ev: Event) -> None:  # engine thread -> this event loop
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        t0 = time.perf_counter()
        engine = self.engine  # the one this request runs on, even if a restart replaces self.engine meanwhile
        req = self._submit(engine, ids, max_tokens or self.default_max_tokens, deliver, overrides)
        text = _TextStream(self.tokenizer.decode, stops or [])
        first, reported = True, False
        try:
            checked = time.monotonic()
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    ev = None
                if is_disconnected is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await is_disconnected():  # nobody reads the answer any more: free the slot
                        return
                if ev is None:
                    if not engine.running:  # its thread is gone: nothing will ever answer this request
                        raise self._engine_gone(engine)
                    continue
                if ev.finish_reason in ("error", "cancelled"):
                    reported = True
                    self.metrics.finished(ev.finish_reason, len(req.tokens), time.perf_counter() - t0)
                    if ev.error is None and engine.crash is not None:
                        raise self._crash_error(engine)
                    raise RequestFailed(ev.error or "the server is shutting down")
                self.metrics.add_tokens(len(ev.tokens))
                if first and ev.tokens:
                    self.metrics.first_token(time.perf_counter() - t0)
                    first = False
                out, stopped = text.feed(ev.tokens)
                if stopped or ev.finish_reason is not None:
                    reason = "stop" if stopped else ev.finish_reason
                    if not stopped:
                        out += text.flush()
                    n = len(text.tokens)
                    reported = True
                    self.metrics.finished(reason, n, time.perf_counter() - t0)
                    yield Delta(out, reason, n)
                    return
                if out:
                    yield Delta(out, None, len(text.tokens))
        finally:
            if not req.finished:
                req.cancel()  # client disconnected, stop string, or the consumer gave up: free the slot
            if not reported:  # the client went away
                self.metrics.finished("cancelled", len(text.tokens), time.perf_counter() - t0)
