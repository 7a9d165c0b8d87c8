"""Video I/O: run a detector over a video file or a camera and write an annotated video and per-frame JSONL.

`run_video` -> `out_dir/<name>.mp4` (every input frame, same size and frame rate, mp4v) and
`out_dir/<name>.jsonl`, one line per frame `{"frame", "time", "detections"}` (boxes as in vggdet/media.py).
The model runs on every `every`-th frame, `batch` keyframes per forward pass; frames in between repeat the
last keyframe's detections. Outputs are written to `.tmp_*` files and renamed when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from typing import Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from vggdet.data.errors import DataError
from vggdet.fileio import atomic_path
from vggdet.media import (
    InferenceStats,
    detections_to_json,
    draw_detections,
    filter_detections,
    predict_timed,
    safe_output,
)

__all__ = ["run_video", "run_camera"]

# FFmpeg's own stderr lines ("moov atom not found") would come before our one-line error for a bad video.
# OpenCV reads this once, when it first opens a video, so it is set on import; a user's setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

# Frames held while a batch of keyframes (--every) fills up; above this the batch runs early.
_MAX_BUFFER_BYTES = 512 << 20


def run_video(detector, path: str, out_dir: str, *, score_thr: float = 0.5, keep: Optional[set] = None,
              batch: int = 1, every: int = 1, name: Optional[str] = None,
              stats: Optional[InferenceStats] = None, progress: Optional[bool] = None) -> InferenceStats:
    """Annotate every frame of the video `path` into `out_dir/<name>.mp4` (mp4v, same size and frame rate)
    and write `out_dir/<name>.jsonl` (one line per frame).

    The model runs on every `every`-th frame, `batch` of them per forward pass; the frames in between repeat
    the detections of the last frame it ran on. `name` defaults to the video's file name without extension.
    A video that cannot be opened or decoded is reported in `stats.failed`. Ctrl-C keeps what was finished:
    the outputs end, valid, at the last complete frame, and `stats.interrupted` says at which.
    """
    stats = stats or InferenceStats()
    name = name or os.path.splitext(os.path.basename(path))[0]
    cap = cv2.VideoCapture(path)
    start = stats.frames
    try:
        if not cap.isOpened():
            stats.fail(f"{path}: cannot open video (corrupt or unsupported format)")
            return stats
        out_base = os.path.splitext(safe_output(out_dir, name + ".mp4", path))[0]
        with _sigint_stops() as stopped:
            broken = _run_capture(detector, cap, path, out_base, stats, score_thr=score_thr, keep=keep,
                                  batch=batch, every=every, progress=progress, stop=lambda: bool(stopped))
        if stopped or broken:
            stats.interrupted = (f"{path}: interrupted; {out_base}.mp4 and .jsonl are complete up to frame "
                                 f"{stats.frames - start}")
    except (DataError, OSError) as e:
        stats.fail(str(e))
    finally:
        cap.release()
    return stats


def run_camera(detector, index: int, out_dir: str, *, score_thr: float = 0.5, keep: Optional[set] = None,
               batch: int = 1, every: int = 1, stats: Optional[InferenceStats] = None,
               progress: Optional[bool] = None) -> InferenceStats:
    """Like `run_video` on `cv2.VideoCapture(index)` until the stream ends or Ctrl-C (which ends the stream
    and keeps the output); writes `out_dir/camera<index>.mp4` and `.jsonl`."""
    stats = stats or InferenceStats()
    cap = cv2.VideoCapture(index)
    try:
        if not cap.isOpened():
            stats.fail(f"camera {index}: cannot open")
            return stats
        with _sigint_stops() as stopped:
            _run_capture(detector, cap, f"camera {index}", os.path.join(out_dir, f"camera{index}"), stats,
                         score_thr=score_thr, keep=keep, batch=batch, every=every, progress=progress,
                         stop=lambda: bool(stopped))
    except (DataError, OSError) as e:
        stats.fail(str(e))
    finally:
        cap.release()
    return stats


@contextlib.contextmanager
def _sigint_stops() -> Iterator[list]:
    """While inside, Ctrl-C appends to the yielded list instead of raising, so the frame loop can end at a
    complete frame and close valid files (signal handlers exist only in the main thread)."""
    stopped: list = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stopped.append(True))
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, previous)


def _frames(cap, stop) -> Iterator[np.ndarray]:
    while not stop():
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _run_capture(detector, cap, source: str, out_base: str, stats: InferenceStats, *, score_thr: float,
                 keep: Optional[set], batch: int, every: int, progress: Optional[bool], stop) -> bool:
    """Detect, draw and write until the stream ends or `stop()`; True when a KeyboardInterrupt cut it short.

    Either way the outputs are closed after the last complete frame and renamed into place: a playable
    video and whole JSONL lines. Only a hard kill leaves nothing (the `.tmp_*` files never get the name)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        fps = 30.0  # cameras and some containers report 0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames = _frames(cap, stop)
    first = next(frames, None)
    if first is None:
        raise DataError(f"{source}: no frames could be decoded (corrupt or empty video)")
    h, w = first.shape[:2]
    video_path, jsonl_path = out_base + ".mp4", out_base + ".jsonl"
    bar = tqdm(total=total, unit="frame", disable=None if progress is None else not progress)
    with atomic_path(video_path) as tmp_video, atomic_path(jsonl_path) as tmp_jsonl, \
            open(tmp_jsonl, "w", encoding="utf-8") as f:
        writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise DataError(f"{source}: cannot open a video writer for {video_path}")
        broken = False
        try:
            state = {"last": None}

            def emit(i: int, frame_bgr: np.ndarray, det: dict) -> None:
                if frame_bgr.shape[:2] != (h, w):  # a stream that changes size mid-way: keep the writer's
                    frame_bgr = cv2.resize(frame_bgr, (w, h))
                f.write(json.dumps({"frame": i, "time": round(i / fps, 4),
                                    "detections": detections_to_json(det, w, h)}) + "\n")
                drawn = draw_detections(np.ascontiguousarray(frame_bgr[:, :, ::-1]), det)
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                stats.per_class.update(det["names"])
                stats.frames += 1
                bar.update(1)

            def flush(pending: list) -> None:
                keys = [np.ascontiguousarray(fr[:, :, ::-1]) for _, fr, is_key in pending if is_key]
                dets, seconds = predict_timed(detector, keys)
                stats.frame_model_s += seconds
                stats.frame_model_n += len(keys)
                it = iter(dets)
                for i, fr, is_key in pending:
                    if is_key:
                        state["last"] = filter_detections(next(it), score_thr, keep)
                    emit(i, fr, state["last"])

            _detect_frames(_chain(first, frames), every, batch, emit, flush, state)
        except KeyboardInterrupt:  # raised inside the model: the frames emitted so far are complete
            broken = True
        finally:
            writer.release()
            bar.close()
        f.flush()
    stats.videos += 1
    stats.outputs += [video_path, jsonl_path]
    return broken


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _detect_frames(frames: Iterator[np.ndarray], every: int, batch: int, emit, flush, state: dict) -> None:
    """Frames are buffered only while a batch of keyframes (every `every`-th) waits for the model; frames
    after an already-processed keyframe are emitted at once with its detections."""
    pending, n_keys, nbytes = [], 0, 0
    for i, frame in enumerate(frames):
        is_key = i % max(1, every) == 0
        if not pending and not is_key:
            emit(i, frame, state["last"])
            continue
        pending.append((i, frame, is_key))
        n_keys += is_key
        nbytes += frame.nbytes
        if n_keys >= max(1, batch) or nbytes >= _MAX_BUFFER_BYTES:
            flush(pending)
            pending, n_keys, nbytes = [], 0, 0
    if pending:
        flush(pending)
