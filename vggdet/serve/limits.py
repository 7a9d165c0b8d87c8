"""The server's limits and the checks that enforce them before any work is done: settings, the error type
every check raises, the request-body cap (an ASGI middleware) and the image-header check.

Order of the checks for an upload, cheapest first: the declared Content-Length (413 before one body byte is
read; uvicorn reads and discards the rest of the body, so the client still gets the answer), the bytes
actually received (413 as soon as they pass the cap), the format from the first bytes (415), then the
width x height from the header alone (`vggdet.data.image_io.image_size`, no pixels decoded: 413 when over
`max_pixels`, so a PNG declaring 30000x30000 is never decompressed). Only then is the image decoded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from vggdet.data.errors import DataError
from vggdet.data.image_io import image_size

__all__ = ["ServeSettings", "ServeError", "BodyLimit", "check_image", "IMAGE_TYPES", "sniff_format",
           "json_response"]

# The image formats the API takes (as Content-Type, and as sniffed from the bytes): those tools/infer.py
# reads by extension. Others that OpenCV could decode (TIFF, JPEG 2000, OpenEXR, ...) are refused: fewer
# decoders facing the network, and each of these has a header PIL reads without decoding.
IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/bmp": "BMP", "image/webp": "WebP"}


@dataclass
class ServeSettings:
    """The server's flags (vggdet/cli/serve.py) as one object; `create_app` and `DetectionService` read it."""

    max_batch: int = 8  # images per predict_batch call
    max_wait_ms: float = 5.0  # how long the first image of a batch may wait for company
    queue: int = 64  # images waiting for the model (and requests being received) before 503
    max_upload_mb: float = 25.0  # request body cap
    max_pixels: int = 40_000_000  # width x height cap, from the image header
    api_key: Optional[str] = None  # Bearer token required on /v1/* when set
    drain_timeout_s: float = 30.0  # on SIGTERM / SIGINT: how long requests in flight may take to finish
    max_videos: int = 2  # video uploads processed at once (each holds a temp file and a decoding thread)

    def __post_init__(self):
        checks = [("--max-batch", self.max_batch >= 1, ">= 1"), ("--max-wait-ms", self.max_wait_ms >= 0, ">= 0"),
                  ("--queue", self.queue >= 1, ">= 1"), ("--max-upload-mb", self.max_upload_mb > 0, "> 0"),
                  ("--max-pixels", self.max_pixels >= 1, ">= 1"), ("--drain-timeout", self.drain_timeout_s >= 0, ">= 0"),
                  ("--max-videos", self.max_videos >= 1, ">= 1"),
                  ("--api-key", self.api_key is None or self.api_key.strip() != "", "a non-empty string")]
        for flag, ok, rule in checks:
            if not ok:
                raise ValueError(f"{flag}: must be {rule}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def describe(self) -> dict:
        """The limits a client may want to know (GET /v1/model), without the key."""
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms, "queue": self.queue,
                "max_upload_mb": self.max_upload_mb, "max_pixels": self.max_pixels,
                "image_types": sorted(IMAGE_TYPES), "auth": "bearer" if self.api_key else None}


class ServeError(Exception):
    """An answer other than 200: HTTP `status`, a one-line `message` (the JSON `error`), extra headers."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(str(message).split()), headers or {}


def sniff_format(data: bytes) -> Optional[str]:
    """The format from the first bytes (magic numbers), or None when it is not one the API takes."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def check_image(data: bytes, name: str, max_pixels: int) -> tuple:
    """An upload -> (h, w) from its header, or ServeError: 400 empty, 415 not a JPEG / PNG / BMP / WebP or no
    readable header, 413 more pixels than `max_pixels`. Nothing is decoded here."""
    if not data:
        raise ServeError(400, f"{name}: empty upload (no image bytes)")
    if sniff_format(data) is None:
        raise ServeError(415, f"{name}: not a JPEG, PNG, BMP or WebP image")
    try:
        h, w = image_size(data, name)
    except DataError as e:
        raise ServeError(415, str(e)) from None
    if h * w > max_pixels:
        raise ServeError(413, f"{name}: {w}x{h} = {w * h} pixels is over the server's --max-pixels {max_pixels}")
    return h, w


class BodyTooLarge(Exception):
    """Raised inside the app by BodyLimit's `receive` when the bytes received pass the cap."""


def json_response(status: int, message: str, headers: Optional[dict] = None) -> tuple:
    """A JSON error answer as the two raw ASGI messages (for middleware, which runs outside FastAPI)."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 — at once when Content-Length says so,
    otherwise as soon as the bytes received pass the cap (chunked uploads). Nothing over the cap is held."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:  # cannot happen: bodies are read before answering; keep the 500 path honest
                raise
            await self._refuse(send, None)

    async def _refuse(self, send, declared: Optional[int]) -> None:
        mb = self.max_bytes / (1 << 20)
        size = f"{declared} bytes" if declared is not None else "the request body"
        # no "Connection: close": uvicorn then reads and drops the rest of the body, so a client still
        # sending it gets this answer instead of a reset connection
        for message in json_response(413, f"{size} is over the server's upload limit of {mb:g} MB (--max-upload-mb)"):
            await send(message)
