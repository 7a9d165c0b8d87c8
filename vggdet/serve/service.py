"""The detection service: one predictor behind a batcher, with the server's limits — what one HTTP app (or
one Ray Serve replica) serves. It speaks in uploads and records, not HTTP.

    service = build_service("best.pth", ServeSettings(max_batch=8))   # loads, warms up, starts the batcher
    records = await service.detect([Upload("a.jpg", data)], score_thr=0.5, keep=None, slots=slots)
    for line in service.video_lines(data, every=3): ...           # sync generator: run it off the event loop
    service.close()

Each image is checked from its header (vggdet/serve/limits.py), decoded by `decode_image` exactly as
tools/infer.py reads a file, and answered with `detection_record` — the line infer.py writes to
detections.jsonl — so the server's numbers are infer.py's. All model calls go through the batcher's one
worker thread (vggdet/serve/batcher.py); video frames share it with image requests. The model runs every
image at the model's own cut-off (`predictor.min_score`) and each request's `score_thr` / classes are
applied afterwards by the one filter (`filter_detections`), so requests with different thresholds batch
together and get exactly what `predict_batch(images, score_thr, classes)` returns.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from itertools import chain
from typing import Iterator, Optional

import anyio
import numpy as np

from vggdet.data.errors import DataError
from vggdet.data.image_io import decode_image
from vggdet.errors import first_line
from vggdet.inference import load_predictor
from vggdet.inference.base import filter_detections
from vggdet.inference.outputs import detection_record, detections_to_json
from vggdet.serve.batcher import Batcher, QueueFull, Slots
from vggdet.serve.limits import ServeError, ServeSettings, check_image

__all__ = ["DetectionService", "Upload", "VideoSlot", "build_service"]

WARMUP_SIZE = (480, 640)  # (h, w) of the warm-up image: a typical photo (resized like one: 600x800 for VOC)
WARMUP_RUNS = 2  # the first call pays one-time costs (allocations, the Winograd timing on the CPU)
# Uploads this small (256x256) are decoded on the event loop: at most ~1 ms (a PNG; a JPEG ~0.3 ms), about
# what the hop to a worker thread and back costs on a busy 2-core machine. Larger ones decode in a thread,
# so the loop keeps answering meanwhile.
INLINE_DECODE_PIXELS = 256 * 256


@dataclass
class Upload:
    """One uploaded image: `name` is the client's file name ("" for a raw body; echoed, never opened),
    `label` names it in error messages."""

    name: str
    data: bytes
    label: str = "image"


def build_service(model: str, settings: ServeSettings, *, device: Optional[str] = None,
                  config: Optional[str] = None, overrides: Optional[list] = None) -> DetectionService:
    """Load `model` (a .pth checkpoint, a .onnx or int8 .onnx export; `config`: a CONFIG file for a bare
    state_dict) with `key=value` overrides, warm it up and start the batcher: the service ready to answer."""
    over = ([f"runtime.device={device}"] if device else []) + list(overrides or [])

    def load():
        predictor = load_predictor(model, config=config, overrides=over)
        if predictor.config.model.proposals != "rpn":
            predictor.close()
            raise ValueError(f"{model}: model.proposals={predictor.config.model.proposals!r}; serving needs a "
                             "model with an RPN")
        return predictor

    service = DetectionService(load, settings)
    try:
        service.warm_up()
    except BaseException:
        service.close()
        raise
    return service


class DetectionService:
    """A predictor, its batcher and the limits; see the module docstring. `predictor`: a Predictor, or a
    function returning one, called on the model thread (the way build_service loads): then every torch call
    of the model — loading, warm-up, requests — happens on that one thread. (With PyTorch's OpenMP, each
    thread that starts parallel regions keeps its own worker threads; a model loaded on the main thread and
    run on another one has two teams competing for the cores, and OpenMP stops spinning between regions:
    measured on 2 cores, a 8-ms model took 13-15 ms that way, 9 ms loaded and run on one worker thread.)
    `ready` turns True after `warm_up`."""

    def __init__(self, predictor, settings: ServeSettings):
        self.settings = settings
        self.predictor = predictor if hasattr(predictor, "predict_batch") else None

        def load():
            self.predictor = predictor()

        self.batcher = Batcher(self._run_batch, max_batch=settings.max_batch, setup=None if self.predictor else load,
                               max_wait_s=settings.max_wait_ms / 1000.0, capacity=settings.queue)
        self.batcher.started.result()  # the model loaded on its thread (or the loader's error, raised here)
        self.ready = False
        self._videos = 0
        self._lock = threading.Lock()
        # video uploads are written here (OpenCV reads files), each deleted when its stream ends; the
        # folder goes with close(), so not even a request cut off by a crash of its thread leaves one
        self.tmp_dir = tempfile.mkdtemp(prefix="vggdet-serve-")

    # ------------------------------------------------------------------------------------ the model
    def _run_batch(self, items: list) -> list:
        """On the batcher's thread: (image, score_thr, keep) items -> filtered detections, one forward per
        image size (`predict_batch`), each item's own filter after."""
        dets = self.predictor.predict_batch([image for image, _, _ in items])
        return [filter_detections(d, thr, self.predictor.classes, keep) for d, (_, thr, keep) in zip(dets, items)]

    def warm_up(self) -> None:
        """A few calls on a synthetic photo-sized image through the batcher, then `ready`."""
        image = np.random.default_rng(0).integers(0, 256, (*WARMUP_SIZE, 3), dtype=np.uint8)
        for _ in range(WARMUP_RUNS):
            self.batcher.submit([(image, None, None)], wait=True)[0].result()
        self.ready = True

    def close(self) -> None:
        """Finish what is queued, stop the worker, release the model and the temp folder."""
        self.ready = False
        self.batcher.close()
        if self.predictor is not None:
            self.predictor.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------------- requests
    def describe(self) -> dict:
        """GET /v1/model: the predictor's `describe()` plus the server's limits and batches so far."""
        return {**self.predictor.describe(), "limits": self.settings.describe(),
                "batches": {str(k): v for k, v in sorted(self.batcher.batches.items())}}

    def class_filter(self, classes: Optional[str]) -> Optional[frozenset]:
        """`classes=a,b` -> the names to keep (None: all); 400 naming unknown ones."""
        if classes is None:
            return None
        try:
            keep = self.predictor.class_filter(classes)
        except ValueError as e:
            raise ServeError(400, f"classes: {e}") from None
        if not keep:
            raise ServeError(400, "classes: empty list (leave it out to keep every class)")
        return keep

    def reserve(self, n: int = 1) -> Slots:
        """Places in the queue for a request about to upload `n` images; 503 when full."""
        try:
            return self.batcher.reserve(n)
        except QueueFull as e:
            raise ServeError(503, f"busy: {e}; retry shortly", {"Retry-After": "1"}) from None

    async def detect(self, uploads: list, score_thr: Optional[float], keep: Optional[frozenset],
                     slots: Slots) -> list:
        """Uploads -> records (as infer.py writes them) plus "time_ms" {queue, model}. `slots` holds a place
        for each upload. 400 / 413 / 415 for a bad upload, before anything is queued."""
        if len(uploads) > slots.n:
            try:
                slots.grow(len(uploads) - slots.n)
            except QueueFull as e:
                raise ServeError(503, f"busy: {e}; retry shortly", {"Retry-After": "1"}) from None
        # the header check runs here, on the event loop's one thread: image_size swaps PIL's global
        # bomb limit while it reads, which must not interleave with another check
        pixels = sum(h * w for h, w in (check_image(u.data, u.label, self.settings.max_pixels) for u in uploads))
        if pixels <= INLINE_DECODE_PIXELS:
            images = _decode_all(uploads)
        else:
            images = await anyio.to_thread.run_sync(_decode_all, uploads)
        futures = self.batcher.submit([(img, score_thr, keep) for img in images], slots)
        records = []
        for u, img, future in zip(uploads, images, futures):
            try:
                det, timing = await asyncio.wrap_future(future)
            except Exception as e:  # the model failed on this image alone (each is retried alone)
                raise ServeError(500, f"{u.label}: the model failed on this image ({type(e).__name__}: "
                                      f"{first_line(e, empty='')})") from None
            record = detection_record(u.name, img.shape[1], img.shape[0], det)
            record["time_ms"] = {"queue": _ms(timing.queue_s), "model": _ms(timing.model_s)}
            records.append(record)
        return records

    # ------------------------------------------------------------------------------------- videos
    def video_slot(self) -> VideoSlot:
        """A place for one video stream, taken before its upload is read: 503 when --max-videos streams run
        or the queue is full. `video_lines` releases it when the stream ends."""
        with self._lock:
            if self._videos >= self.settings.max_videos or self.batcher.pending >= self.settings.queue:
                raise ServeError(503, f"busy: {self._videos} video(s) streaming, {self.batcher.pending} images "
                                      "queued; retry shortly", {"Retry-After": "2"})
            self._videos += 1
        return VideoSlot(self._video_done)

    def _video_done(self) -> None:
        with self._lock:
            self._videos -= 1

    def video_lines(self, data: bytes, slot: VideoSlot, *, every: int = 1, start_frame: int = 0,
                    max_frames: Optional[int] = None, score_thr: Optional[float] = None,
                    keep: Optional[frozenset] = None) -> Iterator[dict]:
        """A video upload -> one dict per frame {"frame", "time_s", "detections"} as each is done (the model on
        every `every`-th frame, the frames between repeating its detections, as tools/infer.py).

        A sync generator that blocks on the model: step it off the event loop. Its first step checks the
        video (415 not a video, 413 frames over max_pixels, 400 start_frame past the end) before any line;
        the temp file lives exactly as long as it runs, and the end releases `slot`."""
        import cv2

        from vggdet.inference.video import detect_frames, frame_rate, read_frames

        path, cap = None, None
        try:
            fd, path = tempfile.mkstemp(dir=self.tmp_dir, suffix=".video")  # a name of ours, never the client's
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            del data
            cap = cv2.VideoCapture(path)
            if not cap.isOpened():
                raise ServeError(415, "video: cannot open (corrupt or unsupported format)")
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w * h > self.settings.max_pixels:
                raise ServeError(413, f"video: {w}x{h} frames are over the server's --max-pixels "
                                      f"{self.settings.max_pixels}")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if count > 0 and start_frame >= count:
                raise ServeError(400, f"start_frame: {start_frame} is past the video's last frame ({count - 1})")
            fps = frame_rate(cap)
            frames = read_frames(cap, start_frame, max_frames)
            first = next(frames, None)
            if first is None:
                raise ServeError(415, "video: no frames could be decoded (corrupt or empty video)")
            for i, frame, det, _ in detect_frames(_ViaBatcher(self.batcher), chain([first], frames), every=every,
                                                  batch=1, score_thr=score_thr, keep=keep):
                yield {"frame": i, "time_s": round(i / fps, 4),
                       "detections": detections_to_json(det, frame.shape[1], frame.shape[0])}
        finally:
            if cap is not None:
                cap.release()
            if path is not None:
                os.unlink(path)
            slot.release()


class VideoSlot:
    """One of the --max-videos places; `release` is idempotent (the stream's end and the request's error path
    may both call it)."""

    def __init__(self, release):
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class _ViaBatcher:
    """The one predictor method `detect_frames` calls, sent through the batcher (waiting for room: a
    stream that has started cannot answer 503)."""

    def __init__(self, batcher: Batcher):
        self.batcher = batcher

    def predict_batch(self, images: list, score_thresh: Optional[float] = None,
                      classes: Optional[frozenset] = None) -> list:
        futures = self.batcher.submit([(img, score_thresh, classes) for img in images], wait=True)
        return [f.result()[0] for f in futures]


def _decode_all(uploads: list) -> list:
    """In a worker thread: each upload decoded as tools/infer.py decodes a file (415 when it cannot be)."""
    try:
        return [decode_image(u.data, u.label) for u in uploads]
    except DataError as e:
        raise ServeError(415, str(e)) from None


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 2)
