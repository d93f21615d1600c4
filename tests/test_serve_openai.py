"""`dllm-trt serve` over HTTP, driven by the official ``openai`` client: completions and chat (streaming
and not) equal `dllm-trt run`, 32 concurrent streams share the batch and each equals its solo run, a
late request is answered before the running batch ends, a bounded load test, client disconnects free
their slots, and every bad request gets its 4xx while the server keeps answering. The servers are
uvicorn threads bound to 127.0.0.1, stopped by the fixtures."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
from dllm_trt.runtime import generate  # noqa: E402
from dllm_trt.serving.loadgen import percentile, run_load_sync, task_prompts  # noqa: E402
from dllm_trt.serving.openai_api import build_app  # noqa: E402
from dllm_trt.serving.server import serve_in_thread  # noqa: E402
from dllm_trt.serving.service import ServeOptions, Service, _TextStream  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAT_CKPT = REPO / "tests" / "fixtures" / "upstream" / "llada"  # LLaDA layout with LLaDA-8B-Instruct's template


class Running:
    def __init__(self, service: Service):
        self.service = service
        self.http = serve_in_thread(build_app(service))
        self.url = self.http.url
        self.model = service.model
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=120)

    def stop(self) -> None:
        self.http.stop()
        self.service.close()

    def solo_text(self, prompt_ids: list[int], max_tokens: int | None = None, **overrides) -> str:
        """What the model gives this prompt alone (generate() on the same backend, as `dllm-trt run`)."""
        eng = self.service.engine
        m = max_tokens or self.service.default_max_tokens
        tokens = generate(eng.backend, [prompt_ids], eng.request_gen(m, **overrides)).tokens[0][:m]
        return self.service.tokenizer.decode(tokens)

    def metric(self, name: str) -> float:
        body = httpx.get(self.url + "/metrics").text
        m = re.search("^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", body, re.M)
        assert m, f"{name} not in /metrics"
        return float(m.group(1))


@pytest.fixture(scope="module")
def llada(bundled_export):
    """llada-tiny with the folder's settings (stop at EOS)."""
    r = Running(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=8)))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def nostop(bundled_export):
    """llada-tiny decoding every max_tokens (no EOS stop): long, mixed-length answers."""
    r = Running(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=8, no_stop=True,
                                     model_name="llada-nostop")))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def chat(bundled_export):
    r = Running(Service(ServeOptions(str(bundled_export(str(CHAT_CKPT))), max_batch=4)))
    yield r
    r.stop()


