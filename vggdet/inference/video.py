"""The video runner: a predictor over a video file or a camera, writing an annotated video and per-frame JSONL.

`run_video` -> `out_dir/<name>.mp4` (every processed frame, same size and frame rate, mp4v) and
`out_dir/<name>.jsonl`, one line per frame `{"frame", "time", "detections"}` (boxes as in
vggdet/inference/outputs.py). `detect_frames` is the loop itself, as a generator (the HTTP server streams
it): the model runs on every `every`-th frame, `batch` keyframes per forward pass, and the frames in
between repeat the last keyframe's detections. `start_frame` / `max_frames` pick a range of a long clip.
Outputs are written to `.tmp_*` files and renamed when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from typing import Callable, Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from vggdet.data.errors import DataError
from vggdet.fileio import atomic_path
from vggdet.inference.draw import draw_detections
from vggdet.inference.outputs import InferenceStats, detections_to_json, predict_timed, safe_output

__all__ = ["run_video", "run_camera", "detect_frames", "read_frames", "frame_rate"]

# FFmpeg's own stderr lines ("moov atom not found") would come before our one-line error for a bad video.
# OpenCV reads this once, when it first opens a video, so it is set on import; a user's setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

# Frames held while a batch of keyframes (--every) fills up; above this the batch runs early.
_MAX_BUFFER_BYTES = 512 << 20


def frame_rate(cap) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and np.isfinite(fps) and fps > 0 else 30.0  # cameras and some containers report 0


def read_frames(cap, start_frame: int = 0, max_frames: Optional[int] = None,
                stop: Callable[[], bool] = lambda: False) -> Iterator[tuple]:
    """(frame index, HxWx3 uint8 BGR frame) from `start_frame` on, at most `max_frames`, until `stop()`.

    Frames before `start_frame` are decoded and dropped rather than sought: a container's seek lands on a
    keyframe, so the index would not be exact on every format."""
    i, n = 0, 0
    while not stop() and (max_frames is None or n < max_frames):
        ok, frame = cap.read()
        if not ok:
            return
        if i >= start_frame:
            yield i, frame
            n += 1
        i += 1


def detect_frames(predictor, frames: Iterator[tuple], *, every: int = 1, batch: int = 1,
                  score_thr: Optional[float] = None, keep: Optional[set] = None,
                  stats: Optional[InferenceStats] = None) -> Iterator[tuple]:
    """(index, BGR frame) pairs -> (index, frame, detections, is_keyframe), in order.

    The first frame and then every `every`-th one go through the model, `batch` of them per forward; frames
    are held only while such a batch fills (and at most _MAX_BUFFER_BYTES), frames after a finished
    keyframe come out at once with its detections. `stats` gets the model time and the keyframes'
    detections per class (a repeated box is not a new detection)."""
    pending, n_keys, nbytes, last, first = [], 0, 0, None, None
    for i, frame in frames:
        first = i if first is None else first
        is_key = (i - first) % max(1, every) == 0
        if not pending and not is_key:
            yield i, frame, last, False
            continue
        pending.append((i, frame, is_key))
        n_keys += is_key
        nbytes += frame.nbytes
        if n_keys >= max(1, batch) or nbytes >= _MAX_BUFFER_BYTES:
            for out in _flush(predictor, pending, score_thr, keep, stats):
                last = out[2] if out[3] else last
                yield out
            pending, n_keys, nbytes = [], 0, 0
    if pending:
        yield from _flush(predictor, pending, score_thr, keep, stats)


def _flush(predictor, pending: list, score_thr, keep, stats: Optional[InferenceStats]) -> Iterator[tuple]:
    keys = [np.ascontiguousarray(fr[:, :, ::-1]) for _, fr, is_key in pending if is_key]
    dets, seconds = predict_timed(predictor, keys, score_thr, keep)
    if stats is not None:
        stats.frame_model_s += seconds
        stats.frame_model_n += len(keys)
        for d in dets:
            stats.per_class.update(d["names"])
    it, last = iter(dets), None
    for i, fr, is_key in pending:
        last = next(it) if is_key else last
        yield i, fr, last, is_key


def run_video(predictor, path: str, out_dir: str, *, score_thr: Optional[float] = 0.5, keep: Optional[set] = None,
              batch: int = 1, every: int = 1, name: Optional[str] = None, start_frame: int = 0,
              max_frames: Optional[int] = None, stats: Optional[InferenceStats] = None,
              progress: Optional[bool] = None) -> InferenceStats:
    """Annotate the frames of the video `path` (from `start_frame`, at most `max_frames`) into
    `out_dir/<name>.mp4` (mp4v, same size and frame rate) and write `out_dir/<name>.jsonl` (one line per
    frame, numbered as in the source video). `name` defaults to the video's file name without extension.
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
            frames = read_frames(cap, start_frame, max_frames, stop=lambda: bool(stopped))
            broken = _write_video(predictor, cap, frames, path, out_base, stats, score_thr=score_thr, keep=keep,
                                  batch=batch, every=every, progress=progress)
        if stopped or broken:
            stats.interrupted = (f"{path}: interrupted; {out_base}.mp4 and .jsonl are complete up to frame "
                                 f"{stats.frames - start}")
    except (DataError, OSError) as e:
        stats.fail(str(e))
    finally:
        cap.release()
    return stats


