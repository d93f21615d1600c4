"""Scale-out on Ray Serve: the same OpenAI app as a Ray Serve deployment with two replicas on one
module-scoped local Ray (start-up takes ~7 s and ~1 GB on a 2-core CI machine, so once)."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("onnxruntime")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from dllm_trt.runtime import TextTokenizer, generate  # noqa: E402
from dllm_trt.runtime.backends.ort_backend import OrtBackend  # noqa: E402
from dllm_trt.runtime.engine_loop import BatchEngine  # noqa: E402
from dllm_trt.serving import ray_app  # noqa: E402
from dllm_trt.serving.server import bind  # noqa: E402
from dllm_trt.serving.service import ServeOptions  # noqa: E402


@pytest.fixture(scope="module")
def cluster(bundled_export):
    """A local Ray (4 logical CPUs on however many cores), Serve's proxy on a free port, two replicas."""
    engine = bundled_export("llada-tiny")
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # Serve's proxy binds it
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        url = ray_app.start(ServeOptions(str(engine), max_batch=4, no_stop=True, model_name="tiny"), "127.0.0.1",
                            port, replicas=2, cpus_per_replica=1)
        yield url, engine
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_openai_routes_with_solo_tokens(cluster):
    url, engine = cluster
    status = serve.status().applications[ray_app.APP_NAME]
    assert status.status == "RUNNING"
    replicas = status.deployments["dllm"].replica_states
    assert replicas.get("RUNNING") == 2, replicas
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["tiny"]
    be, tok = OrtBackend.from_pretrained(engine), TextTokenizer(engine)
    ref = BatchEngine(be, _gen(engine), max_batch=1)  # only for request_gen: the settings a request runs with
    prompts = ["add:457+368=", "rev:kernel=", "sort:tensorrt=", "add:1+2=", "rev:diffusion=", "sort:zyx="] * 2
    out: list[str | None] = [None] * len(prompts)

    def one(i: int) -> None:
        s = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=24, stream=i % 2 == 0)
        out[i] = "".join(c.choices[0].text for c in s) if i % 2 == 0 else s.choices[0].text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p, text in zip(prompts, out):
        want = generate(be, [tok.encode(p)], ref.request_gen(24)).tokens[0][:24]
        assert text == tok.decode(want), p
    bad = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "n": 3})
    assert bad.status_code == 400 and "'n' is not supported" in bad.json()["error"]["message"]
    assert "dllm_batch_size_bucket" in httpx.get(url + "/metrics").text
    assert httpx.get(url + "/health").json()["status"] == "ok"


def _gen(engine):
    """The replicas' settings: the folder's, no EOS stop."""
    import argparse

    from dllm_trt.runtime.settings import generation_config_from_args

    return generation_config_from_args(engine, argparse.Namespace(no_stop=True))


def test_app_builder_for_config_files_and_kuberay(cluster):
    """serveConfigV2's import_path: key/values (strings, as YAML gives them) become the deployment's options."""
    _, engine = cluster
    app = ray_app.app_builder({"engine": str(engine), "max_batch": "16", "replicas": "3", "gpus_per_replica": "1",
                               "strategy": "threshold", "no_stop": "true"})
    d = app._bound_deployment
    assert d.num_replicas == 3 and d.ray_actor_options["num_gpus"] == 1.0
    assert d.max_ongoing_requests == 16 + 256
    opts = d.init_args[0]
    assert opts.max_batch == 16 and opts.decode == {"strategy": "threshold"} and opts.no_stop
    scaled = ray_app.app_builder({"engine": str(engine), "autoscale": "1:4"})._bound_deployment
    assert scaled._deployment_config.autoscaling_config.max_replicas == 4
    with pytest.raises(ValueError, match="engine=DIR"):
        ray_app.app_builder({})


def test_a_replica_whose_engine_gave_up_fails_ray_serves_health_check():
    """Ray Serve does not read /health: its check_health probe of a replica fails once the engine crashed past its
    restart budget (Service.given_up, tests/test_serve_hardening.py), so that Serve replaces the replica."""
    from types import SimpleNamespace

    replica = ray_app.DllmDeployment.func_or_class
    replica.check_health(SimpleNamespace(service=SimpleNamespace(given_up=False)))  # a restart in place passes
    with pytest.raises(RuntimeError, match="restart budget"):
        replica.check_health(SimpleNamespace(service=SimpleNamespace(given_up=True)))
