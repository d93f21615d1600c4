"""The OpenAI-compatible HTTP surface: FastAPI routes over a :class:`~dllm_trt.serving.service.Service`.

Thin on purpose: requests are pydantic models that refuse unknown fields, responses are the ``openai``
package's own types, streaming is server-sent events in OpenAI's chunk format, and every error has
OpenAI's body (``{"error": {"message", "type", "param", "code"}}``). The same app runs under uvicorn
(``dllm-trt serve``) and as a Ray Serve ingress (ray_app.py).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice, ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DllmError
from ..runtime.engine_loop import QueueFull
from .service import CHARS_PER_POSITION, BadRequest, Delta, EngineCrashed, RequestFailed, Service

MAX_STOPS = 4  # as OpenAI
MAX_SEED = 2 ** 64 - 1  # the sampler keys on 64 bits: a larger seed would silently repeat a smaller one's answers
ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # OpenAI's message roles
# fields with several accepted shapes: a wrong value is explained by the shapes, not by pydantic's union members
SHAPES = {"prompt": "a string, a list of token ids, or a list of one string or one list of token ids",
          "stop": f"a string or a list of up to {MAX_STOPS} strings"}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
              type(None): "null"}

log = logging.getLogger("dllm_trt.serving")


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Common(BaseModel):
    """Fields both endpoints take. Unknown fields are refused (400), so nothing is silently ignored; types are
    strict ("10" is not an integer, true is not a token id), as OpenAI's API, so a client's bug shows at once."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: Union[str, list[str], None] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatRequest(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


def _unsupported(req: _Common) -> None:
    """Parameters OpenAI has and a diffusion decode here does not: refused, named."""
    checks: list[tuple[str, bool]] = [
        ("n", req.n not in (None, 1)),
        ("presence_penalty", req.presence_penalty not in (None, 0)),
        ("frequency_penalty", req.frequency_penalty not in (None, 0)),
        ("logit_bias", bool(req.logit_bias)),
    ]
    if isinstance(req, CompletionRequest):
        checks += [("echo", bool(req.echo)), ("logprobs", req.logprobs is not None),
                   ("best_of", req.best_of not in (None, 1)), ("suffix", req.suffix is not None)]
    else:
        checks += [("logprobs", bool(req.logprobs)), ("top_logprobs", req.top_logprobs is not None),
                   ("tools", bool(req.tools)), ("tool_choice", req.tool_choice not in (None, "none")),
                   ("response_format", req.response_format not in (None, {"type": "text"}))]
    for name, bad in checks:
        if bad:
            raise ApiError(400, f"parameter {name!r} is not supported by this server (a diffusion LLM served by "
                                "dllm-trt); leave it out", name, code="unsupported_parameter")


def _param(field: str | None, req: _Common) -> str | None:
    """The request field a service-side refusal is about, as this request spelled it (OpenAI's ``param``): a
    chat's prompt is its messages, and its length limit is max_completion_tokens when that is what it sent."""
    if field == "prompt" and isinstance(req, ChatRequest):
        return "messages"
    if field == "max_tokens" and getattr(req, "max_completion_tokens", None):
        return "max_completion_tokens"
    return field


def _refused(e: DllmError, req: _Common) -> ApiError:
    """The 400 of a request the service or the engine refuses: the field at fault in ``param`` (null when no single
    field is, e.g. a model without a chat template)."""
    return ApiError(400, str(e), _param(e.field if isinstance(e, BadRequest) else None, req))


def _failed(e: RequestFailed) -> ApiError:
    """The error of a request the engine could not finish: 503 when its engine crashed (retry: it restarts, or
    the message says to restart the server), 500 for a backend error or a shutdown."""
    if isinstance(e, EngineCrashed):
        return ApiError(503, str(e), type_="server_error", code="engine_crashed")
    return ApiError(500, f"the request failed: {e}", type_="server_error")


