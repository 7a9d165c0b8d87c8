"""Running a `Detector` over image files, folders, globs, videos and a camera; writing what it found.

Outputs go to one folder (`out_dir`):
- images: an annotated copy per image (at its path relative to the inputs' common folder, so two inputs
  with the same basename never clash) and `detections.jsonl`, one line per image
  `{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2], "label", "score"}]}`;
- videos: `<name>.mp4` (every input frame, same size and frame rate) and `<name>.jsonl`, one line per frame
  `{"frame", "time", "detections"}`.
Boxes are xyxy in original pixels (0-based, continuous). Every output is written to a `.tmp_*` file in
`out_dir` and renamed into place when complete, so a failure or Ctrl-C never leaves a truncated file under
its final name. A bad input is reported on stderr (one line naming it) and counted; the others still run.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from vggdet.data.errors import DataError
from vggdet.data.image_io import read_image
from vggdet.fileio import atomic_path
from vggdet.visualize import draw_boxes

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "InferenceStats", "collect_inputs", "output_names", "filter_detections",
           "detections_to_json", "run_images", "run_video", "run_camera", "format_summary"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
# Frames held while a batch of keyframes (--every) fills up; above this the batch runs early.
_MAX_BUFFER_BYTES = 512 << 20


@dataclass
class InferenceStats:
    """What a run did: counts, detections per class name, model time, and the inputs that failed."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    per_class: Counter = field(default_factory=Counter)
    image_model_s: float = 0.0  # model time spent on images / on video frames, and how many went through it
    image_model_n: int = 0
    frame_model_s: float = 0.0
    frame_model_n: int = 0
    failed: list = field(default_factory=list)  # one-line messages, each naming the input
    outputs: list = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failed.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- input discovery
def _kind(path: str) -> Optional[str]:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _walk(folder: str) -> list:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if _kind(f) and not f.startswith(".")]
    return found


def collect_inputs(patterns: list) -> tuple:
    """Image files, folders (recursive, by extension), glob patterns and video files -> (images, videos, missing).

    `images` and `videos` are de-duplicated paths in input order; `missing` lists the patterns that matched no
    image or video. A file named explicitly is a video by its extension and an image otherwise (it fails
    later, naming itself, if it cannot be decoded).
    """
    images, videos, missing, seen = [], [], [], set()
    for pattern in patterns:
        if os.path.isfile(pattern):
            found = [pattern]
        elif os.path.isdir(pattern):
            found = _walk(pattern)
        else:
            found = []
            for m in sorted(glob.glob(pattern, recursive=True)):
                found += _walk(m) if os.path.isdir(m) else [m] if _kind(m) else []
        if not found:
            missing.append(pattern)
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                (videos if _kind(path) == "video" else images).append(path)
    return images, videos, missing


def output_names(paths: list, strip_ext: bool = False, reserved: tuple = ()) -> dict:
    """path -> output name relative to `out_dir`: the path relative to the inputs' common folder.

    Distinct files give distinct names (`a/x.jpg`, `b/x.jpg`), and sub-folders of a folder input are kept.
    With `strip_ext` (videos: `<name>.mp4` and `<name>.jsonl`) `x.mp4` and `x.avi` become `x` and `x_1`;
    `reserved` names are never given out.
    """
    if not paths:
        return {}
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    try:
        common = os.path.commonpath(dirs)
    except ValueError:  # different drives (Windows): fall back to basenames, clashes suffixed below
        common = None
    names, used = {}, {r.lower() for r in reserved}
    for p in paths:
        name = os.path.relpath(os.path.abspath(p), common) if common else os.path.basename(p)
        names[p] = _unique(os.path.splitext(name)[0] if strip_ext else name, used)
    return names


def _unique(name: str, used: set) -> str:
    stem, ext = os.path.splitext(name)
    candidate, i = name, 1
    while candidate.lower() in used:
        candidate, i = f"{stem}_{i}{ext}", i + 1
    used.add(candidate.lower())
    return candidate


# ------------------------------------------------------------------------------------ detections, json
def filter_detections(det: dict, score_thr: float, keep: Optional[set] = None) -> dict:
    """Keep detections with score >= `score_thr` (and, if `keep` is given, a class name in it)."""
    mask = det["scores"] >= score_thr
    if keep is not None:
        mask &= np.array([n in keep for n in det["names"]], dtype=bool).reshape(mask.shape)
    idx = np.flatnonzero(mask)
    return {"boxes": det["boxes"][idx], "scores": det["scores"][idx], "labels": det["labels"][idx],
            "names": [det["names"][i] for i in idx]}


