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
