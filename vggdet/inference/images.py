"""The image runner: find the inputs (files, folders, globs, list files), run a predictor over them in batches
with the next batch decoded while the model runs, and write annotated copies and `detections.jsonl`;
`run_inputs` spreads images and videos over the processes of a torchrun launch and writes one
`detections.jsonl` in input order.

Outputs go to one folder (`out_dir`): an annotated copy per image (at its path relative to the inputs'
common folder, so two inputs with the same basename never clash) and `detections.jsonl`, one record per
image (vggdet/inference/outputs.py). A bad input is reported on stderr (one line naming it) and counted;
the others still run. The predictor is any `Predictor` (vggdet/inference/base.py); this module never asks
which backend it is.
"""
from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import torch
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.data.errors import DataError
from vggdet.data.image_io import read_image
from vggdet.inference.draw import draw_detections
from vggdet.inference.outputs import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    InferenceStats,
    coco_rows,
    detection_record,
    predict_timed,
    safe_output,
    write_image,
    write_image_results,
    write_text,
    yolo_lines,
)

__all__ = ["collect_inputs", "read_list_file", "is_uri", "output_names", "run_images", "run_inputs", "IMAGE_EXTS",
           "VIDEO_EXTS", "LIST_EXTS", "InferenceStats"]

LIST_EXTS = (".txt",)  # an input file with this extension lists images, one path or URI a line


# ---------------------------------------------------------------------------------------- input discovery
def _kind(path: str) -> Optional[str]:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _walk(folder: str, skip: frozenset = frozenset()) -> list:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip)
        found += [os.path.join(root, f) for f in sorted(files) if _kind(f) and not f.startswith(".")]
    return found


def is_uri(path: str) -> bool:
    """True for `scheme://...` (s3://, gs://, hdfs://, file://): read through a pyarrow filesystem (--ray)."""
    return "://" in path


def read_list_file(path: str) -> list:
    """The images a list file names, one path or URI a line (blank lines and `#` comments skipped); a
    relative path is relative to the list file's folder. Entries are not checked here: one that cannot be
    read fails when it is, naming itself."""
    folder = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line if is_uri(line) or os.path.isabs(line) else os.path.join(folder, line)
            for line in lines if line and not line.startswith("#")]


def collect_inputs(patterns: list, skip: Optional[str] = None) -> tuple:
    """Image files, folders (recursive, by extension), glob patterns, video files and list files (`*.txt`, see
    `read_list_file`) -> (images, videos, missing).

    `images` and `videos` are de-duplicated paths in input order; `missing` lists the patterns that matched no
    image or video. A file named explicitly is a video by its extension and an image otherwise (it fails
    later, naming itself, if it cannot be decoded). Folders never descend into `skip` (the run's own output
    folder, so a rerun does not process its annotated copies).
    """
    images, videos, missing, seen = [], [], [], set()
    avoid = frozenset([os.path.realpath(skip)]) if skip else frozenset()
    for pattern in patterns:
        if os.path.isfile(pattern):
            found = read_list_file(pattern) if pattern.lower().endswith(LIST_EXTS) else [pattern]
        elif os.path.isdir(pattern):
            found = _walk(pattern, avoid)
        else:
            found = []
            for m in sorted(glob.glob(pattern, recursive=True)):
                if any(os.path.realpath(m).startswith(a + os.sep) or os.path.realpath(m) == a for a in avoid):
                    continue
                found += _walk(m, avoid) if os.path.isdir(m) else [m] if _kind(m) else []
        if not found:
            missing.append(pattern)
        for path in found:
            key = path if is_uri(path) else os.path.realpath(path)
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
    dirs = [os.path.dirname(_absolute(p)) for p in paths]
    try:
        common = os.path.commonpath(dirs)
    except ValueError:  # different drives (Windows): fall back to basenames, clashes suffixed below
        common = None
    names, used = {}, {r.lower() for r in reserved}
    for p in paths:
        name = os.path.relpath(_absolute(p), common) if common else os.path.basename(p)
        names[p] = _unique(os.path.splitext(name)[0] if strip_ext else name, used)
    return names


def _absolute(path: str) -> str:
    """An absolute path; a URI as the folders /<scheme>/<bucket>/... (s3://b/x.jpg -> /s3/b/x.jpg)."""
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return os.path.join(os.sep, scheme, *rest.split("/"))
    return os.path.abspath(path)


def _unique(name: str, used: set) -> str:
    stem, ext = os.path.splitext(name)
    candidate, i = name, 1
    while candidate.lower() in used:
        candidate, i = f"{stem}_{i}{ext}", i + 1
    used.add(candidate.lower())
    return candidate


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


