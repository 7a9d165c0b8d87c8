"""Serving a trained detector over HTTP (`tools/serve.py`, `vggdet-serve`): FastAPI on uvicorn, with dynamic
batching, upload limits, a graceful drain and an offline web page.

- `limits.py` — the settings (`ServeSettings`), the error type, the body cap and the image-header check;
- `batcher.py` — concurrent requests gathered into one model call on one worker thread;
- `service.py` — `DetectionService`: a predictor behind a batcher, uploads in, infer.py's records out;
- `app.py` — `create_app(service or factory)`: the routes, JSON errors, the API key, the drain gate;
- `server.py` — bind, run uvicorn, drain on SIGTERM / SIGINT; `static/` — the page's files;
- `ray_serve.py` — the same app as Ray Serve replicas (imports Ray inside its functions: the `ray` extra).

Only this subpackage (and vggdet/cli/serve.py, lazily) imports fastapi / uvicorn: install them with
`pip install -e ".[serve]"`. The service reaches the model only through `vggdet.inference.load_predictor`.
"""
from vggdet.serve.app import create_app
from vggdet.serve.limits import ServeError, ServeSettings
from vggdet.serve.server import bind, run
from vggdet.serve.service import DetectionService, Upload, build_service

__all__ = ["create_app", "ServeSettings", "ServeError", "DetectionService", "Upload", "build_service", "bind", "run"]