def run_camera(predictor, index: int, out_dir: str, *, score_thr: Optional[float] = 0.5, keep: Optional[set] = None,
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
            _write_video(predictor, cap, read_frames(cap, stop=lambda: bool(stopped)), f"camera {index}",
                         os.path.join(out_dir, f"camera{index}"), stats, score_thr=score_thr, keep=keep,
                         batch=batch, every=every, progress=progress)
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


def _write_video(predictor, cap, frames: Iterator[tuple], source: str, out_base: str, stats: InferenceStats, *,
                 score_thr: Optional[float], keep: Optional[set], batch: int, every: int,
                 progress: Optional[bool]) -> bool:
    """Detect, draw and write until the frames end; True when a KeyboardInterrupt cut it short.

    Either way the outputs are closed after the last complete frame and renamed into place: a playable
    video and whole JSONL lines. Only a hard kill leaves nothing (the `.tmp_*` files never get the name)."""
    fps = frame_rate(cap)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    first = next(frames, None)
    if first is None:
        raise DataError(f"{source}: no frames could be decoded (corrupt or empty video, or --start-frame past "
                        "its end)")
    h, w = first[1].shape[:2]
    video_path, jsonl_path = out_base + ".mp4", out_base + ".jsonl"
    bar = tqdm(total=total, unit="frame", disable=None if progress is None else not progress)
    with atomic_path(video_path) as tmp_video, atomic_path(jsonl_path) as tmp_jsonl, \
            open(tmp_jsonl, "w", encoding="utf-8") as f:
        writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise DataError(f"{source}: cannot open a video writer for {video_path}")
        broken = False
        try:
            for i, frame, det, _ in detect_frames(predictor, _chain(first, frames), every=every, batch=batch,
                                                  score_thr=score_thr, keep=keep, stats=stats):
                if frame.shape[:2] != (h, w):  # a stream that changes size mid-way: keep the writer's
                    frame = cv2.resize(frame, (w, h))
                f.write(json.dumps({"frame": i, "time": round(i / fps, 4),
                                    "detections": detections_to_json(det, w, h)}) + "\n")
                drawn = draw_detections(np.ascontiguousarray(frame[:, :, ::-1]), det)
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                stats.frames += 1
                bar.update(1)
        except KeyboardInterrupt:  # raised inside the model: the frames written so far are complete
            broken = True
        finally:
            writer.release()
            bar.close()
        f.flush()
    stats.videos += 1
    stats.outputs += [video_path, jsonl_path]
    return broken


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest
