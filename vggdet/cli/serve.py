"""Serve a trained detector over HTTP: a JSON API with dynamic batching, and a web page (vggdet/serve/).

python tools/serve.py [CONFIG] MODEL [--host 127.0.0.1] [--port 8000] [--device auto|cpu|cuda]
       [--max-batch 8] [--max-wait-ms 5] [--queue 64] [--max-upload-mb 25] [--max-pixels 40000000]
       [--api-key KEY] [--set k=v ...]
       [--ray [local|ADDRESS] [--replicas N] [--max-replicas M] [--replica-cpus C] [--replica-gpus G]]

MODEL is a .pth checkpoint, a .onnx export or an int8 .onnx export (CONFIG only for a bare state_dict). The
URL is printed once the model is loaded and warmed up: the page at /, the API at /v1/detect,
/v1/detect/video and /v1/model, probes /healthz and /readyz, the OpenAPI docs at /docs (docs/serving.md).
It listens on 127.0.0.1 only unless --host says otherwise. SIGTERM or Ctrl-C: the requests in flight finish
(new ones get 503), then exit 0; a second signal stops at once. Needs the serve extra
(pip install -e ".[serve]"). Also installed as `vggdet-serve`.

--ray runs the same app as N replicas on Ray Serve (each its own predictor and batching) behind Ray's HTTP
proxy at --host/--port: `local` starts Ray on this machine, ADDRESS joins a cluster (`ray start --head`).
Needs the ray extra; the model path must be readable on every node (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from vggdet.cli import (
    add_ray_address,
    add_runtime_arguments,
    add_set_argument,
    check_ray_flags,
    command,
    prog,
    runtime_overrides,
    split_set_items,
)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("serve.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="[CONFIG] MODEL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                        "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="images per model call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a queued image may wait for others to batch with (default 5)")
    p.add_argument("--queue", type=int, default=64, help="images waiting for the model before new requests get "
                                                         "503 (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="request body limit in MB (default 25)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="width x height limit per image or video frame, checked from the header (default 40000000)")
    p.add_argument("--api-key", default=os.environ.get("VGGDET_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $VGGDET_API_KEY, else none; the "
                        "variable keeps the key out of the process list)")
    p.add_argument("--max-videos", type=int, default=2, help="video uploads processed at once (default 2)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM / SIGINT, seconds the requests in flight may take to finish (default 30)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    r = p.add_argument_group("Ray Serve replicas (the ray extra)")
    add_ray_address(r, "serve on Ray Serve")
    r.add_argument("--replicas", type=int, default=None, help="replicas, each with its own predictor (default 1)")
    r.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale between --replicas and this many replicas by load (default: fixed)")
    r.add_argument("--replica-cpus", type=float, default=None,
                   help="CPUs per replica (its predictor's threads; default 1)")
    r.add_argument("--replica-gpus", type=float, default=None,
                   help="GPUs per replica (fractions share one; > 0 runs the model on CUDA; default 0)")
    add_runtime_arguments(p)
    add_set_argument(p)
    a = p.parse_args(split_set_items(argv))
    a.config = a.paths.pop(0) if len(a.paths) == 2 and a.paths[0].endswith(".py") else None
    if len(a.paths) != 1:
        p.error("expected [CONFIG] MODEL (a .pth checkpoint, a .onnx or an int8 .onnx export)")
    a.model = a.paths[0]
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    check_ray_flags(p, a, {"--replicas": a.replicas is not None, "--max-replicas": a.max_replicas is not None,
                           "--replica-cpus": a.replica_cpus is not None, "--replica-gpus": a.replica_gpus is not None},
                    a.replica_gpus or 0.0, "--replica-gpus", "replicas")
    a.replicas = 1 if a.replicas is None else a.replicas
    if a.replicas < 1 or (a.max_replicas is not None and a.max_replicas < a.replicas):
        p.error(f"--replicas must be >= 1 and --max-replicas >= --replicas (got {a.replicas}, {a.max_replicas})")
    a.replica_cpus = 1.0 if a.replica_cpus is None else a.replica_cpus
    a.replica_gpus = 0.0 if a.replica_gpus is None else a.replica_gpus
    if a.replica_cpus <= 0 or a.replica_gpus < 0:
        p.error("--replica-cpus must be > 0 and --replica-gpus >= 0")
    return a


@command
def main(argv: Optional[list] = None) -> int:
    a = parse_args(argv)
    try:
        from vggdet.serve import ServeSettings, bind, build_service, create_app, run
    except ImportError as e:
        raise RuntimeError(f"serving needs the serve extra: pip install -e \".[serve]\" ({e.name} is missing)") \
            from None
    settings = ServeSettings(max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, queue=a.queue,
                             max_upload_mb=a.max_upload_mb, max_pixels=a.max_pixels, api_key=a.api_key or None,
                             drain_timeout_s=a.drain_timeout, max_videos=a.max_videos)
    if a.ray is not None:
        return _serve_on_ray(a, settings)
    sock = bind(a.host, a.port)  # before the model loads: a port in use fails at once
    try:
        print(f"loading {a.model} ...", flush=True)
        service = build_service(a.model, settings, config=a.config, overrides=runtime_overrides(a))
        p = service.predictor
        about = f"{p.backend} {p.precision} on {p.device}, {len(p.classes)} classes"

        def ready(url: str) -> None:
            if a.host not in ("127.0.0.1", "localhost", "::1"):
                print(f"warning: listening on {a.host}: other machines can reach it"
                      + ("" if settings.api_key else " and no --api-key is set"), file=sys.stderr, flush=True)
            print(f"serving {a.model} ({about}) at {url}  (page {url}/, API {url}/v1/detect, docs {url}/docs)",
                  flush=True)

        code = run(create_app(service), sock, drain_timeout_s=settings.drain_timeout_s, on_ready=ready,
                   access_log=a.access_log)
    finally:
        sock.close()
    print("stopped" if code == 0 else "stopped without finishing the requests in flight", flush=True)
    return code


def _serve_on_ray(a: argparse.Namespace, settings) -> int:
    from vggdet.serve.ray_serve import serve_on_ray
    from vggdet.serve.server import bind

    port = a.port
    if port == 0:  # Ray's proxy takes a port number: a free one, found here
        with bind(a.host, 0) as s:
            port = s.getsockname()[1]
    else:
        bind(a.host, port).close()  # a port in use fails at once, before Ray starts
    size = f"{a.replicas}" + (f"..{a.max_replicas}" if a.max_replicas and a.max_replicas > a.replicas else "")
    print(f"deploying {a.model} on Ray ({a.ray}) as {size} replica(s) ...", flush=True)

    def ready(url: str) -> None:
        print(f"serving {a.model} ({size} replicas on Ray Serve) at {url}  (page {url}/, API {url}/v1/detect)",
              flush=True)

    code = serve_on_ray(a.model, settings, address=a.ray, host=a.host, port=port, replicas=a.replicas,
                        max_replicas=a.max_replicas, cpus=a.replica_cpus, gpus=a.replica_gpus, config=a.config,
                        overrides=runtime_overrides(a), on_ready=ready)
    print("stopped", flush=True)
    return code
