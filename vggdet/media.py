"""Media I/O for images: finding inputs (files, folders, globs), naming outputs, detections as JSON rows,
annotated copies, and the run summary. Videos and cameras are in vggdet/video.py.

Outputs go to one folder (`out_dir`): an annotated copy per image (at its path relative to the inputs'
common folder, so two inputs with the same basename never clash) and `detections.jsonl`, one line per image
`{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2], "label", "score"}]}`. Boxes are xyxy
in original pixels (0-based, continuous). Every output is written to a `.tmp_*` file in `out_dir` and
renamed into place when complete, so a failure or Ctrl-C never leaves a truncated file under its final
name. A bad input is reported on stderr (one line naming it) and counted; the others still run.
`detector` is anything with `predict_batch(list of HxWx3 uint8 RGB) -> list of detection dicts`
(vggdet.predictor.Detector).
"""
from __future__ import annotations

import glob
import json
import os
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
from vggdet.fileio import atomic_path, write_json
from vggdet.visualize import draw_boxes

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "InferenceStats", "collect_inputs", "output_names", "filter_detections",
           "detections_to_json", "coco_rows", "write_image_results", "draw_detections", "predict_timed", "safe_output", "run_images", "format_summary"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")


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
    interrupted: str = ""  # set by Ctrl-C during a video: where its outputs stop
    records: list = field(default_factory=list)  # detections.jsonl records of the images, in input order
    coco: list = field(default_factory=list)  # per record, its COCO results rows (with coco=True)

    def merge(self, other: InferenceStats) -> None:
        """Add another process's counts (multi-process inference); records stay to be ordered by the caller."""
        for name in ("images", "videos", "frames", "image_model_s", "image_model_n", "frame_model_s",
                     "frame_model_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.per_class.update(other.per_class)
        self.failed += other.failed
        self.outputs += other.outputs
        self.records += other.records
        self.coco += other.coco
        self.interrupted = self.interrupted or other.interrupted

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


def draw_detections(image_rgb: np.ndarray, det: dict) -> np.ndarray:
    return draw_boxes(image_rgb, det["boxes"], det["names"], det["scores"], [int(c) for c in det["labels"]])


def predict_timed(detector, images: list) -> tuple:
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
               batch: int = 1, draw: bool = True, names: Optional[dict] = None, coco: bool = False,
               stats: Optional[InferenceStats] = None, progress: Optional[bool] = None,
               write: bool = True) -> InferenceStats:
    """Detect on `paths` in batches of `batch`; write annotated copies and `out_dir/detections.jsonl`.

    `names` maps a path to its output name (default: `output_names(paths)`); `keep` is a set of class names.
    `coco` also writes `out_dir/detections_coco.json` (see `coco_rows`). An unreadable image is reported
    and counted in `stats.failed`; the others still run. The JSONL records (and COCO rows) are also kept
    in `stats.records` / `stats.coco`; `write=False` leaves the two files to the caller (one process
    of several writes them all: `write_image_results`).
    """
    stats = stats or InferenceStats()
    names = names or output_names(paths)
    bar = tqdm(total=len(paths), unit="img", disable=None if progress is None else not progress)
    try:
        for chunk, images in _batches(paths, max(1, batch)):
            ok = [(p, im) for p, im in zip(chunk, images) if not isinstance(im, Exception)]
            for im in images:
                if isinstance(im, Exception):
                    stats.fail(str(im))
            dets = []
            if ok:
                dets, seconds = predict_timed(detector, [im for _, im in ok])
                stats.image_model_s += seconds
                stats.image_model_n += len(ok)
            for (path, image), det in zip(ok, dets):
                det = filter_detections(det, score_thr, keep)
                h, w = image.shape[:2]
                stats.records.append({"file": path, "width": w, "height": h,
                                      "detections": detections_to_json(det, w, h)})
                if coco:
                    stats.coco.append(coco_rows(path, det, w, h))
                stats.per_class.update(det["names"])
                stats.images += 1
                if draw:
                    _write_image(safe_output(out_dir, names[path], path), draw_detections(image, det))
            bar.update(len(chunk))
    finally:
        bar.close()
    if write:
        stats.outputs += write_image_results(out_dir, stats.records, stats.coco if coco else None)
    return stats


def write_image_results(out_dir: str, records: list, coco: Optional[list] = None) -> list:
    """`out_dir/detections.jsonl` (one record a line, in the given order) and, when `coco` (each record's
    rows) is given, `out_dir/detections_coco.json`, each written atomically; returns their paths."""
    jsonl = os.path.join(out_dir, "detections.jsonl")
    text = "".join(json.dumps(r) + "\n" for r in records)
    with atomic_path(jsonl) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    if coco is None:
        return [jsonl]
    write_json(os.path.join(out_dir, "detections_coco.json"), [row for rows in coco for row in rows], indent=None)
    return [jsonl, os.path.join(out_dir, "detections_coco.json")]


def coco_rows(path: str, det: dict, width: int, height: int) -> list:
    """COCO results entries for one image: image_id = the file stem (an int when it is all digits, as in
    COCO's own file names), category_id = the label (1..K, an index into the checkpoint's classes),
    bbox = [x, y, w, h] in pixels."""
    stem = os.path.splitext(os.path.basename(path))[0]
    image_id = int(stem) if stem.isdigit() else stem
    return [{"image_id": image_id, "category_id": int(c), "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
             "score": d["score"]}
            for d, c in zip(detections_to_json(det, width, height), det["labels"])
            for x1, y1, x2, y2 in [d["box"]]]


def safe_output(out_dir: str, name: str, source: str) -> str:
    """`out_dir/name`, or `out_dir/<stem>_det<ext>` if that would overwrite the input itself."""
    path = os.path.join(out_dir, name)
    if os.path.abspath(path) == os.path.abspath(source):
        stem, ext = os.path.splitext(path)
        path = f"{stem}_det{ext}"
    return path


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