def detections_to_json(det: dict, width: int, height: int) -> list:
    """[{"box": [x1, y1, x2, y2], "label": name, "score"}], boxes clipped to the image, rounded to 0.01 px."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return [{"box": [round(float(v), 2) for v in b], "label": n, "score": round(float(s), 4)}
            for b, n, s in zip(boxes, det["names"], det["scores"])]


def _draw(image_rgb: np.ndarray, det: dict) -> np.ndarray:
    return draw_boxes(image_rgb, det["boxes"], det["names"], det["scores"], [int(c) for c in det["labels"]])


def _predict(detector, images: list) -> tuple:
    """-> (per-image detections, model seconds)."""
    t0 = time.perf_counter()
    dets = detector.predict_batch(images)  # returns numpy arrays, so the device has finished
    return dets, time.perf_counter() - t0


def _write_image(path: str, image_rgb: np.ndarray) -> None:
    ext = os.path.splitext(path)[1].lower()
    ok, buf = cv2.imencode(ext if ext in IMAGE_EXTS else ".jpg", image_rgb[:, :, ::-1])
    if not ok:
        raise OSError(f"{path}: cannot encode image")
    with atomic_path(path) as tmp:
        buf.tofile(tmp)


# ------------------------------------------------------------------------------------------------ images
def _read_or_error(path: str):
    try:
        return read_image(path)
    except DataError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported per file
        return DataError(f"{path}: cannot read image ({type(e).__name__}: {e})")


def _batches(paths: list, batch: int) -> Iterator[tuple]:
    """(paths, images-or-errors) per batch, the next batch decoded in a thread while the model runs."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
        pending = [pool.submit(_read_or_error, p) for p in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            current = pending
            if k + 1 < len(chunks):
                pending = [pool.submit(_read_or_error, p) for p in chunks[k + 1]]
            yield chunk, [f.result() for f in current]


def run_images(detector, paths: list, out_dir: str, *, score_thr: float = 0.5, keep: Optional[set] = None,
               batch: int = 1, draw: bool = True, names: Optional[dict] = None,
               stats: Optional[InferenceStats] = None, progress: Optional[bool] = None) -> InferenceStats:
    """Detect on `paths` in batches of `batch`; write annotated copies and `out_dir/detections.jsonl`.

    `names` maps a path to its output name (default: `output_names(paths)`); `keep` is a set of class names.
    An unreadable image is reported and counted in `stats.failed`; the others still run.
    """
    stats = stats or InferenceStats()
    names = names or output_names(paths)
    jsonl = os.path.join(out_dir, "detections.jsonl")
    bar = tqdm(total=len(paths), unit="img", disable=None if progress is None else not progress)
    with atomic_path(jsonl) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for chunk, images in _batches(paths, max(1, batch)):
            ok = [(p, im) for p, im in zip(chunk, images) if not isinstance(im, Exception)]
            for im in images:
                if isinstance(im, Exception):
                    stats.fail(str(im))
            dets = []
            if ok:
                dets, seconds = _predict(detector, [im for _, im in ok])
                stats.image_model_s += seconds
                stats.image_model_n += len(ok)
            for (path, image), det in zip(ok, dets):
                det = filter_detections(det, score_thr, keep)
                h, w = image.shape[:2]
                record = {"file": path, "width": w, "height": h, "detections": detections_to_json(det, w, h)}
                f.write(json.dumps(record) + "\n")
                stats.per_class.update(det["names"])
                stats.images += 1
                if draw:
                    _write_image(_safe_output(out_dir, names[path], path), _draw(image, det))
            bar.update(len(chunk))
        f.flush()
    bar.close()
    stats.outputs.append(jsonl)
    return stats


def _safe_output(out_dir: str, name: str, source: str) -> str:
    """`out_dir/name`, or `out_dir/<stem>_det<ext>` if that would overwrite the input itself."""
    path = os.path.join(out_dir, name)
    if os.path.abspath(path) == os.path.abspath(source):
        stem, ext = os.path.splitext(path)
        path = f"{stem}_det{ext}"
    return path


# ------------------------------------------------------------------------------------------------ videos
def run_video(detector, path: str, out_dir: str, *, score_thr: float = 0.5, keep: Optional[set] = None,
              batch: int = 1, every: int = 1, name: Optional[str] = None,
              stats: Optional[InferenceStats] = None, progress: Optional[bool] = None) -> InferenceStats:
    """Annotate every frame of the video `path` into `out_dir/<name>.mp4` (mp4v, same size and frame rate)
    and write `out_dir/<name>.jsonl` (one line per frame).

    The model runs on every `every`-th frame, `batch` of them per forward pass; the frames in between repeat
    the detections of the last frame it ran on. `name` defaults to the video's file name without extension.
    A video that cannot be opened or decoded is reported in `stats.failed`; Ctrl-C removes the temp files
    and re-raises.
    """
    stats = stats or InferenceStats()
    name = name or os.path.splitext(os.path.basename(path))[0]
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            stats.fail(f"{path}: cannot open video (corrupt or unsupported format)")
            return stats
        out_base = os.path.splitext(_safe_output(out_dir, name + ".mp4", path))[0]
        _run_capture(detector, cap, path, out_base, stats, score_thr=score_thr, keep=keep, batch=batch,
                     every=every, progress=progress, stop=lambda: False)
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
    stopped = []
    previous = signal.signal(signal.SIGINT, lambda *_: stopped.append(True))
    cap = cv2.VideoCapture(index)
    try:
        if not cap.isOpened():
            stats.fail(f"camera {index}: cannot open")
            return stats
        _run_capture(detector, cap, f"camera {index}", os.path.join(out_dir, f"camera{index}"), stats,
                     score_thr=score_thr, keep=keep, batch=batch, every=every, progress=progress,
                     stop=lambda: bool(stopped))
    except (DataError, OSError) as e:
        stats.fail(str(e))
    finally:
        cap.release()
        signal.signal(signal.SIGINT, previous)
    return stats


def _frames(cap, stop) -> Iterator[np.ndarray]:
    while not stop():
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _run_capture(detector, cap, source: str, out_base: str, stats: InferenceStats, *, score_thr: float,
                 keep: Optional[set], batch: int, every: int, progress: Optional[bool], stop) -> None:
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
        try:
            state = {"last": None}

            def emit(i: int, frame_bgr: np.ndarray, det: dict) -> None:
                if frame_bgr.shape[:2] != (h, w):  # a stream that changes size mid-way: keep the writer's
                    frame_bgr = cv2.resize(frame_bgr, (w, h))
                f.write(json.dumps({"frame": i, "time": round(i / fps, 4),
                                    "detections": detections_to_json(det, w, h)}) + "\n")
                drawn = _draw(np.ascontiguousarray(frame_bgr[:, :, ::-1]), det)
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                stats.per_class.update(det["names"])
                stats.frames += 1
                bar.update(1)

            def flush(pending: list) -> None:
                keys = [np.ascontiguousarray(fr[:, :, ::-1]) for _, fr, is_key in pending if is_key]
                dets, seconds = _predict(detector, keys)
                stats.frame_model_s += seconds
                stats.frame_model_n += len(keys)
                it = iter(dets)
                for i, fr, is_key in pending:
                    if is_key:
                        state["last"] = filter_detections(next(it), score_thr, keep)
                    emit(i, fr, state["last"])

            _detect_frames(_chain(first, frames), every, batch, emit, flush, state)
        finally:
            writer.release()
            bar.close()
        f.flush()
    stats.videos += 1
    stats.outputs += [video_path, jsonl_path]


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


# ----------------------------------------------------------------------------------------------- summary
def format_summary(stats: InferenceStats, classes: list, out_dir: str) -> str:
    """A few lines: files done and failed, detections per class, mean model ms per image / frame."""
    lines = [f"images: {stats.images}   videos: {stats.videos} ({stats.frames} frames)   "
             f"failed: {len(stats.failed)}   outputs in {out_dir}"]
    lines.append(f"detections: {sum(stats.per_class.values())}")
    for name in classes:
        if stats.per_class[name]:
            lines.append(f"  {name:<20s} {stats.per_class[name]}")
    if stats.image_model_n:
        lines.append(f"model time: {1000 * stats.image_model_s / stats.image_model_n:.1f} ms per image "
                     f"({stats.image_model_n} images)")
    if stats.frame_model_n:
        lines.append(f"model time: {1000 * stats.frame_model_s / stats.frame_model_n:.1f} ms per frame "
                     f"({stats.frame_model_n} of {stats.frames} frames through the model)")
    return "\n".join(lines)
