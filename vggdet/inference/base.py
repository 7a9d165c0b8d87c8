"""The predictor interface, written once: input rules, size grouping, the one score / class filter, loading.

A `Predictor` turns images into detections in input-image pixels. What is shared lives here; each backend
(vggdet/inference/torch_backend.py, onnx_backend.py) supplies only `_prepare` (one image -> its input) and
`_forward` (a group of same-size inputs -> numpy detections), plus its `backend` / `precision` / `device`.

    predictor = load_predictor("best.pth")          # or "model.onnx", "model_int8.onnx"
    det = predictor.predict("photo.jpg", score_thresh=0.5, classes={"dog"})
    det["boxes"] [D,4] float32 xyxy (0-based, continuous pixels), det["scores"] [D], det["labels"] [D] int64
    in 1..K, det["names"] [D] class names; rows by descending score.

Images: a path (read as RGB), an HxWx3 uint8 RGB array or a [3,H,W] tensor (uint8, or float 0..1).
A batch is split by image size and each size runs as one forward, so detections never depend on what
else is in the batch (padding a mixed batch to its largest image would change the features near the
padded edges). With `test.tiles.size` set, each image is sliced into overlapping tiles first
(vggdet/inference/tiles.py), on every backend.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np

from vggdet.inference import tiles as tiles_mod

__all__ = ["Predictor", "load_predictor", "is_onnx_file", "filter_detections", "groups_by_size", "rgb_input",
           "empty_detections", "class_filter"]


TILE_CHUNK = 4  # tiles per forward: a photo's dozens of tiles at once would hold gigabytes of features


def is_onnx_file(path: str) -> bool:
    return str(path).lower().endswith(".onnx")


def load_predictor(path: str, device: Optional[str] = None, config: Optional[str] = None,
                   overrides: Optional[list] = None) -> Predictor:
    """The predictor for a model file, backend picked from the file: a `.pth` checkpoint or state_dict ->
    PyTorch (`config`: a CONFIG file, needed for a bare state_dict); a `.onnx` export or int8 export from
    tools/export.py / tools/quantize.py -> onnxruntime. `overrides`: `key=value` config items."""
    if is_onnx_file(path):
        if config is not None:
            raise ValueError(f"{path}: an ONNX export carries its config; drop the CONFIG argument")
        from vggdet.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor(path, device, overrides)
    from vggdet.inference.torch_backend import TorchPredictor

    return TorchPredictor.load(path, device, config, overrides)


def rgb_input(image):
    """A predictor's input as pixels: a path is read (HxWx3 uint8 RGB), an array must be HxWx3 uint8 RGB,
    a [3,H,W] tensor passes through."""
    if isinstance(image, (str, os.PathLike)):
        from vggdet.data.image_io import read_image

        image = read_image(os.fspath(image))
    if isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8):
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}")
    return image


def class_filter(classes: list, names: Optional[Union[set, frozenset, list, str]]) -> Optional[frozenset]:
    """Class names to keep ("a,b" or a collection) -> a frozenset, checked against `classes` (None: keep all)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [c.strip() for c in names.split(",") if c.strip()]
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise ValueError(f"unknown class name(s) {', '.join(unknown)} (known: {', '.join(classes)})")
    return frozenset(names)


def groups_by_size(sizes: Sequence) -> list:
    """Indices of the images grouped by (H, W), in first-seen order: one forward per image size."""
    by_size: dict = {}
    for k, s in enumerate(sizes):
        by_size.setdefault(tuple(s), []).append(k)
    return list(by_size.values())


def empty_detections() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}


def filter_detections(det: dict, score_thresh: Optional[float], classes: list,
                      keep: Optional[Union[set, frozenset]] = None) -> dict:
    """The one filter: scores >= `score_thresh` (when given) and class names in `keep` (when given); adds
    the class "names" [D]. `det` holds numpy boxes / labels / scores; returns a new dict."""
    mask = np.ones(len(det["scores"]), dtype=bool)
    if score_thresh is not None:
        mask &= det["scores"] >= score_thresh
    names = [classes[int(c) - 1] for c in det["labels"]]
    if keep is not None:
        mask &= np.array([n in keep for n in names], dtype=bool).reshape(mask.shape)
    idx = np.flatnonzero(mask)
    return {"boxes": det["boxes"][idx].reshape(-1, 4), "scores": det["scores"][idx], "labels": det["labels"][idx],
            "names": [names[i] for i in idx]}


