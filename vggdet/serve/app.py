"""The HTTP app: routes, errors as JSON, the API key, the upload cap and the drain on shutdown, around one
`DetectionService` (vggdet/serve/service.py).

    app = create_app(service)                          # a ready service: what tools/serve.py passes
    app = create_app(lambda: build_service(path, settings), settings)  # a factory, run at startup in a thread:
                                                       # /healthz answers while the model loads (a Ray Serve replica)

Routes: `GET /` the page (vggdet/serve/static/, offline), `POST /v1/detect` (one image as a multipart field
`image` or a raw image/* body; several `image` fields -> {"results": [...]}), `POST /v1/detect/video`
(NDJSON, one line per frame as it is done), `GET /v1/model`, `GET /healthz`, `GET /readyz`, and FastAPI's
`/openapi.json` and `/docs` (the docs page loads Swagger UI from a CDN: it needs internet, the page at `/`
does not). Every error is `{"error": "<one line>"}` with its status: 400 bad parameter, 401 key, 413 too
large, 415 not an image / video, 503 busy or shutting down (with Retry-After). The server opens no path a
client names: the page's files are read from the package once, uploads stay in memory (videos: a temp
file of ours, deleted when the stream ends).
"""
from __future__ import annotations

import contextlib
import hmac
import json
import time
from importlib import resources
from typing import Callable, Optional, Union

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vggdet.serve.limits import IMAGE_TYPES, BodyLimit, ServeError, ServeSettings, json_response
from vggdet.serve.service import DetectionService, Upload

__all__ = ["create_app", "Drain"]

VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/x-msvideo", "video/x-matroska", "video/webm",
               "application/octet-stream")
PROBES = ("/healthz", "/readyz")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# the page loads nothing from elsewhere, and nothing else may run in it
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SCORE_THR = Query(None, ge=0.0, le=1.0, description="keep detections with score >= this (default: the model's "
                                                    "own cut-off, GET /v1/model min_score)")
CLASSES = Query(None, description="comma-separated class names to keep (default: all)", examples=["dog,person"])


class Drain:
    """Requests in flight, and whether the server is draining them before it exits (vggdet/serve/server.py
    sets `draining` on SIGTERM / SIGINT; new requests then get 503)."""

    def __init__(self):
        self.in_flight = 0
        self.draining = False


