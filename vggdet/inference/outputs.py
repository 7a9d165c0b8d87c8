"""What an inference run produces: detection records (the JSON rows of detections.jsonl, the server's answers),
COCO results rows, annotated image files, and the run's counts and summary.

A record is `{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2], "label", "score"}]}` with
boxes xyxy in the image's pixels (0-based, continuous), clipped to the image and rounded to 0.01 px, scores
to 1e-4. Every file is written to a `.tmp_*` file beside its final name and renamed when complete
(vggdet/fileio.py), so a failure or Ctrl-C never leaves a truncated file under the final name.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from vggdet.fileio import atomic_path

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "InferenceStats", "detections_to_json", "detection_record", "coco_rows",
           "yolo_lines", "write_text", "ResultsWriter", "write_image_results", "encode_image", "write_image",
           "write_encoded", "safe_output", "predict_timed"]

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

    def summary(self, classes: list, out_dir: str) -> str:
        """A few lines: files done and failed, detections per class, mean model ms per image / frame."""
        lines = [f"images: {self.images}   videos: {self.videos} ({self.frames} frames)   "
                 f"failed: {len(self.failed)}   outputs in {out_dir}"]
        lines.append(f"detections: {sum(self.per_class.values())}")
        for name in classes:
            if self.per_class[name]:
                lines.append(f"  {name:<20s} {self.per_class[name]}")
        if self.image_model_n:
            lines.append(f"model time: {1000 * self.image_model_s / self.image_model_n:.1f} ms per image "
                         f"({self.image_model_n} images)")
        if self.frame_model_n:
            lines.append(f"model time: {1000 * self.frame_model_s / self.frame_model_n:.1f} ms per frame "
                         f"({self.frame_model_n} of {self.frames} frames through the model)")
        return "\n".join(lines)


def detections_to_json(det: dict, width: int, height: int) -> list:
    """[{"box": [x1, y1, x2, y2], "label": name, "score"}], boxes clipped to the image, rounded to 0.01 px."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return [{"box": [round(float(v), 2) for v in b], "label": n, "score": round(float(s), 4)}
            for b, n, s in zip(boxes, det["names"], det["scores"])]


def detection_record(file: str, width: int, height: int, det: dict) -> dict:
    """One image's record, as in detections.jsonl (see the module docstring)."""
    return {"file": file, "width": int(width), "height": int(height),
            "detections": detections_to_json(det, width, height)}


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


def yolo_lines(det: dict, width: int, height: int) -> list:
    """YOLO label lines for one image, `class cx cy w h score` (class 0-based, coordinates normalised to the
    image, 6 decimals as Ultralytics writes them), for importing predictions as pre-annotations."""
    lines = []
    for d, label in zip(detections_to_json(det, width, height), det["labels"]):
        x1, y1, x2, y2 = d["box"]
        lines.append(f"{int(label) - 1} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {d['score']:.4f}\n")
    return lines


def write_text(path: str, lines: list) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)


class ResultsWriter:
    """`out_dir/detections.jsonl` (and, with `coco`, `out_dir/detections_coco.json`) written one image at a time
    in the order of the `add` calls, into temp files renamed by `close()`: the bytes `write_image_results`
    writes, without holding every record (a Ray run over millions of images). Used as a context manager, an
    exception leaves no file behind."""

    def __init__(self, out_dir: str, coco: bool = False):
        self.paths = [os.path.join(out_dir, "detections.jsonl")]
        if coco:
            self.paths.append(os.path.join(out_dir, "detections_coco.json"))
        with ExitStack() as stack:  # a failure while opening removes the temp files made so far
            tmps = [stack.enter_context(atomic_path(p)) for p in self.paths]
            self._files = [stack.enter_context(open(t, "w", encoding="utf-8")) for t in tmps]
            self._stack = stack.pop_all()
        self._coco_rows = 0
        if coco:
            self._files[1].write("[")

    def add(self, record: dict, coco: Optional[list] = None) -> None:
        """One image: its detections.jsonl record and (when the writer has a COCO file) its COCO rows."""
        self._files[0].write(json.dumps(record) + "\n")
        if len(self._files) > 1:
            for row in coco or []:  # json.dumps of the whole list writes ", " between rows
                self._files[1].write((", " if self._coco_rows else "") + json.dumps(row))
                self._coco_rows += 1

    def close(self) -> list:
        """Finish the files and give them their final names; returns their paths."""
        if len(self._files) > 1:
            self._files[1].write("]")
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
        self._stack.close()  # closes the files, then renames each temp file (in reverse order of opening)
        return self.paths

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the temp files are deleted, nothing appears under a final name
            self._stack.__exit__(exc_type, exc, tb)


def write_image_results(out_dir: str, records: list, coco: Optional[list] = None) -> list:
    """`out_dir/detections.jsonl` (one record a line, in the given order) and, when `coco` (each record's
    rows) is given, `out_dir/detections_coco.json`, each written atomically; returns their paths."""
    with ResultsWriter(out_dir, coco is not None) as writer:
        for k, record in enumerate(records):
            writer.add(record, coco[k] if coco is not None else None)
    return writer.paths


def encode_image(path: str, image_rgb: np.ndarray) -> bytes:
    """An RGB image encoded by `path`'s extension (JPEG for an unknown one), as `write_image` writes it."""
    ext = os.path.splitext(path)[1].lower()
    ok, buf = cv2.imencode(ext if ext in IMAGE_EXTS else ".jpg", image_rgb[:, :, ::-1])
    if not ok:
        raise OSError(f"{path}: cannot encode image")
    return buf.tobytes()


def write_image(path: str, image_rgb: np.ndarray) -> None:
    """Encode by the file's extension (JPEG for an unknown one) and write atomically."""
    write_encoded(path, encode_image(path, image_rgb))


def write_encoded(path: str, data: bytes) -> None:
    """Write an encoded image (from `encode_image`) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def safe_output(out_dir: str, name: str, source: str) -> str:
    """`out_dir/name`, or `out_dir/<stem>_det<ext>` if that would overwrite the input itself."""
    path = os.path.join(out_dir, name)
    if os.path.abspath(path) == os.path.abspath(source):
        stem, ext = os.path.splitext(path)
        path = f"{stem}_det{ext}"
    return path


def predict_timed(predictor, images: list, score_thresh: Optional[float] = None, keep=None) -> tuple:
    """-> (per-image detections, model seconds)."""
    t0 = time.perf_counter()
    dets = predictor.predict_batch(images, score_thresh, keep)  # numpy arrays: the device has finished
    return dets, time.perf_counter() - t0