def run_images(predictor, paths: list, out_dir: str, *, score_thr: Optional[float] = 0.5,
               keep: Optional[set] = None, batch: int = 1, draw: bool = True, names: Optional[dict] = None,
               coco: bool = False, yolo: bool = False, stats: Optional[InferenceStats] = None,
               progress: Optional[bool] = None, write: bool = True) -> InferenceStats:
    """Detect on `paths` in batches of `batch`; write annotated copies and `out_dir/detections.jsonl`.

    `names` maps a path to its output name (default: `output_names(paths)`); `keep` is a set of class names.
    `coco` also writes `out_dir/detections_coco.json` (see `coco_rows`); `yolo` a YOLO label file per image
    under `out_dir/labels/` (its output name with .txt) and the class names in `out_dir/classes.txt`. An unreadable image is reported
    and counted in `stats.failed`; the others still run. The JSONL records (and COCO rows) are also kept
    in `stats.records` / `stats.coco`; `write=False` leaves the two files to the caller (one process
    of several writes them all: `write_image_results`). Ctrl-C stops after the batch in hand: the records
    of the finished images are written (whole lines) and `stats.interrupted` says how many.
    """
    stats = stats or InferenceStats()
    names = names or output_names(paths)
    bar = tqdm(total=len(paths), unit="img", disable=None if progress is None else not progress)
    done = len(stats.records)
    try:
        for chunk, images in _batches(paths, max(1, batch)):
            _detect_batch(predictor, chunk, images, out_dir, stats, names, score_thr=score_thr,
                          keep=keep, draw=draw, coco=coco, yolo=yolo)
            bar.update(len(chunk))
    except KeyboardInterrupt:
        stats.interrupted = (f"interrupted: {os.path.join(out_dir, 'detections.jsonl')} holds the "
                             f"{len(stats.records) - done} finished images of {len(paths)}")
    finally:
        bar.close()
    if write:
        stats.outputs += write_image_results(out_dir, stats.records, stats.coco if coco else None)
        if yolo:
            write_text(os.path.join(out_dir, "classes.txt"), [c + "\n" for c in predictor.classes])
    return stats


def _detect_batch(predictor, paths: list, images: list, out_dir: str, stats: InferenceStats, names: dict, *,
                  score_thr: Optional[float], keep: Optional[set], draw: bool, coco: bool, yolo: bool) -> None:
    """One batch of `run_images`: a record (COCO rows, an annotated copy) per image read, a failure per other."""
    ok = [(p, im) for p, im in zip(paths, images) if not isinstance(im, Exception)]
    for im in images:
        if isinstance(im, Exception):
            stats.fail(str(im))
    if not ok:
        return
    dets, seconds = predict_timed(predictor, [im for _, im in ok], score_thr, keep)
    stats.image_model_s += seconds
    stats.image_model_n += len(ok)
    for (path, image), det in zip(ok, dets):
        h, w = image.shape[:2]
        stats.records.append(detection_record(path, w, h, det))
        if coco:
            stats.coco.append(coco_rows(path, det, w, h))
        stats.per_class.update(det["names"])
        stats.images += 1
        if draw:
            write_image(safe_output(out_dir, names[path], path), draw_detections(image, det))
        if yolo:
            label = os.path.join(out_dir, "labels", os.path.splitext(names[path])[0] + ".txt")
            write_text(label, yolo_lines(det, w, h))


def run_inputs(predictor, images: list, videos: list, out_dir: str, *, score_thr: Optional[float] = 0.5,
               keep: Optional[set] = None, batch: int = 1, every: int = 1, start_frame: int = 0,
               max_frames: Optional[int] = None, draw: bool = True, coco: bool = False, yolo: bool = False,
               camera: Optional[int] = None) -> Optional[InferenceStats]:
    """Everything tools/infer.py runs: images (then videos, then a camera) into `out_dir`.

    Under torchrun the images are sharded over the processes and whole videos spread over them (the camera
    runs on rank 0); rank 0 gathers the counts and writes `detections.jsonl` (and the COCO file) in input
    order, so the result equals one process's. Returns the stats on rank 0, None on the other ranks.
    """
    from vggdet.inference.video import run_camera, run_video

    ddp.setup_distributed(torch.device(str(getattr(predictor, "device", "cpu"))))  # under torchrun only
    rank, world = ddp.rank(), ddp.world_size()
    common = dict(score_thr=score_thr, keep=keep, batch=batch)
    stats = InferenceStats()
    if images:
        run_images(predictor, images[rank::world], out_dir, draw=draw, coco=coco, yolo=yolo,
                   names=output_names(images), stats=stats, write=False, **common)
    names = output_names(videos, strip_ext=True, reserved=("detections",))
    for video in videos[rank::world] if not stats.interrupted else []:
        run_video(predictor, video, out_dir, every=every, name=names[video], start_frame=start_frame,
                  max_frames=max_frames, stats=stats, **common)
        if stats.interrupted:
            break
    if camera is not None and rank == 0 and not stats.interrupted:
        run_camera(predictor, camera, out_dir, every=every, stats=stats, **common)
    parts = ddp.gather_to_main(stats)
    if not ddp.is_main():
        return None
    total = InferenceStats()
    for part in parts:
        total.merge(part)
    if images:  # the shards' records back in input order, with their COCO rows (the finished ones on Ctrl-C)
        order = {path: i for i, path in enumerate(images)}
        idx = sorted(range(len(total.records)), key=lambda k: order[total.records[k]["file"]])
        total.records = [total.records[k] for k in idx]
        total.coco = [total.coco[k] for k in idx] if coco else []
        total.outputs += write_image_results(out_dir, total.records, total.coco if coco else None)
        if yolo:
            write_text(os.path.join(out_dir, "classes.txt"), [c + "\n" for c in predictor.classes])
    return total
