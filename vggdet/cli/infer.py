"""Detect objects in images, folders, globs, videos or a camera; save annotated copies and JSONL detections.

python tools/infer.py [CONFIG] CHECKPOINT INPUT [INPUT ...] [--out DIR] [--score-thr 0.5]
       [--device auto|cuda|cpu] [--amp] [--batch N] [--every N] [--start-frame K] [--max-frames N]
       [--no-draw] [--classes a,b] [--tiles SIZE[,OVERLAP]] [--tta] [--camera 0] [--set k=v ...]
       [--ray [local|ADDRESS] [--workers N] [--worker-cpus C] [--worker-gpus G]]

CONFIG (a .py file) is needed only for a bare state_dict checkpoint; checkpoints from tools/train_det.py
embed theirs. INPUT: image files, folders, globs, videos, or a .txt file listing one image path or URI a
line. Images -> DIR/<relative path> (annotated) and DIR/detections.jsonl; a video -> DIR/<name>.mp4 and
DIR/<name>.jsonl (one line per frame). --ray runs the images on Ray Data (a local Ray instance, or the
cluster at ADDRESS) with the same outputs; URIs (s3://...) need it. Exit status: 0 ok, 1 some input
failed, 2 bad arguments, config or checkpoint (or nothing to do), 130 interrupted. Also installed as
`vggdet-infer`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from vggdet.cli import (
    add_ray_arguments,
    add_runtime_arguments,
    add_set_argument,
    check_ray_arguments,
    command,
    prog,
    ray_workers,
    runtime_overrides,
    split_set_items,
)


def _tiles(text: str) -> list:
    """--tiles SIZE[,OVERLAP] -> test.tiles overrides."""
    parts = text.split(",")
    try:
        size, overlap = int(parts[0]), float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE[,OVERLAP] such as 512 or 512,0.25, got {text!r}") from None
    if len(parts) > 2 or size < 16 or (overlap is not None and not 0 <= overlap < 1):
        raise argparse.ArgumentTypeError(f"expected SIZE >= 16 and an OVERLAP in [0, 1), got {text!r}")
    return [f"test.tiles.size={size}"] + ([f"test.tiles.overlap={overlap}"] if overlap is not None else [])


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("infer.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="[CONFIG] CHECKPOINT INPUT")
    p.add_argument("--out", default="infer_out", help="output folder (default: infer_out)")
    p.add_argument("--score-thr", type=float, default=0.5, help="keep detections with score >= this")
    p.add_argument("--batch", type=int, default=1, help="images or frames per forward pass")
    p.add_argument("--every", type=int, default=1, help="video: run the model on every Nth frame")
    p.add_argument("--start-frame", type=int, default=0, metavar="K", help="video: begin at frame K (0-based)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: process at most N frames")
    p.add_argument("--no-draw", action="store_true", help="images: skip the annotated copies")
    p.add_argument("--format", choices=["jsonl", "coco", "yolo"], default="jsonl",
                   help="images: coco also writes DIR/detections_coco.json (COCO results, image_id = file stem); "
                        "yolo a label file per image in DIR/labels/ (class cx cy w h score) and DIR/classes.txt")
    p.add_argument("--classes", default=None, help="comma-separated class names to keep")
    p.add_argument("--camera", type=int, default=None, metavar="INDEX", help="read frames from a camera")
    p.add_argument("--tiles", type=_tiles, default=None, metavar="SIZE[,OVERLAP]",
                   help="sliced inference for small objects: SIZE-pixel tiles overlapping by OVERLAP (a fraction, "
                        "default 0.25), plus the whole image; merged by per-class NMS (test.tiles)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: add the flipped image "
                   "(and test.tta.scales, e.g. --set 'test.tta.scales=[480,720]'); merged by per-class NMS")
    add_runtime_arguments(p)
    add_ray_arguments(p)
    add_set_argument(p)
    a = p.parse_args(split_set_items(argv))
    a.config = a.paths.pop(0) if a.paths and a.paths[0].endswith(".py") else None
    a.checkpoint = a.paths.pop(0) if a.paths else None
    a.inputs = a.paths
    if a.checkpoint is None or (not a.inputs and a.camera is None):
        p.error("expected [CONFIG] CHECKPOINT INPUT [INPUT ...] (or --camera INDEX)")
    if a.batch < 1 or a.every < 1:
        p.error("--batch and --every must be >= 1")
    if a.start_frame < 0 or (a.max_frames is not None and a.max_frames < 1):
        p.error("--start-frame must be >= 0 and --max-frames >= 1")
    if not 0.0 <= a.score_thr <= 1.0:
        p.error(f"--score-thr must be in [0, 1] (scores are probabilities), got {a.score_thr}")
    check_ray_arguments(p, a)
    if a.ray is not None and a.camera is not None:
        p.error("--camera runs in one process; drop --ray")
    return a


@command
def main(argv: Optional[list] = None) -> int:
    a = parse_args(argv)
    from vggdet import distributed as ddp
    from vggdet.fileio import ensure_writable
    from vggdet.inference.images import collect_inputs, run_inputs

    images, videos, missing = collect_inputs(a.inputs, skip=a.out)  # never our own outputs of an earlier run
    main_rank = int(os.environ.get("RANK", "0")) == 0
    for pattern in missing if main_rank else []:
        print(f"error: no image or video matches {pattern!r}", file=sys.stderr)
    if not images and not videos and a.camera is None:
        return 2
    _check_inputs(a, images, videos)
    ensure_writable(a.out)  # before the model loads: a bad --out fails in a second, not after minutes
    if a.ray is not None:
        return _report(_run_on_ray(a, images), len(missing))
    predictor = _predictor(a)
    try:
        keep = predictor.class_filter(a.classes)
    except ValueError as e:
        raise ValueError(f"--classes: {e}") from None
    if main_rank:  # every check passed: say once what arithmetic runs
        print(f"precision: {predictor.precision_text()}", file=sys.stderr)
    try:
        stats = run_inputs(predictor, images, videos, a.out, score_thr=a.score_thr, keep=keep, batch=a.batch,
                           every=a.every, start_frame=a.start_frame, max_frames=a.max_frames, draw=not a.no_draw,
                           coco=a.format == "coco", yolo=a.format == "yolo", camera=a.camera)
    except KeyboardInterrupt:
        print("\ninterrupted; unfinished outputs removed", file=sys.stderr)
        return 130
    finally:
        ddp.cleanup()
    if stats is None:  # not the main process of several
        return 0
    return _report((stats, predictor.classes, a.out), len(missing))


def _report(run: tuple, missing: int) -> int:
    """Print the summary of (stats, classes, out); the exit status."""
    stats, classes, out = run
    print(stats.summary(classes, os.path.abspath(out)))
    if stats.interrupted:
        print(stats.interrupted, file=sys.stderr)
        return 130
    failed = len(stats.failed) + missing
    if failed:
        print(f"{failed} input(s) failed (see the errors above)", file=sys.stderr)
    return 1 if failed else 0


def _check_inputs(a: argparse.Namespace, images: list, videos: list) -> None:
    from vggdet.inference.images import is_uri

    if a.ray is not None and videos:
        raise ValueError(f"{videos[0]}: --ray runs images; run videos without --ray")
    uris = [p for p in images if is_uri(p)]
    if a.ray is None and uris:
        raise ValueError(f"{uris[0]}: a URI; images on an object store are read with --ray (pyarrow filesystems)")


def _overrides(a: argparse.Namespace) -> list:
    # the model's own cut-off, so it skips less work; the user's --set items still win
    return [f"runtime.score_thresh={a.score_thr}"] + (["test.tta.hflip=true"] if a.tta else []) \
        + (a.tiles or []) + runtime_overrides(a)


def _predictor(a: argparse.Namespace):
    from vggdet.inference import load_predictor

    predictor = load_predictor(a.checkpoint, config=a.config, overrides=_overrides(a))
    _check_rpn(a.checkpoint, predictor.config)
    return predictor


def _check_rpn(path: str, cfg) -> None:
    if cfg.model.proposals != "rpn":
        raise ValueError(f"{path}: model.proposals={cfg.model.proposals!r}; inference needs a model with an RPN")


def _run_on_ray(a: argparse.Namespace, images: list) -> tuple:
    """The images on a Ray actor pool (vggdet/inference/ray_data.py) -> (stats, classes, out)."""
    from vggdet.inference.base import class_filter
    from vggdet.inference.ray_data import PredictorFactory, ray_session, run_images_on_ray

    factory = PredictorFactory(a.checkpoint, a.config, tuple(_overrides(a)))
    with ray_session(a.ray):
        cfg, classes = factory.describe()  # a bad model file: one line before any actor starts
        _check_rpn(a.checkpoint, cfg)
        try:
            keep = class_filter(classes, a.classes)
        except ValueError as e:
            raise ValueError(f"--classes: {e}") from None
        stats = run_images_on_ray(factory, images, a.out, ray_workers(a), score_thr=a.score_thr, keep=keep,
                                  batch=a.batch, draw=not a.no_draw, coco=a.format == "coco",
                                  yolo=a.format == "yolo", classes=classes)
    return stats, classes, a.out
