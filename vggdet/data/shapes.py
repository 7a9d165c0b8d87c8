"""A generated detection dataset of circles, squares and triangles on noisy, textured backgrounds.

Small enough to learn in minutes (the demo's and the tests' data), written in a real VOC layout
(Annotations/, ImageSets/Main/{trainval,test}.txt, JPEGImages/) or COCO layout (images/,
annotations/{train,test}.json), so it exercises the same readers as real data. Deterministic by seed:
image i depends only on (seed, i). Objects are 24..110 px at size 256 (scaled with size), have a colour far
from the background, and overlap at most 25% of either box, so every object stays clearly visible.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import cv2
import numpy as np

__all__ = ["SHAPES_CLASSES", "make_shapes", "ensure_shapes", "render_image"]

SHAPES_CLASSES = ["circle", "square", "triangle"]
_MAX_OVERLAP = 0.25  # intersection / smaller box area


def render_image(rng: np.random.Generator, size: int) -> tuple:
    """One RGB uint8 [size, size, 3] image and its objects [(class_name, (x1, y1, x2, y2) continuous)]."""
    img, bg_mean = _background(rng, size)
    objects: list = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            obj = _place(rng, size, bg_mean)
            if all(_overlap(obj[1], o[1]) <= _MAX_OVERLAP for o in objects):
                objects.append(obj)
                break
    for _name, _box, draw in objects:
        draw(img)
    return img, [(name, box) for name, box, _ in objects]


def _background(rng: np.random.Generator, size: int) -> tuple:
    low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    low = (low - low.mean()) * 0.4 + rng.uniform(40, 215)  # soft colour blotches around one mean
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)  # sensor-like noise
    return img.clip(0, 255).astype(np.uint8), img.reshape(-1, 3).mean(axis=0)


def _place(rng: np.random.Generator, size: int, bg_mean: np.ndarray) -> tuple:
    scale = size / 256
    s = int(rng.uniform(24, 110) * scale)
    x0, y0 = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    color = _contrasting_color(rng, bg_mean)
    name = SHAPES_CLASSES[int(rng.integers(0, 3))]
    if name == "circle":
        r = s // 2
        cx, cy = x0 + r, y0 + r
        box = (cx - r, cy - r, cx + r + 1, cy + r + 1)

        def draw(im: np.ndarray) -> None:
            cv2.circle(im, (cx, cy), r, color, -1, cv2.LINE_8)
    else:
        if name == "square":
            pts = np.array([[x0, y0], [x0 + s - 1, y0], [x0 + s - 1, y0 + s - 1], [x0, y0 + s - 1]])
        else:
            apex = x0 + int(rng.integers(0, s))
            pts = np.array([[apex, y0], [x0 + s - 1, y0 + s - 1], [x0, y0 + s - 1]])
        pts = pts.astype(np.int32)
        box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1)

        def draw(im: np.ndarray) -> None:
            cv2.fillPoly(im, [pts], color, cv2.LINE_8)
    return name, tuple(float(v) for v in box), draw


def _contrasting_color(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple:
    for _ in range(50):
        c = rng.integers(0, 256, size=3)
        if np.abs(c - bg_mean).sum() > 180:
            break
    else:  # far from a mid-grey background in brightness at least
        c = np.where(bg_mean > 128, 0, 255)
    return tuple(int(v) for v in c)


def _overlap(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def make_shapes(out_dir: str, fmt: str = "voc", num_train: int = 400, num_test: int = 100, size: int = 256,
                seed: int = 0) -> str:
    """Write the dataset into `out_dir` (which must not exist or be empty), atomically: everything goes to a
    temporary sibling folder that is renamed at the end, so a half-written dataset never appears."""
    if fmt not in ("voc", "coco"):
        raise ValueError(f"make_shapes: fmt must be 'voc' or 'coco', got {fmt!r}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir}: exists and is not an empty folder (checked before drawing any image)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes-tmp-", dir=parent)
    try:
        splits = {"trainval": range(num_train), "test": range(num_train, num_train + num_test)}
        write = _write_voc if fmt == "voc" else _write_coco
        write(tmp, splits, size, seed)
        if os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_shapes(root: str, num_train: int, num_test: int, size: int, seed: int, what: str = "data.root") -> None:
    """Generate the VOC-layout shapes dataset at `root` unless it is already there (complete by
    construction, since make_shapes renames it into place); tolerant of several processes racing.

    Says so in one line on stderr first (`what` names the setting that chose `root`): a relative root lands
    in whatever folder the tool runs from."""
    if os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt")):
        return
    print(f"generating the shapes dataset ({num_train} train / {num_test} test images, {size} px) into "
          f"{os.path.abspath(root)} ({what})", file=sys.stderr, flush=True)
    try:
        make_shapes(root, "voc", num_train, num_test, size, seed)
    except OSError:
        if not os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt")):
            raise  # not another process winning the race


def _images(splits: dict, size: int, seed: int):
    for split, idx in splits.items():
        for i in idx:
            img, objects = render_image(np.random.default_rng([seed, i]), size)
            yield split, f"{i:06d}", img, objects


def _write_voc(root: str, splits: dict, size: int, seed: int) -> None:
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, d))
    ids: dict = {s: [] for s in splits}
    for split, image_id, img, objects in _images(splits, size, seed):
        ids[split].append(image_id)
        cv2.imwrite(os.path.join(root, "JPEGImages", image_id + ".jpg"), img[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(_voc_xml(image_id, size, objects))
    for split, names in ids.items():
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(n + "\n" for n in names))


def _voc_xml(image_id: str, size: int, objects: list) -> str:
    objs = "".join(
        # continuous 0-based (x1, y1, x2, y2) -> VOC 1-based inclusive (x1 + 1, y1 + 1, x2, y2)
        f"  <object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{int(b[0]) + 1}</xmin><ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax>"
        f"<ymax>{int(b[3])}</ymax></bndbox></object>\n"
        for n, b in objects
    )
    return (f"<annotation>\n  <folder>JPEGImages</folder><filename>{image_id}.jpg</filename>\n"
            f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def _write_coco(root: str, splits: dict, size: int, seed: int) -> None:
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "annotations"))
    # Sparse category ids on purpose, as in real COCO, so the contiguous-label mapping is exercised.
    cats = [{"id": 2 * k + 3, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPES_CLASSES)]
    cat_of = {c["name"]: c["id"] for c in cats}
    data = {s: {"images": [], "annotations": [], "categories": cats} for s in splits}
    for split, image_id, img, objects in _images(splits, size, seed):
        num = int(image_id) + 1
        cv2.imwrite(os.path.join(root, "images", image_id + ".jpg"), img[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        data[split]["images"].append({"id": num, "file_name": image_id + ".jpg", "width": size, "height": size})
        for n, b in objects:
            w, h = b[2] - b[0], b[3] - b[1]
            data[split]["annotations"].append({
                "id": len(data[split]["annotations"]) + 1, "image_id": num, "category_id": cat_of[n],
                "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0,
            })
    for split, d in data.items():
        with open(os.path.join(root, "annotations", f"{'train' if split == 'trainval' else 'test'}.json"), "w") as f:
            json.dump(d, f)