def _stops(req: _Common) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"at most {MAX_STOPS} stop strings (got {len(stops)})", "stop")
    return stops


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's messages as the chat template takes them (content parts joined into one text). A role or a
    content the template would render as something else, or choke on, is refused here, named."""
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise ApiError(400, f"messages[{i}] has no role; give one of {', '.join(ROLES)}", f"messages.{i}.role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", f"messages.{i}.role")
        if isinstance(content, list):  # OpenAI's content parts: text only
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise ApiError(400, f"messages[{i}].content[{j}]: only text parts are supported "
                                        '({"type": "text", "text": ...})', f"messages.{i}.content")
                if not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content[{j}].text must be a string (got "
                                        f"{_json_type(part.get('text'))})", f"messages.{i}.content")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None and role != "assistant":  # an assistant turn that called tools has none
            raise ApiError(400, f"messages[{i}] (role {role!r}) has no content; give it a string",
                           f"messages.{i}.content")
        elif not isinstance(content, (str, type(None))):
            raise ApiError(400, f"messages[{i}].content is a JSON {_json_type(content)}; give a string or a list "
                                "of text parts", f"messages.{i}.content")
        out.append({**m, "content": content})
    return out


def _validation_error(e: RequestValidationError, content_type: str) -> ApiError:
    """The first validation error as one line that names the field and what it must be."""
    errs = e.errors()
    first = errs[0] if errs else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    kind = first.get("type")
    if kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    if not loc:  # the body itself: empty, not an object, or not sent as JSON
        body = e.body
        got = ("an empty body or JSON null" if body in (None, b"", "") else
               f"a JSON {_json_type(body)}" if "json" in content_type else f"a body of type {content_type or 'none'}")
        return ApiError(400, f"the request body must be a JSON object of the request's parameters (got {got}); send "
                             "one with Content-Type: application/json")
    if kind == "extra_forbidden":
        return ApiError(400, f"unsupported parameter {'.'.join(loc)!r}: this server does not know it", ".".join(loc))
    if loc[0] in SHAPES and kind != "missing":
        value = e.body.get(loc[0]) if isinstance(e.body, dict) else None
        return ApiError(400, f"{loc[0]}: must be {SHAPES[loc[0]]} (got {json.dumps(value)[:60]})", loc[0])
    got = f" (got {json.dumps(first['input'])[:60]})" if kind != "missing" and "input" in first else ""
    return ApiError(400, f"{'.'.join(loc)}: {first.get('msg', 'invalid request')}{got}", ".".join(loc))


def _sse(obj: Any) -> str:
    data = obj.model_dump_json(exclude_unset=True) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


class BodyLimit:
    """Refuse a body larger than any request the engine can take (a prompt of CHARS_PER_POSITION characters per
    position, JSON-escaped at 6 bytes per character, plus 1 MiB for the rest) with a 413: from its Content-Length
    before it is read (a 50 MB body was read and parsed), and for a chunked body (no length) as soon as the bytes
    that arrived pass the limit, without reading the rest. Plain ASGI, not an @app.middleware: that wraps the
    request's receive channel and hides a client's disconnect."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service
        self.max_body = 6 * CHARS_PER_POSITION * service.engine.max_positions + (1 << 20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self.refuse(f"has {int(length)} bytes", scope, receive, send)
            return
        body = _CountedBody(self, scope, receive, send)
        await self.app(scope, body.receive, body.send)

    async def refuse(self, size: str, scope, receive, send) -> None:
        """Answer the 413 (``size`` says how large the body is, or that it passed the limit)."""
        self.service.metrics.rejected("request_too_large")
        positions = self.service.engine.max_positions
        error = ApiError(413, f"the request body {size} and this server takes at most {self.max_body} (a prompt "
                              f"longer than the engine's {positions} positions is refused anyway); shorten the prompt",
                         code="request_too_large")
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)


