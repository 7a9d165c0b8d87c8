"""Server replicas on Ray Serve: the app of vggdet/serve/app.py, N times, behind Ray's HTTP proxy
(`tools/serve.py MODEL --ray [local|ADDRESS] --replicas N [--max-replicas M]`).

    url = deploy("best.pth", ServeSettings(), host="127.0.0.1", port=8000, replicas=2)  # Ray already joined
    ...                                                  # each replica: its own predictor, batcher and limits
    undeploy()

Each replica runs `create_app(build_service(...))` — the one-process server's app, so the endpoints,
answers, limits, errors and the page are the same — built inside the replica by a builder function (Ray
Serve's `serve.ingress(builder)`): the model loads in the replica's process and `serve.run` returns once
every replica has loaded and warmed up. Every answer carries `X-Vggdet-Replica` (the replica's id).
A replica whose process dies is replaced by Serve's controller (its health check fails); requests meanwhile
go to the others. With `--max-replicas M > N`, Serve's autoscaler keeps between N and M replicas, aiming
at `max_batch` requests per replica (a full batch each). Ray's proxy answers 503 itself (plain text, not our
JSON) once `queue` requests wait for one deployment; each replica then applies its own queue as well.

The model file (and CONFIG) must be readable at the same absolute path on every node, as for Ray Data.
Ray is imported only inside these functions (the `ray` extra, `ray[data,serve]`).
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

from vggdet.inference.ray_data import PredictorFactory, Workers, ray_session
from vggdet.serve.limits import ServeSettings
from vggdet.serve.server import url_for

__all__ = ["APP_NAME", "check_model", "deploy", "undeploy", "serve_on_ray", "replica_name"]

APP_NAME = "vggdet"  # the Serve application and deployment name; its replicas' actors are named after it
HEALTH_CHECK_PERIOD_S = 2.0  # how often the controller asks each replica (a dead one is replaced after)


def replica_name() -> str:
    """This replica's id as Serve names it (the end of its actor's name); "" outside a replica."""
    try:
        from ray import serve

        ctx = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - RayServeException outside a replica, whatever the Ray version
        return ""
    rid = getattr(ctx, "replica_id", None)
    return getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", "")


def _application(factory: PredictorFactory, settings: ServeSettings, workers: Workers,
                 max_replicas: Optional[int]):
    """The bound Serve application: one deployment of `workers.count` replicas (autoscaled up to
    `max_replicas`), each with `workers.cpus` CPUs / `workers.gpus` GPUs."""
    from ray import serve

    def build_app():  # runs in each replica's process, when it starts
        from vggdet.serve.app import create_app
        from vggdet.serve.service import build_service

        service = build_service(factory.path, settings, device=factory.device, config=factory.config,
                                overrides=list(factory.overrides))
        return create_app(service, replica=replica_name())

    options = dict(name=APP_NAME, ray_actor_options={"num_cpus": workers.cpus, "num_gpus": workers.gpus},
                   max_ongoing_requests=max(settings.queue, settings.max_batch),
                   max_queued_requests=settings.queue,
                   graceful_shutdown_timeout_s=settings.drain_timeout_s,
                   health_check_period_s=HEALTH_CHECK_PERIOD_S)
    if max_replicas and max_replicas > workers.count:
        options["autoscaling_config"] = {"min_replicas": workers.count, "initial_replicas": workers.count,
                                         "max_replicas": max_replicas,
                                         "target_ongoing_requests": settings.max_batch}
    else:
        options["num_replicas"] = workers.count
    return serve.deployment(serve.ingress(build_app)(), **options).bind()


def check_model(factory: PredictorFactory) -> None:
    """Load the model once on this process (CPU, no kernel timing) so a bad file or config fails in one line
    naming it, before Ray or any replica starts; ValueError for a model without an RPN."""
    model_config, _ = factory.describe()
    if model_config.model.proposals != "rpn":
        raise ValueError(f"{factory.path}: model.proposals={model_config.model.proposals!r}; serving needs a model "
                         "with an RPN")


def deploy(model: str, settings: ServeSettings, *, host: str, port: int, replicas: int = 1,
           max_replicas: Optional[int] = None, cpus: float = 1.0, gpus: float = 0.0,
           config: Optional[str] = None, overrides: Optional[list] = None, check: bool = True) -> str:
    """Start Serve's proxy on host:port (Ray must be initialised) and run the app with its replicas; returns
    the URL once every replica is loaded and warmed up. The model is checked here first unless `check` is
    False (one line naming the file, before any replica starts)."""
    from ray import serve

    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise ValueError(f"--replicas {replicas} --max-replicas {max_replicas}: need 1 <= N <= M")
    factory = PredictorFactory(model, config, tuple(overrides or ()))
    if check:
        check_model(factory)
    workers = Workers(replicas, cpus, gpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(_application(factory.for_workers(workers), settings, workers, max_replicas), name=APP_NAME,
              route_prefix="/")
    return url_for(host, port)


def undeploy() -> None:
    """Delete the app (Serve waits for each replica's requests in flight, up to the drain timeout)."""
    from ray import serve

    serve.delete(APP_NAME)


def serve_on_ray(model: str, settings: ServeSettings, *, address: str, host: str, port: int, replicas: int,
                 max_replicas: Optional[int], cpus: float, gpus: float, config: Optional[str],
                 overrides: list, on_ready: Callable[[str], None]) -> int:
    """tools/serve.py --ray: join (or start) Ray, deploy, wait for SIGTERM / SIGINT, then delete the app
    (requests in flight finish) and shut Serve down when this process started it; -> 0."""
    stop = threading.Event()
    check_model(PredictorFactory(model, config, tuple(overrides)))  # before Ray starts: a bad file fails at once
    with ray_session(address):
        from ray import serve

        # after ray.init, which installs its own SIGTERM handler (it would end the process without a drain)
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            url = deploy(model, settings, host=host, port=port, replicas=replicas, max_replicas=max_replicas,
                         cpus=cpus, gpus=gpus, config=config, overrides=overrides, check=False)
            on_ready(url)
            while not stop.wait(0.5):
                pass
            print("stopping: the replicas finish the requests in flight", flush=True)
            undeploy()
            if address == "local":
                serve.shutdown()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return 0

