"""`dllm-trt serve` against hostile and sloppy clients (a reliability audit): wrong JSON types are refused
rather than coerced, every error body is OpenAI's shape with a message that names the field and the fix,
a chat message the template cannot take is a 400 (never a 500), a huge prompt is refused without
tokenizing it on the event loop, an unexpected failure is a JSON 500 (or an SSE error event followed by
``[DONE]``) that frees its slot, GET /v1/models/{id} answers, startup errors name the bad option, a refusal names
the field at fault in ``param``, a chunked body past the limit is a 413 as it arrives, and a crashed engine is
restarted (its requests 503, bounded: past the budget /health stays 503)."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from dllm_trt.cli import main  # noqa: E402
from dllm_trt.serving import service as service_module  # noqa: E402
from dllm_trt.serving.service import ServeOptions, Service  # noqa: E402
from test_serve_openai import Running  # noqa: E402  (one in-process server helper)

CHAT_CKPT = Path(__file__).resolve().parent / "fixtures" / "upstream" / "llada"  # LLaDA-8B-Instruct's template


class Served(Running):
    """test_serve_openai's in-process server, plus raw posts (bodies a client library would not send)."""

    def post(self, path: str, body, content_type: str = "application/json", timeout: float = 60) -> httpx.Response:
        content = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers={"content-type": content_type}, timeout=timeout)


@pytest.fixture(scope="module")
def llada(bundled_export):
    s = Served(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=4)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def chat(bundled_export):
    s = Served(Service(ServeOptions(str(bundled_export(str(CHAT_CKPT))), max_batch=4)))
    yield s
    s.stop()