class DrainGate:
    """ASGI middleware: counts requests in flight; while draining, answers new ones 503. The probes are
    neither counted nor refused: they answer at once, and must keep answering while the server drains."""

    def __init__(self, app, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            for message in json_response(503, "the server is shutting down; retry on another instance or later",
                                         {"retry-after": "5"}):
                await send(message)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class ReplicaHeader:
    """ASGI middleware: names the replica that answered (`X-Vggdet-Replica`) on every response."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-vggdet-replica", replica.encode("latin-1", "replace"))

    async def __call__(self, scope, receive, send):
        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)


def create_app(service: Union[DetectionService, Callable[[], DetectionService]],
               settings: Optional[ServeSettings] = None, replica: str = "") -> FastAPI:
    """The app with every route, around a ready `service` or a `service()` factory run at startup (off the
    event loop; /readyz answers 503 until it returns). `settings`: the service's when not given. `replica`:
    a name sent as `X-Vggdet-Replica` on every answer (Ray Serve replicas, vggdet/serve/ray_serve.py)."""
    from vggdet import __version__

    factory = None if isinstance(service, DetectionService) else service
    settings = settings or (service.settings if factory is None else ServeSettings())
    state = {"service": None if factory else service, "error": None}
    drain = Drain()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as tasks:
            if factory is not None:
                tasks.start_soon(_load, factory, state)
            yield
        # (leaving the group waited for a load still running: its thread cannot be stopped, so it is closed)
        if state["service"] is not None:
            await anyio.to_thread.run_sync(state["service"].close)

    app = FastAPI(title="vggdet detector", version=__version__, lifespan=lifespan, redoc_url=None,
                  description="Faster R-CNN (VGG16) object detection. Errors are {\"error\": \"<one line>\"}.")
    app.state.drain = drain
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(DrainGate, drain=drain)
    if replica:
        app.add_middleware(ReplicaHeader, replica=replica)  # outermost: added last
    _add_error_handlers(app)
    page = _page_files()
    bearer = HTTPBearer(auto_error=False, description="--api-key: send Authorization: Bearer <key>")

    async def authorized(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if settings.api_key is None:
            return
        token = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             {"WWW-Authenticate": "Bearer"})

    def ready() -> DetectionService:
        svc = state["service"]
        if svc is None or not svc.ready:
            raise ServeError(503, state["error"] or "the model is loading; retry shortly", {"Retry-After": "5"})
        return svc

    # ------------------------------------------------------------------------------ page and probes
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed set read at startup: no path from the URL is opened
            raise ServeError(404, f"not found: /static/{name}")
        return Response(page[name], media_type=STATIC[name], headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", summary="The process answers (and how many requests it is working on)")
    async def healthz() -> dict:
        return {"status": "ok", "in_flight": drain.in_flight}

    @app.get("/readyz", summary="The model is loaded and warmed up (503 while loading or shutting down)")
    async def readyz() -> dict:
        if drain.draining:
            raise ServeError(503, "shutting down", {"Retry-After": "5"})
        ready()
        return {"status": "ready"}

    # -------------------------------------------------------------------------------------- the API
    @app.get("/v1/model", dependencies=[Depends(authorized)],
             summary="Classes, backend, precision, device, input rule, version and the server's limits")
    async def model() -> JSONResponse:
        return JSONResponse(ready().describe())

    @app.post("/v1/detect", dependencies=[Depends(authorized)], openapi_extra=_image_body(),
              summary="Detect objects in one image (or several `image` fields -> results in upload order)")
    async def detect(request: Request, score_thr: Optional[float] = SCORE_THR,
                     classes: Optional[str] = CLASSES) -> JSONResponse:
        start = time.perf_counter()
        svc = ready()
        keep = svc.class_filter(classes)
        with svc.reserve(1) as slots:  # 503 before a byte of the body is read when the queue is full
            uploads, several = await _read_images(request, settings)
            records = await svc.detect(uploads, score_thr, keep, slots)
        total = round(1000.0 * (time.perf_counter() - start), 2)
        for r in records:
            r["time_ms"]["total"] = total
        return JSONResponse({"results": records} if several else records[0])

    @app.post("/v1/detect/video", dependencies=[Depends(authorized)], openapi_extra=_video_body(),
              response_class=StreamingResponse,
              summary="Detect in a video: application/x-ndjson, one line per frame as it is done")
    async def detect_video(request: Request, every: int = Query(1, ge=1, description="the model on every Nth frame"),
                           start_frame: int = Query(0, ge=0, description="first frame (0-based)"),
                           max_frames: Optional[int] = Query(None, ge=1, description="at most this many frames"),
                           score_thr: Optional[float] = SCORE_THR,
                           classes: Optional[str] = CLASSES) -> StreamingResponse:
        svc = ready()
        keep = svc.class_filter(classes)
        slot = svc.video_slot()  # 503 before the upload is read
        try:
            data = await _read_video(request)
            lines = svc.video_lines(data, slot, every=every, start_frame=start_frame, max_frames=max_frames,
                                    score_thr=score_thr, keep=keep)
            del data
            first = await anyio.to_thread.run_sync(next, lines, None)  # the video's checks: errors before 200
        except BaseException:
            slot.release()  # (the generator released it already if it ran)
            raise
        return StreamingResponse(_ndjson(first, lines), media_type="application/x-ndjson")

    return app


async def _load(factory: Callable[[], DetectionService], state: dict) -> None:
    try:
        state["service"] = await anyio.to_thread.run_sync(factory)
    except Exception as e:
        state["error"] = f"the model failed to load: {' '.join(str(e).split()) or type(e).__name__}"
        print(f"error: {state['error']}", flush=True)


async def _ndjson(first: Optional[dict], lines):
    """The video's lines as NDJSON; each step runs in a thread (decoding and waiting for the model). A model
    failure after the first line ends the stream with an {"error"} line; a client that leaves closes it."""
    try:
        line = first
        while line is not None:
            yield json.dumps(line) + "\n"
            line = await anyio.to_thread.run_sync(next, lines, None)
    except ServeError as e:
        yield json.dumps({"error": e.message}) + "\n"
    except Exception as e:
        yield json.dumps({"error": f"the model failed on this video ({type(e).__name__})"}) + "\n"
    finally:
        lines.close()  # releases the capture and deletes the temp file (a step is never running here)


async def _read_images(request: Request, settings: ServeSettings) -> tuple:
    """-> ([Upload], several): the `image` fields of a multipart form, or a raw image/* body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=settings.queue, max_fields=32) as form:
            files = form.getlist("image")
            if not files:
                raise ServeError(400, f"no 'image' field in the form (fields: {', '.join(form.keys()) or 'none'})")
            if any(isinstance(f, str) for f in files):
                raise ServeError(400, "'image' must be a file field, not text")
            uploads = [Upload(f.filename or "", await f.read(), _label(f.filename, k, len(files)))
                       for k, f in enumerate(files)]
        return uploads, len(uploads) > 1
    if media in IMAGE_TYPES:
        return [Upload("", await request.body(), "the request body")], False
    raise ServeError(415, f"Content-Type {media or '(none)'} is not accepted: send multipart/form-data with an "
                          f"'image' field, or the image as the body with Content-Type {'|'.join(IMAGE_TYPES)}")


async def _read_video(request: Request) -> bytes:
    """A multipart field `video` (or `file`), or a raw video/* (or application/octet-stream) body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=32) as form:
            f = form.get("video") or form.get("file")
            if f is None or isinstance(f, str):
                raise ServeError(400, "no 'video' file field in the form")
            data = await f.read()
    elif media in VIDEO_TYPES or media.startswith("video/"):
        data = await request.body()
    else:
        raise ServeError(415, f"Content-Type {media or '(none)'} is not accepted: send multipart/form-data with a "
                              "'video' field, or the video as the body with Content-Type video/*")
    if not data:
        raise ServeError(400, "video: empty upload")
    return data


def _label(filename: Optional[str], k: int, n: int) -> str:
    """How messages name an upload: its file name (quoted, as data), else its position."""
    name = json.dumps(filename[:80], ensure_ascii=False) if filename else ""
    return f"image {name}".strip() if n == 1 else f"image {k + 1} {name}".strip()


def _page_files() -> dict:
    """The page's files, read from the package once (package data: setup.cfg)."""
    folder = resources.files("vggdet.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": "<one line>"} with its status."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError) -> JSONResponse:
        return JSONResponse({"error": e.message}, e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed on "
                                                             f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse({"error": " ".join(detail.split())}, e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first["loc"] if x not in ("query", "body", "header"))
        got = f" (got {first['input']!r})" if "input" in first and first["input"] is not None else ""
        return JSONResponse({"error": f"{where}: {first['msg']}{got}" if where else first["msg"]}, 400)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect) -> JSONResponse:
        return JSONResponse({"error": "the client disconnected during the upload"}, 400)  # nobody reads it

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server's log"}, 500)


def _image_body() -> dict:
    """OpenAPI: the body /v1/detect reads itself (so that errors are ours, not FastAPI's form parsing)."""
    binary = {"type": "string", "format": "binary"}
    form = {"type": "object", "required": ["image"],
            "properties": {"image": {"type": "array", "items": binary,
                                     "description": "one or more images (JPEG, PNG, BMP, WebP)"}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form},
                                                          **{t: {"schema": binary} for t in IMAGE_TYPES}}}}


def _video_body() -> dict:
    binary = {"type": "string", "format": "binary"}
    form = {"type": "object", "required": ["video"], "properties": {"video": binary}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form},
                                                          "video/*": {"schema": binary}}}}