class Predictor:
    """Shared behaviour of every backend; see the module docstring. Subclasses set `classes`, `config`,
    `device` (a string), `precision` ("fp32", "bf16" or "int8") and `min_score` (the lowest score the model
    returns: its own cut-off) and implement `_prepare` / `_forward`."""

    backend = ""  # "pytorch" or "onnxruntime"
    source = "the model"  # the file it came from, for messages
    cutoff_hint = ""  # how to get scores below `min_score` (formatted with `asked`)
    classes: list
    config: object
    device: str
    precision: str
    precision_reason = ""  # why that precision, e.g. "auto: this CPU (AMD EPYC) has native bf16"
    min_score: Optional[float] = None

    @classmethod
    def from_checkpoint(cls, path: str, device: Optional[str] = None, config: Optional[str] = None,
                        overrides: Optional[list] = None) -> Predictor:
        """`load_predictor`: the backend comes from the file (`.onnx` -> onnxruntime, else PyTorch)."""
        return load_predictor(path, device, config, overrides)

    # ------------------------------------------------------------------------------ what backends supply
    def _prepare(self, image):
        """One HxWx3 uint8 RGB array or [3,H,W] tensor -> the backend's input for it (shape [3,H,W])."""
        raise NotImplementedError

    def _forward(self, inputs: list, proposals: Optional[list] = None) -> list:
        """Same-size prepared inputs -> per input {"boxes", "labels", "scores"} as numpy arrays."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- shared
    def predict_batch(self, images: list, score_thresh: Optional[float] = None,
                      classes: Optional[Union[set, frozenset, list]] = None,
                      proposals: Optional[list] = None) -> list:
        """-> per image {"boxes" [D,4], "scores" [D], "labels" [D], "names" [D]}, keeping scores >=
        `score_thresh` and class names in `classes` when given (the model's own cut-off applies first).
        `proposals`: one [P,4] array per image, for a model with external proposals (Fast R-CNN)."""
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"predict_batch takes a list of images, got {type(images).__name__}; use predict()")
        if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        if score_thresh is not None and self.min_score is not None and score_thresh < self.min_score:
            self.warn_below_cutoff(score_thresh)
        keep = self.class_filter(classes)
        inputs = [self._prepare(rgb_input(i)) for i in images]
        tiles = getattr(self.config.test, "tiles", None) if self.config is not None else None
        if tiles is not None and tiles.size:
            if proposals is not None:
                raise ValueError("test.tiles: sliced inference computes its own proposals per tile; "
                                 "it cannot take external proposals")
            dets = self._tiled(inputs, tiles)
        else:
            dets = self._by_size(inputs, proposals)
        return [filter_detections(d, score_thresh, self.classes, keep) for d in dets]

    def _by_size(self, inputs: list, proposals: Optional[list] = None, chunk: Optional[int] = None) -> list:
        """`_forward` per group of same-size inputs (at most `chunk` at a time), results in input order."""
        dets: list = [None] * len(inputs)
        for idx in groups_by_size([tuple(x.shape[-2:]) for x in inputs]):
            for part in [idx[i:i + chunk] for i in range(0, len(idx), chunk)] if chunk else [idx]:
                props = [proposals[k] for k in part] if proposals is not None else None
                for k, d in zip(part, self._forward([inputs[k] for k in part], props)):
                    dets[k] = d
        return dets

    def _tiled(self, inputs: list, t) -> list:
        """Sliced inference (vggdet/inference/tiles.py): every image's tiles (and the whole image when
        `t.full_image`) through the model, TILE_CHUNK tiles per forward, merged per image."""
        jobs = []  # (image index, tile or None for the whole image, its input)
        for k, x in enumerate(inputs):
            h, w = x.shape[-2:]
            grid = tiles_mod.tile_grid(h, w, t.size, t.overlap)
            if len(grid) == 1 or t.full_image:
                jobs.append((k, None, x))
            if len(grid) > 1:
                jobs += [(k, tile, tiles_mod.crop(x, tile)) for tile in grid]
        outs = self._by_size([j[2] for j in jobs], chunk=TILE_CHUNK)
        per_image: list = [[] for _ in inputs]
        for (k, tile, _), d in zip(jobs, outs):
            h, w = inputs[k].shape[-2:]
            per_image[k].append(d if tile is None else tiles_mod.drop_cut_boxes(d, tile, h, w))
        head = self.config.model.roi_head
        return [ds[0] if len(ds) == 1 else tiles_mod.merge(ds, head.nms_thresh, head.nms, head.nms_sigma,
                                                           head.soft_nms_min_score, head.class_agnostic_nms)
                for ds in per_image]

    def predict(self, image, score_thresh: Optional[float] = None,
                classes: Optional[Union[set, frozenset, list]] = None) -> dict:
        """One image -> its detections (see `predict_batch`)."""
        if isinstance(image, (list, tuple)):
            raise TypeError(f"predict takes one image, got a {type(image).__name__} of {len(image)}; "
                            "use predict_batch() for several")
        return self.predict_batch([image], score_thresh, classes)[0]

    def class_filter(self, names: Optional[Union[set, frozenset, list, str]]) -> Optional[frozenset]:
        """Class names to keep -> a frozenset, checked against the model's classes (None: keep all)."""
        return class_filter(self.classes, names)

    def warn_below_cutoff(self, asked: float) -> None:
        """Once per predictor: a threshold below the model's own cut-off cannot bring back what it dropped."""
        if not getattr(self, "_warned_cutoff", False):
            self._warned_cutoff = True
            warnings.warn(f"{self.source}: scores below {self.min_score:g} are cut inside the model, so a threshold "
                          f"of {asked:g} returns no more than {self.min_score:g} would; "
                          + self.cutoff_hint.format(asked=asked), UserWarning, stacklevel=3)

    def precision_text(self) -> str:
        """The precision and why, as the tools print it: "bf16 (auto: this CPU (AMD EPYC) has native bf16)"."""
        return f"{self.precision} ({self.precision_reason})"

    def describe(self) -> dict:
        """What runs: backend, precision, device, classes and the input rule (for logs and GET /v1/model)."""
        from vggdet import __version__

        i = self.config.model.input
        return {"backend": self.backend, "precision": self.precision, "device": str(self.device),
                "classes": list(self.classes), "min_score": self.min_score, "version": __version__,
                "input": {"formats": "RGB images of any size (uint8 HxWx3, or [3,H,W])",
                          "resize": f"shorter side to {i.test_min_size or _largest(i.min_size)}, longer side at "
                                    f"most {i.max_size}", "size_divisible": i.size_divisible}}

    def close(self) -> None:
        """Release what the predictor holds (a session, a converted model); it cannot predict afterwards."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend}, precision={self.precision}, device={self.device}, " \
               f"classes={len(self.classes)})"


def _largest(min_size) -> int:
    return max(min_size) if isinstance(min_size, list) else min_size