def run_cli(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------- equality with `dllm-trt run`
@pytest.mark.parametrize("prompt", ["add:457+368=", "rev:kernel=", "sort:tensorrt="])
def test_completions_equal_dllm_trt_run(llada, prompt, capsys):
    want = run_cli(capsys, ["run", "--engine", str(llada.service.folder), "--prompt", prompt])["answers"][0]
    r = llada.client.completions.create(model=llada.model, prompt=prompt, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    n = len(llada.service.tokenizer.encode(want))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(llada.service.tokenizer.encode(prompt)), n)
    chunks = list(llada.client.completions.create(model=llada.model, prompt=prompt, temperature=0, stream=True,
                                                  stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # streamed as committed, not at the end
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n


def test_length_finish_and_token_prompts(nostop):
    ids = nostop.service.tokenizer.encode("rev:kernel=")
    r = nostop.client.completions.create(model=nostop.model, prompt=ids, max_tokens=13)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 13
    assert r.choices[0].text == nostop.solo_text(ids, 13)


def test_chat_equals_dllm_trt_run_messages(chat, capsys, tmp_path):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    f = tmp_path / "m.json"
    f.write_text(json.dumps(messages))
    want = run_cli(capsys, ["run", "--engine", str(chat.service.folder), "--messages", str(f)])["answers"][0]
    r = chat.client.chat.completions.create(model=chat.model, messages=messages, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    chunks = list(chat.client.chat.completions.create(model=chat.model, messages=messages, stream=True,
                                                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}]
    assert chat.client.chat.completions.create(model=chat.model, messages=parts).choices[0].message.content == want


def test_stop_strings(llada):
    for stop in ("2", ["25"], ["zz", "5"]):
        r = llada.client.completions.create(model=llada.model, prompt="add:457+368=", stop=stop)
        assert (r.choices[0].text, r.choices[0].finish_reason) == ("8" if stop != ["zz", "5"] else "82", "stop")
        s = llada.client.completions.create(model=llada.model, prompt="add:457+368=", stop=stop, stream=True)
        assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    t = _TextStream(lambda ids: "".join(chr(97 + i) for i in ids), ["cde"])
    assert t.feed([0, 1, 2]) == ("ab", False)  # "c" may start the stop string: held back
    assert t.feed([3]) == ("", False)
    assert t.feed([4, 5]) == ("", True)  # "abcdef": cut before "cde"
    t = _TextStream(lambda ids: "".join(chr(97 + i) for i in ids), ["cx"])
    assert t.feed([0, 2]) == ("a", False) and t.feed([3]) == ("cd", False) and t.flush() == ""


# ---------------------------------------------------------------------- batching
def test_32_concurrent_streams_share_the_batch_and_equal_solo(nostop):
    prompts = task_prompts(32, seed=1)
    lengths = [8, 16, 24, 40][:4] * 8
    out: list[str | None] = [None] * 32
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            s = nostop.client.completions.create(model=nostop.model, prompt=prompts[i], max_tokens=lengths[i],
                                                 stream=True)
            out[i] = "".join(c.choices[0].text for c in s)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    tok = nostop.service.tokenizer
    for i in range(32):
        assert out[i] == nostop.solo_text(tok.encode(prompts[i]), lengths[i]), (prompts[i], lengths[i])
    assert nostop.metric("dllm_batch_size_max") > 1
    assert nostop.metric("dllm_batch_size_count") > nostop.metric('dllm_batch_size_bucket{le="1.0",model="llada-nostop"}')


def test_late_request_is_answered_before_the_running_batch_finishes(nostop):
    long_done: list[float] = []
    started = threading.Barrier(4)

    def long(prompt: str) -> None:
        s = nostop.client.completions.create(model=nostop.model, prompt=prompt, max_tokens=104, stream=True)
        first = True
        for _ in s:
            if first:
                started.wait(30)
                first = False
        long_done.append(time.perf_counter())

    threads = [threading.Thread(target=long, args=(p,)) for p in ("rev:kernel=", "add:1+2=", "sort:onnx=")]
    for t in threads:
        t.start()
    started.wait(30)  # the batch of three is decoding
    r = nostop.client.completions.create(model=nostop.model, prompt="add:457+368=", max_tokens=8)
    answered = time.perf_counter()
    for t in threads:
        t.join(120)
    assert r.choices[0].text == nostop.solo_text(nostop.service.tokenizer.encode("add:457+368="), 8)
    assert len(long_done) == 3 and answered < min(long_done)


def test_load_300_requests_concurrency_16(llada):
    prompts = task_prompts(300, seed=2)
    lengths = [8, 16, 24][:3] * 100
    res = run_load_sync(llada.url, llada.model, prompts, concurrency=16, max_tokens=lengths)
    s = res.summary()
    print(f"\nload test (CPU): {res.requests} requests, concurrency 16: {res.errors} errors, "
          f"p50 {s['p50_s'] * 1e3:.1f} ms, p99 {s['p99_s'] * 1e3:.1f} ms, ttft p50 {s['ttft_p50_s'] * 1e3:.1f} ms, "
          f"{s['tokens_per_second']:.1f} tok/s, {s['requests_per_second']:.1f} req/s, {res.seconds:.2f} s")
    assert res.errors == 0, res.error_messages[:3]
    tok, solo = llada.service.tokenizer, {}
    for p, m, text in zip(prompts, lengths, res.texts):
        if (p, m) not in solo:
            solo[(p, m)] = llada.solo_text(tok.encode(p), m)
        assert text == solo[(p, m)], (p, m)
    assert res.completion_tokens == sum(len(tok.encode(t)) for t in res.texts)
    assert 0 < percentile(res.latencies, 50) <= percentile(res.latencies, 99)


class _Slow:
    """The backend with a delay per forward, so that answers take seconds and clients can leave mid-way."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.config = inner, delay, inner.config

    def allocate_cache(self, batch, capacity):
        return self.inner.allocate_cache(batch, capacity)

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.forward(*args, **kwargs)


def test_client_disconnects_free_their_slots(bundled_export):
    r = Running(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=4, no_stop=True, model_name="slow")))
    engine = r.service.engine
    engine.backend = _Slow(engine.backend, 0.02)  # 112 tokens, one per step: > 2 s per answer
    try:
        with httpx.Client(timeout=60) as http:
            streams = []
            for i in range(engine.max_batch):  # every slot taken by a long stream
                cm = http.stream("POST", r.url + "/v1/completions",
                                 json={"model": "slow", "prompt": f"add:{i}+1=", "max_tokens": 112, "stream": True})
                resp = cm.__enter__()
                lines = resp.iter_lines()  # kept: a dropped iterator closes the response
                assert next(lines).startswith("data: ")  # the first chunk arrived: the request holds a slot
                streams.append((cm, resp, lines))
            assert engine.active == engine.max_batch
            t0 = time.perf_counter()
            for cm, resp, _ in streams:  # the clients go away mid-stream
                resp.close()
                cm.__exit__(None, None, None)
        deadline = time.monotonic() + 20
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.02)
        freed = time.perf_counter() - t0
        assert engine.active == 0 and sorted(engine._free) == list(range(engine.max_batch))
        assert freed < 1.5, freed  # left at once, long before their 112 steps were done
        assert r.metric('dllm_requests_total{model="slow",reason="cancelled"}') == engine.max_batch
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up on a non-streaming answer
            httpx.post(r.url + "/v1/completions", json={"model": "slow", "prompt": "add:1+2=", "max_tokens": 112},
                       timeout=0.5)
        t0 = time.perf_counter()
        while engine.active and time.perf_counter() - t0 < 20:
            time.sleep(0.02)
        assert engine.active == 0 and time.perf_counter() - t0 < 1.5  # noticed within the 0.5 s poll
        good = r.client.completions.create(model="slow", prompt="rev:kernel=", max_tokens=8)
        assert good.choices[0].text == r.solo_text(r.service.tokenizer.encode("rev:kernel="), 8)
    finally:
        r.stop()


# ---------------------------------------------------------------------- errors
BAD = [
    ("malformed JSON", "/v1/completions", '{"model": "llada-tiny", "prompt": ', 400, "not valid JSON"),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
    ("prompt too long", "/v1/completions", {"prompt": "add:" + "1" * 130 + "="}, 400, "more than this engine's 128"),
    ("max_tokens too large", "/v1/completions", {"prompt": "add:1+2=", "max_tokens": 500}, 400, "shorten the prompt or max_tokens"),
    ("max_tokens 0", "/v1/completions", {"prompt": "add:1+2=", "max_tokens": 0}, 400, "max_tokens"),
    ("n > 1", "/v1/completions", {"prompt": "x", "n": 2}, 400, "'n' is not supported"),
    ("logprobs", "/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "'logprobs' is not supported"),
    ("unknown parameter", "/v1/completions", {"prompt": "x", "frobnicate": 1}, 400, "unsupported parameter 'frobnicate'"),
    ("five stops", "/v1/completions", {"prompt": "x", "stop": list("abcde")}, 400, "at most 4 stop"),
    ("negative temperature", "/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("two prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("token id out of range", "/v1/completions", {"prompt": [5, 9999]}, 400, "token ids must lie in"),
    ("no chat template", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400,
     "has no chat template"),
    ("tools", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "'tools' is not supported"),
    ("missing messages", "/v1/chat/completions", {}, 400, "messages"),
    ("unknown route", "/v1/embeddings", {"input": "x"}, 404, "Not Found"),
]


@pytest.mark.parametrize("what,path,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_its_4xx_and_the_server_goes_on(llada, what, path, body, status, message):
    if isinstance(body, dict):
        body = json.dumps({"model": llada.model, **body})
    r = httpx.post(llada.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"]
    good = llada.client.completions.create(model=llada.model, prompt="add:457+368=")
    assert good.choices[0].text == "825"


def test_openai_client_raises_the_documented_errors(llada):
    with pytest.raises(openai.NotFoundError):
        llada.client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="not supported"):
        llada.client.completions.create(model=llada.model, prompt="x", echo=True)


def test_queue_full_is_429_and_the_server_recovers(bundled_export):
    r = Running(Service(ServeOptions(str(bundled_export("llada-tiny")), max_batch=1, max_queue=0, model_name="one")))
    hold = threading.Event()
    try:
        eng = r.service.engine
        blocker = eng.submit(r.service.tokenizer.encode("rev:kernel="), 16, on_event=lambda ev: hold.wait(30))
        deadline = time.monotonic() + 10
        while eng.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError, match="retry later"):
            r.client.completions.create(model="one", prompt="add:1+2=")
        assert r.metric('dllm_rejected_requests_total{model="one",why="queue_full"}') == 1
        hold.set()
        deadline = time.monotonic() + 10
        while not blocker.finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.client.completions.create(model="one", prompt="add:457+368=").choices[0].text == "825"
    finally:
        hold.set()
        r.stop()


def test_health_models_and_metrics(llada):
    h = httpx.get(llada.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == llada.model and h["backend"] == "onnxruntime cpu"
    assert [m.id for m in llada.client.models.list()] == [llada.model]
    llada.client.completions.create(model=llada.model, prompt="add:1+2=")
    body = httpx.get(llada.url + "/metrics").text
    for name in ("dllm_requests_total", "dllm_queue_length", "dllm_active_requests", "dllm_batch_size_bucket",
                 "dllm_step_seconds_bucket", "dllm_tokens_per_second", "dllm_generated_tokens_total",
                 "dllm_request_seconds_bucket", "dllm_time_to_first_token_seconds_bucket"):
        assert name in body, name
    assert llada.metric("dllm_generated_tokens_total") > 0 and llada.metric("dllm_tokens_per_second") > 0


# ---------------------------------------------------------------------- the command
def test_cli_serve_starts_answers_and_stops(bundled_export):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "dllm_trt.cli", "serve", "--engine", str(bundled_export("llada-tiny")),
                             "--port", "0", "--max-batch", "4", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["url"].startswith("http://127.0.0.1:") and ready["max_batch"] == 4 and ready["ray"] is False
        client = openai.OpenAI(base_url=ready["url"] + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model=ready["model"], prompt="add:457+368=").choices[0].text == "825"
    finally:
        proc.terminate()
        rc = proc.wait(30)
    assert rc in (0, 143), proc.stderr.read()


@pytest.mark.parametrize("argv,message", [
    (["--engine", "/nonexistent/dir"], "is not a folder"),
    (["--max-batch", "0"], "--max-batch 0 is out of range"),
    (["--autoscale", "3:1"], "--autoscale '3:1'"),
    (["--port", "70000"], "out of range 0..65535"),
    (["--threshold", "2"], "--threshold 2.0 is out of range"),
    (["--replicas", "2", "--provider", "cuda"], "give --gpus-per-replica"),
    (["--elastic-window", "8"], "--elastic-window applies to --cache-refresh elastic only"),
    (["--radius", "2"], "--radius applies to --strategy local_leap only"),
])
def test_cli_serve_bad_options(bundled_export, capsys, argv, message):
    base = ["serve", "--engine", str(bundled_export("llada-tiny"))]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_served_methods_and_cache_refresh_equal_dllm_trt_run(bundled_export, capsys):
    """`dllm-trt serve` takes the decoding methods' knobs and the cache-refresh policies as its defaults
    (options_from_args -> ServeOptions.decode), and answers as `dllm-trt run` with the same options."""
    from dllm_trt.cli import build_parser
    from dllm_trt.serving.cli import options_from_args

    folder = str(bundled_export("llada-tiny"))
    extra = ["--strategy", "threshold", "--threshold", "0.7", "--cache", "dual", "--cache-refresh", "dllm_cache",
             "--dllm-response-interval", "2", "--dllm-refresh-ratio", "0.5"]
    opts = options_from_args(build_parser().parse_args(["serve", "--engine", folder, "--max-batch", "4"] + extra))
    assert opts.decode["cache_refresh"] == "dllm_cache" and opts.decode["dllm_refresh_ratio"] == 0.5
    r = Running(Service(opts))
    try:
        for prompt in ("add:457+368=", "rev:kernel="):
            want = run_cli(capsys, ["run", "--engine", folder, "--prompt", prompt] + extra)["answers"][0]
            assert r.client.completions.create(model=r.model, prompt=prompt, temperature=0).choices[0].text == want
    finally:
        r.stop()


def test_export_without_tokenizer_serves_token_ids(bundled_export, tmp_path):
    """A folder without tokenizer.json (a random-weight benchmark export) takes token-id prompts and
    answers the ids as text; a text prompt is a clear 400."""
    import shutil

    src = bundled_export("llada-tiny")
    folder = tmp_path / "notok"
    shutil.copytree(src, folder)
    (folder / "tokenizer.json").unlink()
    r = Running(Service(ServeOptions(str(folder), max_batch=2)))
    try:
        from dllm_trt.runtime import TextTokenizer

        tok = TextTokenizer(src)
        ids = tok.encode("add:457+368=")
        want = generate(r.service.backend, [ids], r.service.engine.request_gen(16)).tokens[0]
        got = r.client.completions.create(model="notok", prompt=ids)
        assert got.choices[0].text == "".join(f" {i}" for i in want) and tok.decode(want) == "825"
        with pytest.raises(openai.BadRequestError, match="has no tokenizer.json; this server takes prompts as token ids"):
            r.client.completions.create(model="notok", prompt="add:1+2=")
    finally:
        r.stop()