class _CountedBody:
    """One request's ``receive`` and ``send`` under BodyLimit: counts the body's bytes as they arrive; past the
    limit it answers the 413 itself and tells the app the client left (it stops reading; what it answers then
    is dropped). Every other message, a client's disconnect included, passes through as it came."""

    def __init__(self, limit: BodyLimit, scope, receive, send):
        self.limit, self.scope, self._receive, self._send = limit, scope, receive, send
        self.seen = 0
        self.started = False  # the app began its response: too late for a 413
        self.refused = False

    async def receive(self) -> dict:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit.max_body:
                self.refused = True
                if not self.started:
                    await self.limit.refuse(f"has at least {self.seen} bytes (counted as they arrived: no "
                                            "Content-Length)", self.scope, self._receive, self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: dict) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def build_app(service: Service) -> FastAPI:
    """The FastAPI app of one served model."""
    app = FastAPI(title="dllm-trt", description=f"OpenAI-compatible server for {service.model}")

    app.add_middleware(BodyLimit, service=service)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        if e.status < 500 and e.code != "queue_full":
            service.metrics.rejected(e.code or "invalid_request")
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(http: Request, e: RequestValidationError):
        service.metrics.rejected("invalid_request")
        return JSONResponse(_validation_error(e, http.headers.get("content-type", "")).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):
        """A bug, not the client's fault: still OpenAI's body (not a bare text 500); uvicorn logs the traceback."""
        return JSONResponse(ApiError(500, f"internal server error ({type(e).__name__}: {e}); the server's log has "
                                          "the details", type_="server_error").body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail), type_="invalid_request_error").body(),
                            status_code=e.status_code)

    def check_model(name: str) -> None:
        if name != service.model:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {service.model!r} "
                                "(GET /v1/models)", "model", code="model_not_found")

    def max_tokens_of(req: _Common) -> int:
        n = getattr(req, "max_completion_tokens", None) or req.max_tokens
        return n or service.default_max_tokens

    def overrides(req: _Common) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if req.temperature is not None:
            out["temperature"] = req.temperature
        if req.top_p is not None:
            out["top_p"] = req.top_p
        if req.seed is not None:
            out["seed"] = req.seed
        return out

    async def start(http: Request, ids: list[int], req: _Common) -> tuple[AsyncIterator[Delta], Delta | None]:
        """Submit and wait for the first delta, so that bad requests and a full queue answer 4xx before any
        streaming starts."""
        gen = service.stream(ids, max_tokens_of(req), _stops(req), http.is_disconnected, **overrides(req))
        try:
            first = await gen.__anext__()
        except StopAsyncIteration:
            return gen, None
        except QueueFull as e:
            raise ApiError(429, str(e), type_="rate_limit_error", code="queue_full") from None
        except RequestFailed as e:
            raise _failed(e) from None
        except DllmError as e:
            raise _refused(e, req) from None
        return gen, first

    async def collect(gen: AsyncIterator[Delta], first: Delta | None) -> Delta:
        text, last = [], first
        if first is not None:
            text.append(first.text)
        if first is None or first.finish_reason is None:
            try:
                async for d in gen:
                    text.append(d.text)
                    last = d
            except RequestFailed as e:
                raise _failed(e) from None
        if last is None:  # the client went away
            raise ApiError(499, "client disconnected")
        return Delta("".join(text), last.finish_reason, last.completion_tokens)

    def usage(ids: list[int], n: int) -> CompletionUsage:
        return CompletionUsage(prompt_tokens=len(ids), completion_tokens=n, total_tokens=len(ids) + n)

    def sse_errors(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async def wrapped():
            try:
                async for c in chunks:
                    yield c
            except RequestFailed as e:
                yield _sse(_failed(e).body())
            except Exception as e:  # a bug mid-stream: the headers are sent, so say it in the stream and end it
                log.exception("a streamed answer failed")
                yield _sse(ApiError(500, f"internal server error ({type(e).__name__}: {e}); the server's log has "
                                         "the details", type_="server_error").body())
            yield "data: [DONE]\n\n"
        return wrapped()

    # ------------------------------------------------------------------ routes
    @app.api_route("/health", methods=["GET", "HEAD"])  # load balancers probe with HEAD too
    async def health():
        """200 while the engine steps; 503 while a crashed engine restarts, and for good once it crashed past its
        restart budget (requests fail): replace the server then."""
        ok = service.healthy
        body = {"status": "ok" if ok else "error", "model": service.model, "backend": service.backend_name,
                "active": service.engine.active, "queued": service.engine.queue_length}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return Model(id=service.model, created=service.created, object="model", owned_by="dllm-trt").model_dump()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: Request):
        check_model(req.model)
        _unsupported(req)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise ApiError(400, f"one prompt per request (got {len(prompt)}); send them as separate requests "
                                    "(they are batched on the server)", "prompt")
            prompt = prompt[0]
        try:  # in a worker thread: a long text must not stall every other request on the event loop
            ids = await run_in_threadpool(service.prompt_ids, prompt)
        except DllmError as e:
            raise _refused(e, req) from None
        gen, first = await start(http, ids, req)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: str | None, n: int | None = None) -> Completion:
            choice = CompletionChoice.model_construct(text=text, index=0, logprobs=None, finish_reason=reason)
            return Completion.model_construct(id=rid, object="text_completion", created=created, model=service.model,
                                              choices=[choice], **({"usage": usage(ids, n)} if n is not None else {}))

        if not req.stream:
            d = await collect(gen, first)
            return Completion(id=rid, object="text_completion", created=created, model=service.model,
                              choices=[CompletionChoice(text=d.text, index=0, finish_reason=d.finish_reason)],
                              usage=usage(ids, d.completion_tokens)).model_dump(exclude_none=True)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            d = first
            try:
                while d is not None:
                    yield _sse(chunk(d.text, d.finish_reason))
                    if d.finish_reason is not None:
                        if include_usage:
                            yield _sse(Completion.model_construct(id=rid, object="text_completion", created=created,
                                                                  model=service.model, choices=[],
                                                                  usage=usage(ids, d.completion_tokens)))
                        return
                    d = await anext(gen, None)
            finally:
                await gen.aclose()  # a client gone mid-stream: cancel the request, free its slot

        return StreamingResponse(sse_errors(events()), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, http: Request):
        check_model(req.model)
        _unsupported(req)
        messages = _chat_messages(req.messages)
        try:  # in a worker thread, as completions' prompts
            ids = await run_in_threadpool(service.chat_ids, messages)
        except DllmError as e:
            raise _refused(e, req) from None
        gen, first = await start(http, ids, req)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not req.stream:
            d = await collect(gen, first)
            msg = ChatCompletionMessage(role="assistant", content=d.text)
            return ChatCompletion(id=rid, object="chat.completion", created=created, model=service.model,
                                  choices=[ChatChoice(index=0, message=msg, finish_reason=d.finish_reason)],
                                  usage=usage(ids, d.completion_tokens)).model_dump(exclude_none=True)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: ChoiceDelta, reason: str | None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created, model=service.model,
                                       choices=[ChunkChoice(index=0, delta=delta, finish_reason=reason)])

        async def events():
            d = first
            try:
                yield _sse(chunk(ChoiceDelta(role="assistant", content=""), None))
                while d is not None:
                    if d.text:
                        yield _sse(chunk(ChoiceDelta(content=d.text), None))
                    if d.finish_reason is not None:
                        yield _sse(chunk(ChoiceDelta(), d.finish_reason))
                        if include_usage:
                            yield _sse(ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created,
                                                           model=service.model, choices=[],
                                                           usage=usage(ids, d.completion_tokens)))
                        return
                    d = await anext(gen, None)
            finally:
                await gen.aclose()

        return StreamingResponse(sse_errors(events()), media_type="text/event-stream")

    return app

