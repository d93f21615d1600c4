"""Scale-out on Ray Serve: the same FastAPI app as a Ray Serve deployment, one :class:`Service` (one
batching engine) per replica, ``num_gpus`` per replica, a fixed replica count or autoscaling on the
requests each replica has in flight. One replica on a laptop (a local Ray started on the spot) and
many on a cluster (``ray start --head`` / ``ray start --address``, or KubeRay) run the same code; see
docs/serving.md."""
from __future__ import annotations

from typing import Any

from ray import serve

from .openai_api import build_app
from .service import ServeOptions, Service

APP_NAME = "dllm-trt"


@serve.deployment(name="dllm")
@serve.ingress()
class DllmDeployment:
    """One replica: loads the engine folder (which must exist at the same path on every node) and
    serves the OpenAI routes through @serve.ingress, the app built once the Service is up."""

    def __init__(self, opts: ServeOptions):
        self.service = Service(opts)

    def __serve_build_asgi_app__(self):
        return build_app(self.service)

    def check_health(self) -> None:
        """Ray Serve's probe of a replica (it does not read /health): a replica whose engine crashed past its
        restart budget fails it, so that Serve replaces the replica (a crash within the budget restarts the
        engine in place and the probe passes)."""
        if self.service.given_up:
            raise RuntimeError("the decode engine crashed past its restart budget (the replica's log has why); "
                               "this replica must be replaced")

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def deployment(opts: ServeOptions, replicas: int = 1, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
               autoscale: tuple[int, int] | None = None) -> Any:
    """The bound application. Ray Serve's default of 5 requests in flight per replica would starve the
    batch: a replica takes up to max_batch + max_queue, and autoscaling aims at max_batch per replica."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        "max_ongoing_requests": opts.max_batch + opts.max_queue,
    }
    if autoscale is not None:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": opts.max_batch}
    else:
        options["num_replicas"] = replicas
    return DllmDeployment.options(**options).bind(opts)


def app_builder(args: dict[str, Any]) -> Any:
    """The application from plain key/values, for Ray Serve's config files and KubeRay's ``serveConfigV2``
    (``import_path: dllm_trt.serving.ray_app:app_builder``) and ``serve run ... engine=DIR``. Keys: engine
    (required), backend, provider, max_batch, max_queue, max_model_len, model_name, no_stop, replicas,
    gpus_per_replica, cpus_per_replica, autoscale ("MIN:MAX"), and decode settings (strategy, cache ...)."""
    from .service import DECODE_FIELDS

    a = dict(args)
    if "engine" not in a:
        raise ValueError("app_builder needs engine=DIR (the export / build folder, at the same path on every node)")
    num = {"max_batch": int, "max_queue": int, "max_model_len": int, "replicas": int, "gpus_per_replica": float,
           "cpus_per_replica": float, "gen_length": int, "block_length": int, "steps": int, "sub_block_length": int,
           "threshold": float, "factor": float, "temperature": float, "top_p": float, "top_k": int, "seed": int}
    for k, cast in num.items():
        if a.get(k) is not None:
            a[k] = cast(a[k])
    opts = ServeOptions(str(a["engine"]), a.get("backend", "ort"), a.get("provider", "cpu"), a.get("max_batch", 8),
                        a.get("max_queue", 256), a.get("max_model_len"), a.get("model_name"),
                        {k: a[k] for k in DECODE_FIELDS if a.get(k) is not None},
                        str(a.get("no_stop", "false")).lower() in ("1", "true", "yes"))
    scale = a.get("autoscale")
    autoscale = tuple(int(x) for x in str(scale).split(":")) if scale else None
    return deployment(opts, a.get("replicas", 1), a.get("gpus_per_replica", 0.0), a.get("cpus_per_replica", 1.0),
                      autoscale)


def start(opts: ServeOptions, host: str, port: int, address: str | None = None, replicas: int = 1,
          gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0, autoscale: tuple[int, int] | None = None,
          ray_init: dict[str, Any] | None = None) -> str:
    """Connect to (``address``) or start a local Ray, start Serve's HTTP proxy on host:port, deploy the
    model; returns the URL. Returns once every replica is up."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, **(ray_init or {}))
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(opts, replicas, gpus_per_replica, cpus_per_replica, autoscale), name=APP_NAME,
              route_prefix="/")
    return f"http://{host}:{port}"


def stop() -> None:
    serve.delete(APP_NAME)