def assert_openai_error(r: httpx.Response, status: int, message: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert message in err["message"], err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


# ---------------------------------------------------------------------- wrong types are refused, not coerced
TYPES = [
    ("max_tokens as a string", {"prompt": "add:1+2=", "max_tokens": "10"}, "max_tokens: Input should be a valid integer",
     "max_tokens"),
    ("max_tokens as a boolean", {"prompt": "add:1+2=", "max_tokens": True}, "max_tokens: Input should be a valid integer",
     "max_tokens"),
    ("stream as a string", {"prompt": "add:1+2=", "stream": "yes"}, "stream: Input should be a valid boolean", "stream"),
    ("booleans as token ids", {"prompt": [True, False]}, "prompt: must be a string, a list of token ids", "prompt"),
    ("prompt as a number", {"prompt": 5}, "prompt: must be a string, a list of token ids", "prompt"),
    ("stop as a number", {"prompt": "add:1+2=", "stop": 5}, "stop: must be a string or a list of up to 4 strings",
     "stop"),
    ("stop as a list of numbers", {"prompt": "add:1+2=", "stop": [1]},
     "stop: must be a string or a list of up to 4 strings", "stop"),
    ("seed beyond 64 bits (would alias a smaller seed)", {"prompt": "add:1+2=", "seed": 2 ** 64}, "seed", "seed"),
]


@pytest.mark.parametrize("what,body,message,param", TYPES, ids=[t[0] for t in TYPES])
def test_wrong_json_types_are_refused_with_the_field_named(llada, what, body, message, param):
    assert_openai_error(llada.post("/v1/completions", {"model": llada.model, **body}), 400, message, param)
    assert llada.client.completions.create(model=llada.model, prompt="add:457+368=").choices[0].text == "825"


BODIES = [
    ("empty body", "", "application/json"),
    ("a JSON array", "[1, 2]", "application/json"),
    ("JSON null", "null", "application/json"),
    ("curl -d without a content type", '{"model": "llada-tiny", "prompt": "add:1+2="}',
     "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize("what,body,content_type", BODIES, ids=[b[0] for b in BODIES])
def test_a_body_that_is_not_a_json_object_says_how_to_send_one(llada, what, body, content_type):
    for path in ("/v1/completions", "/v1/chat/completions"):
        err = assert_openai_error(llada.post(path, body, content_type), 400, "the request body must be a JSON object")
        assert "Content-Type: application/json" in err["message"]


# ---------------------------------------------------------------------- chat messages
MESSAGES = [
    ("a text part whose text is a number", [{"role": "user", "content": [{"type": "text", "text": 5}]}],
     "messages[0].content[0].text must be a string", "messages.0.content"),
    ("an unknown role", [{"role": "wizard", "content": "hi"}], "messages[0].role 'wizard' is not one of",
     "messages.0.role"),
    ("a user message without content", [{"role": "user"}], "messages[0] (role 'user') has no content",
     "messages.0.content"),
    ("a user message with null content", [{"role": "user", "content": None}], "messages[0] (role 'user') has no content",
     "messages.0.content"),
]


@pytest.mark.parametrize("what,messages,message,param", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_bad_chat_messages_are_400_never_500(chat, what, messages, message, param):
    assert_openai_error(chat.post("/v1/chat/completions", {"model": chat.model, "messages": messages}), 400, message,
                        param)
    ok = chat.client.chat.completions.create(model=chat.model, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_assistant_message_may_have_null_content(chat):
    """OpenAI's shape of an assistant turn that called tools: content null. It is no reason to refuse the chat."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "again"}]
    r = chat.post("/v1/chat/completions", {"model": chat.model, "messages": messages, "max_tokens": 4})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------- a huge prompt
def test_a_huge_prompt_is_refused_without_tokenizing_it_all(llada, monkeypatch):
    """A multi-megabyte prompt used to be tokenized whole on the event loop (50 MB: ~110 s during which even
    /health did not answer). Now at most a bounded prefix is tokenized, off the event loop."""
    tok = llada.service.tokenizer
    seen: list[int] = []
    real = tok.encode

    def encode(text: str) -> list[int]:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(tok, "encode", encode)
    huge = "add:" + "1" * 500_000 + "="  # under the body limit (test_a_body_past_any_prompt_is_413), past the prompt's
    t0 = time.perf_counter()
    r = llada.post("/v1/completions", {"model": llada.model, "prompt": huge})
    assert_openai_error(r, 400, "shorten the prompt", "prompt")
    assert max(seen) < 100_000, seen  # a prefix, not the 500 KB
    assert time.perf_counter() - t0 < 30
    seen.clear()
    r = llada.post("/v1/completions", {"model": llada.model, "prompt": "add:457+368="})
    assert r.json()["choices"][0]["text"] == "825" and seen == [len("add:457+368=")]


def test_a_body_past_any_prompt_is_413_before_it_is_read(llada):
    """A body larger than any prompt the engine could take is refused from its Content-Length (413, OpenAI's error
    body, code request_too_large), so a client cannot make the server read and parse megabytes; HEAD /health
    answers like GET (load balancers probe with it)."""
    positions = llada.service.engine.max_positions
    huge = {"model": llada.model, "prompt": "1" * (6 * 64 * positions + (1 << 20))}
    r = llada.post("/v1/completions", huge)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and "shorten the prompt" in err["message"], err
    assert llada.post("/v1/completions", {"model": llada.model, "prompt": "add:457+368="}).status_code == 200
    head = httpx.head(llada.url + "/health", timeout=30)
    assert head.status_code == 200 and head.content == b"", (head.status_code, head.content[:100])


def test_a_huge_chat_message_is_refused_without_tokenizing_it_all(chat, monkeypatch):
    tok = chat.service.tokenizer
    seen: list[int] = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text: seen.append(len(text)) or real(text))
    r = chat.post("/v1/chat/completions", {"model": chat.model,
                                           "messages": [{"role": "user", "content": "hi " * 100_000}]})
    assert_openai_error(r, 400, "shorten the prompt", "messages")
    assert max(seen) < 100_000, seen


# ---------------------------------------------------------------------- unexpected failures
def test_an_unexpected_error_is_a_json_500_and_a_stream_ends_with_done(bundled_export, monkeypatch):
    s = Served(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=2, no_stop=True,
                                    model_name="faulty")))
    try:
        tok, engine = s.service.tokenizer, s.service.engine
        real, calls = tok.decode, [0]

        def decode(ids):  # the first text delta goes out, the second decode fails
            calls[0] += 1
            if calls[0] >= 2:
                raise RuntimeError("decoder exploded")
            return real(ids)

        monkeypatch.setattr(tok, "decode", decode)
        r = s.post("/v1/completions", {"model": "faulty", "prompt": "add:1+2=", "max_tokens": 40})
        err = assert_openai_error(r, 500, "RuntimeError: decoder exploded")
        assert err["type"] == "server_error"

        calls[0] = 0
        r = s.post("/v1/completions", {"model": "faulty", "prompt": "add:1+2=", "max_tokens": 40, "stream": True})
        assert r.status_code == 200
        events = [e for e in r.text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events), events
        assert events[-1] == "data: [DONE]", events
        last = json.loads(events[-2][len("data: "):])
        assert last["error"]["type"] == "server_error" and "decoder exploded" in last["error"]["message"]

        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.active == 0  # the failed requests left their slots
        monkeypatch.setattr(tok, "decode", real)
        assert s.client.completions.create(model="faulty", prompt="add:457+368=", max_tokens=3).choices[0].text
    finally:
        s.stop()


# ---------------------------------------------------------------------- endpoints a client probes
def test_models_retrieve(llada):
    assert llada.client.models.retrieve(llada.model).id == llada.model
    with pytest.raises(openai.NotFoundError) as e:
        llada.client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"
    assert_openai_error(httpx.get(llada.url + "/v1/nothing"), 404, "Not Found")
    assert_openai_error(httpx.get(llada.url + "/v1/completions"), 405, "Method Not Allowed")


# ---------------------------------------------------------------------- startup
def test_cli_serve_bad_host_names_the_host(bundled_export, capsys):
    assert main(["serve", "--engine", str(bundled_export("llada-tiny")), "--host", "256.1.1.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host 256.1.1.1" in err and "Traceback" not in err


def test_cli_serve_port_in_use_and_not_an_export(bundled_export, capsys, tmp_path):
    """Guards (these already held): a port in use and a folder that is not an export are one line, rc 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--engine", str(bundled_export("llada-tiny")), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pick another --port" in err
    assert main(["serve", "--engine", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a dllm-trt export" in err


# ---------------------------------------------------------------------- `param` names the field at fault
PARAMS = [  # (what, fixture, path, body, message, param): engine-side refusals used to say "param": null
    ("a prompt longer than the engine", "llada", "/v1/completions", {"prompt": "add:" + "1" * 130 + "="},
     "more than this engine's 128", "prompt"),
    ("token ids longer than the engine", "llada", "/v1/completions", {"prompt": [5] * 130},
     "more than this engine's 128", "prompt"),
    ("an empty prompt", "llada", "/v1/completions", {"prompt": ""}, "the prompt is empty", "prompt"),
    ("a token id outside the vocabulary", "llada", "/v1/completions", {"prompt": [5, 9999]},
     "token ids must lie in", "prompt"),
    ("max_tokens beyond the engine", "llada", "/v1/completions", {"prompt": "add:1+2=", "max_tokens": 500},
     "shorten the prompt or max_tokens", "max_tokens"),
    ("five stop strings", "llada", "/v1/completions", {"prompt": "add:1+2=", "stop": list("abcde")},
     "at most 4 stop", "stop"),
    ("a seed beyond 64 bits", "llada", "/v1/completions", {"prompt": "add:1+2=", "seed": 2 ** 64}, "seed", "seed"),
    ("two prompts", "llada", "/v1/completions", {"prompt": ["a", "b"]}, "one prompt per request", "prompt"),
    ("a chat longer than the engine", "chat", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi " * 300}]}, "more than this engine's 256", "messages"),
    ("a chat's max_tokens beyond the engine", "chat", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}, "shorten the prompt or max_tokens",
     "max_tokens"),
    ("a chat's max_completion_tokens beyond the engine", "chat", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 500},
     "shorten the prompt or max_tokens", "max_completion_tokens"),
    ("no single field: a chat to a model without a chat template", "llada", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}]}, "has no chat template", None),
    ("no single field: a body that is not JSON", "llada", "/v1/completions", '{"prompt": ', "not valid JSON", None),
    ("no single field: a JSON array", "llada", "/v1/completions", "[1]", "must be a JSON object", None),
]


@pytest.mark.parametrize("what,fixture,path,body,message,param", PARAMS, ids=[p[0] for p in PARAMS])
def test_a_refusal_names_the_field_at_fault_in_param(request, what, fixture, path, body, message, param):
    """OpenAI's error shape names the offending field in ``param``; the engine's own checks (the prompt's and
    max_tokens' length, token ids) said null, which left a client to parse the message."""
    served = request.getfixturevalue(fixture)
    if isinstance(body, dict):
        body = {"model": served.model, **body}
    err = assert_openai_error(served.post(path, body), 400, message)
    assert err["param"] == param, err


def test_the_field_at_fault_is_found_by_asking_the_engine_again(llada):
    """Service.field_at_fault, below HTTP: the sampling overrides are range-checked by the request model first, so
    only here can an override be the field the engine refuses."""
    engine, ids = llada.service.engine, llada.service.tokenizer.encode("add:1+2=")
    fault = llada.service.field_at_fault
    assert fault(engine, [], 8, {}) == "prompt" and fault(engine, [5] * 130, 8, {}) == "prompt"
    assert fault(engine, ids, 500, {"temperature": -1.0}) == "max_tokens"
    assert fault(engine, ids, 8, {"top_p": 0.5, "temperature": -1.0}) == "temperature"
    assert fault(engine, ids, 8, {"temperature": 0.5}) is None


# ---------------------------------------------------------------------- a chunked body and the 413 limit
def _chunked(text: str, chunk: int = 1 << 16):
    """The body as a generator: httpx sends it with Transfer-Encoding: chunked and no Content-Length."""
    data = text.encode()
    for i in range(0, len(data), chunk):
        yield data[i: i + chunk]


def test_a_chunked_body_past_the_limit_is_413_without_being_parsed(llada, monkeypatch):
    """A chunked body has no Content-Length, so the 413 check on it let a body of any size be read and parsed;
    now its bytes are counted as they arrive and the answer is 413 once they pass the limit."""
    parsed: list[object] = []
    real = llada.service.prompt_ids
    monkeypatch.setattr(llada.service, "prompt_ids", lambda prompt: parsed.append(prompt) or real(prompt))
    limit = 6 * 64 * llada.service.engine.max_positions + (1 << 20)
    body = json.dumps({"model": llada.model, "prompt": "1" * (2 * limit)})
    r = httpx.post(llada.url + "/v1/completions", content=_chunked(body),
                   headers={"content-type": "application/json"}, timeout=60)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    err = assert_openai_error(r, 413, f"this server takes at most {limit}")
    assert err["code"] == "request_too_large" and "shorten the prompt" in err["message"], err
    assert parsed == []  # refused while it arrived, never handed to the route
    assert llada.post("/v1/completions", {"model": llada.model, "prompt": "add:457+368="}).status_code == 200
    host, port = llada.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # a body that never ends: answered anyway
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"1" * (1 << 16)
        for _ in range(limit // len(chunk) + 1):
            raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert raw.recv(1 << 16).startswith(b"HTTP/1.1 413 ")  # as soon as the limit passed, the rest unsent


def test_a_chunked_body_under_the_limit_is_served(llada):
    body = json.dumps({"model": llada.model, "prompt": "add:457+368="})
    r = httpx.post(llada.url + "/v1/completions", content=_chunked(body, 7),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "825"


# ---------------------------------------------------------------------- the engine thread crashes
def _raise_once(calls: list[int], real):
    """``real``, except that its first call raises (an unexpected exception inside the engine's loop)."""
    def wrapped(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("metrics exploded")
        return real(*args)
    return wrapped


def _wait_health(url: str, status: int, seconds: float = 10) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        h = httpx.get(url + "/health", timeout=5)
        if h.status_code == status or time.monotonic() > deadline:
            return h
        time.sleep(0.02)


def _crash_logs(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "decode engine crashed" in r.getMessage() and r.exc_info]


def test_a_crashed_engine_is_restarted_and_its_request_fails_with_503(bundled_export, monkeypatch, caplog):
    """An exception inside the engine's loop used to leave the server dead until someone restarted it. Now the
    request in flight fails with a 503 that says the engine crashed and was restarted (an OpenAI client retries a
    503), the crash is logged once with its traceback, a new engine takes the next requests and /health is 200."""
    caplog.set_level(logging.WARNING, logger="dllm_trt.serving")
    s = Served(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=2, no_stop=True,
                                    model_name="crashing")))
    try:
        dead = s.service.engine
        calls: list[int] = []
        monkeypatch.setattr(s.service.metrics, "observe_step", _raise_once(calls, s.service.metrics.observe_step))
        r = s.post("/v1/completions", {"model": "crashing", "prompt": "add:1+2=", "max_tokens": 40}, timeout=15)
        err = assert_openai_error(r, 503, "the decode engine crashed")
        assert "was restarted" in err["message"] and "retry" in err["message"], err
        assert err["type"] == "server_error" and err["code"] == "engine_crashed", err
        h = _wait_health(s.url, 200)
        assert h.status_code == 200 and h.json()["status"] == "ok", h.text
        assert s.service.engine is not dead and not dead.running and not s.service.given_up
        ok = s.post("/v1/completions", {"model": "crashing", "prompt": "add:457+368=", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "825", ok.text
        assert len(calls) > 1  # the new engine stepped (and observed) the request
        crashes = _crash_logs(caplog)
        assert len(crashes) == 1 and "metrics exploded" in caplog.text, caplog.text
        assert s.metric('dllm_engine_crashes_total{model="crashing"}') == 1
    finally:
        s.stop()


def test_a_crashed_stream_ends_with_the_crash_error_and_done(bundled_export, monkeypatch):
    s = Served(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=2, no_stop=True,
                                    model_name="crashing")))
    try:
        metrics = s.service.metrics
        calls: list[int] = []
        real = metrics.observe_step
        seen = threading.Event()  # the client read the stream's first chunk

        def observe(stats):  # slow steps until the stream's first chunk is read, then one crash
            if not seen.is_set():
                time.sleep(0.05)
                return real(stats)
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("metrics exploded")
            return real(stats)

        monkeypatch.setattr(metrics, "observe_step", observe)
        with httpx.stream("POST", s.url + "/v1/completions", timeout=15,
                          json={"model": "crashing", "prompt": "add:1+2=", "max_tokens": 40, "stream": True}) as r:
            assert r.status_code == 200
            events = []
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    seen.set()
        assert events[-1] == "data: [DONE]", events
        last = json.loads(events[-2][len("data: "):])
        assert last["error"]["code"] == "engine_crashed" and "was restarted" in last["error"]["message"], last
        assert _wait_health(s.url, 200).status_code == 200
    finally:
        s.stop()


def test_crashes_past_the_restart_bound_leave_health_at_503(bundled_export, monkeypatch, caplog):
    """A crash that repeats (a broken device, a bug hit by every step) must not restart forever: past
    ENGINE_RESTARTS restarts within RESTART_WINDOW_S the engine stays down, /health answers 503 so that the
    orchestrator replaces the server, one log line says so, and requests fail at once with a 503 that says so."""
    caplog.set_level(logging.WARNING, logger="dllm_trt.serving")
    monkeypatch.setattr(service_module, "ENGINE_RESTARTS", 2)
    s = Served(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=2, no_stop=True,
                                    model_name="broken")))
    try:
        def boom(stats):
            raise RuntimeError("metrics exploded")

        monkeypatch.setattr(s.service.metrics, "observe_step", boom)
        for restarted in (True, True, False):
            r = s.post("/v1/completions", {"model": "broken", "prompt": "add:1+2=", "max_tokens": 8}, timeout=15)
            err = assert_openai_error(r, 503, "the decode engine crashed")
            assert ("was restarted" in err["message"]) == restarted, err
            _wait_health(s.url, 200 if restarted else 503)
        h = _wait_health(s.url, 503)
        assert h.status_code == 503 and h.json()["status"] == "error", h.text
        assert s.service.given_up  # what Ray Serve's check_health reports (ray_app.py)
        time.sleep(0.3)
        assert httpx.get(s.url + "/health", timeout=5).status_code == 503  # and it stays down
        t0 = time.perf_counter()
        r = s.post("/v1/completions", {"model": "broken", "prompt": "add:1+2=", "max_tokens": 8}, timeout=15)
        err = assert_openai_error(r, 503, "restart the server")
        assert time.perf_counter() - t0 < 2  # at once, not after a poll
        assert len(_crash_logs(caplog)) == 3
        assert sum("not restarting it" in rec.getMessage() for rec in caplog.records) == 1, caplog.text
    finally:
        s.stop()
