"""YOLO, CSV and LabelMe data: each written from the BCCD VOC annotations in the test and read back equal to
the VOC reader; training and tools/test_det.py on each; bad inputs; background images in training."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY

from vggdet.config import load_config
from vggdet.data import (
    CSVDetection,
    DataError,
    LabelMeDetection,
    VOCDetection,
    YOLODetection,
    build_dataloader,
    build_dataset,
    check_data,
)
from vggdet.data.loader import keep_background
from vggdet.model.detector import build_detector
from vggdet.training.trainer import train

CLASSES = ["RBC", "WBC", "Platelets"]
YOLO_ATOL = 0.75e-6 * 640 + 1e-4  # 6-decimal rounding of cx and w/2: <= 0.75e-6 of the 640-px width


# ------------------------------------------------------------------------- writers (from VOC records)
def voc_items(ds: VOCDetection, ids: list | None = None) -> list:
    """Each image's boxes as annotated (0-based, not clipped); VOC's zero-area clicks (xmax == xmin in
    1-based pixels, 1 px wide once converted) written as the zero-area boxes they are, as Ultralytics'
    VOC converter writes them (w = xmax - xmin = 0)."""
    items = []
    for k, image_id in enumerate(ds.image_ids):
        if ids is None or image_id in ids:
            rec = ds.records[k]
            boxes = rec["boxes"].copy()
            boxes[~rec["valid"], 2:] = boxes[~rec["valid"], :2]
            items.append({"id": image_id, "path": ds.image_paths[k], "size": rec["size"], "boxes": boxes,
                          "names": [ds.classes[c - 1] for c in rec["labels"]]})
    return items


def background_item(like: dict, name: str) -> dict:
    """An image without objects (a BCCD photo under another name)."""
    return {"id": name, "path": like["path"], "size": like["size"], "boxes": np.zeros((0, 4), np.float32),
            "names": []}


def link_image(item: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{item['id']}.jpg"
    if not dst.exists():
        dst.symlink_to(item["path"])
    return dst


def write_yolo(splits: dict, out: Path) -> Path:
    """images/<split>/<id>.jpg, labels/<split>/<id>.txt; every 7th box as a segment (its 4 corners). A
    background image gets an empty label file when its id ends in "_empty", none otherwise."""
    for split, items in splits.items():
        (out / "labels" / split).mkdir(parents=True)
        for it in items:
            link_image(it, out / "images" / split)
            h, w = it["size"]
            rows = []
            for n, ((x1, y1, x2, y2), name) in enumerate(zip(it["boxes"].tolist(), it["names"])):
                c = CLASSES.index(name)
                if n % 7 == 6:
                    corners = [x1 / w, y1 / h, x2 / w, y1 / h, x2 / w, y2 / h, x1 / w, y2 / h]
                    rows.append(f"{c} " + " ".join(f"{v:.6f}" for v in corners))
                else:
                    rows.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                                f"{(y2 - y1) / h:.6f}")
            if rows or it["id"].endswith("_empty"):
                (out / "labels" / split / f"{it['id']}.txt").write_text("".join(r + "\n" for r in rows))
    (out / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                   "names:\n" + "".join(f"  {k}: {c}\n" for k, c in enumerate(CLASSES)))
    return out / "data.yaml"


def write_csv(splits: dict, out: Path) -> Path:
    """<split>.csv with image paths images/<id>.jpg, exact float coordinates, background rows."""
    for split, items in splits.items():
        lines = ["image,x1,y1,x2,y2,class"]
        for it in items:
            link_image(it, out / "images")
            rows = [f"images/{it['id']}.jpg," + ",".join(repr(v) for v in box) + f",{name}"
                    for box, name in zip(it["boxes"].tolist(), it["names"])]
            lines += rows or [f"images/{it['id']}.jpg,,,,,"]
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return out


def write_labelme(splits: dict, out: Path) -> Path:
    """<split>/<id>.json with imagePath ../images/<id>.jpg; every 5th box as a 4-point polygon."""
    for split, items in splits.items():
        (out / split).mkdir(parents=True)
        for it in items:
            link_image(it, out / "images")
            shapes = []
            for n, ((x1, y1, x2, y2), name) in enumerate(zip(it["boxes"].tolist(), it["names"])):
                poly = n % 5 == 4
                points = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]] if poly else [[x2, y2], [x1, y1]]
                shapes.append({"label": name, "points": points, "group_id": None, "flags": {},
                               "shape_type": "polygon" if poly else "rectangle"})
            h, w = it["size"]
            doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": f"../images/{it['id']}.jpg",
                   "imageData": None, "imageHeight": h, "imageWidth": w}
            (out / split / f"{it['id']}.json").write_text(json.dumps(doc, indent=1))
    return out


def format_keys(fmt: str, root: Path) -> list:
    """The data.* overrides that point a config at a written copy."""
    if fmt == "yolo":
        return ["data.format=yolo", f"data.root={root}"]  # the folder holding data.yaml
    ext = ".csv" if fmt == "csv" else ""
    return [f"data.format={fmt}", f"data.root={root}", f"data.train_ann=train{ext}", f"data.test_ann=val{ext}"]


WRITERS = {"yolo": write_yolo, "csv": write_csv, "labelme": write_labelme}


def write(fmt: str, splits: dict, out: Path) -> Path:
    WRITERS[fmt](splits, out)
    return out


# ----------------------------------------------------------------------------------- BCCD, all images
@pytest.fixture(scope="module")
def bccd(bccd_root: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the two zero-area boxes: checked in test_data.py
        return {s: VOCDetection(str(bccd_root), s, classes=CLASSES) for s in ("trainval", "test")}


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from threads, and on a shared 2-core machine they cost ~10x (spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same(ref: VOCDetection, ds, atol: float) -> None:
    """Every image's sanitised boxes, class names, size and file equal the VOC reader's."""
    assert len(ds) == len(ref)
    where = {i.rsplit("/", 1)[-1]: k for k, i in enumerate(ds.image_ids)}  # YOLO / CSV ids carry folders
    for k, image_id in enumerate(ref.image_ids):
        a, b = ref.get_annotation(k), ds.get_annotation(where[image_id])
        np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=0, atol=atol, err_msg=image_id)
        assert [ds.classes[c - 1] for c in b["labels"]] == [ref.classes[c - 1] for c in a["labels"]], image_id
        assert b["orig_size"] == a["orig_size"] and b["boxes"].dtype == np.float32
        assert os.path.realpath(ds.image_paths[where[image_id]]) == os.path.realpath(ref.image_paths[k])


@pytest.mark.parametrize("fmt, atol", [("yolo", YOLO_ATOL), ("csv", 0.0), ("labelme", 0.0)])
def test_bccd_written_as_format_reads_back_as_voc(tmp_path: Path, bccd: dict, fmt: str, atol: float) -> None:
    splits = {"train": voc_items(bccd["trainval"]), "val": voc_items(bccd["test"])}
    cfg = load_config(None, format_keys(fmt, write(fmt, splits, tmp_path / fmt)))
    with pytest.warns(UserWarning, match=r"dropped 2 degenerate box\(es\): .*BloodImage_00338.*BloodImage_00343"):
        train_ds = build_dataset(cfg, "train")
    test_ds = build_dataset(cfg, "test")
    assert_same(bccd["trainval"], train_ds, atol)
    assert_same(bccd["test"], test_ds, atol)
    # YOLO names the classes; CSV / LabelMe without data.classes: the train split's sorted names, both splits
    expected = CLASSES if fmt == "yolo" else sorted(CLASSES)
    assert train_ds.classes == test_ds.classes == expected
    img, t = test_ds[0]
    assert img.shape == (480, 640, 3) and t["labels"].dtype == np.int64
    np.testing.assert_array_equal(t["boxes"], test_ds.get_annotation(0)["boxes"])


# ------------------------------------------------------------------------- BCCD subset: train and test
def subset(bccd: dict) -> dict:
    """6 training images plus two background ones (an empty and a missing YOLO label file), 3 test images."""
    tr = voc_items(bccd["trainval"], bccd["trainval"].image_ids[:6])
    return {"train": tr + [background_item(tr[0], "bg_empty"), background_item(tr[1], "bg_none")],
            "val": voc_items(bccd["test"], bccd["test"].image_ids[:3])}


def tiny_bccd(*extra: str) -> list:
    return [*TINY, "model.num_classes=3", "model.input.min_size=120", "model.input.max_size=160",
            "data.num_workers=0", "data.batch_size=2", "test.batch_size=3", "train.epochs=1",
            "train.warmup_iters=2", "train.log_interval=1", "train.eval_interval=0",
            "runtime.winograd=false", *extra]  # no Winograd timing at the evaluation


@pytest.mark.parametrize("fmt", ["yolo", "csv", "labelme"])
def test_train_and_test_det_on_format(tmp_path: Path, bccd: dict, fmt: str, one_thread, monkeypatch) -> None:
    from vggdet.cli.test import main as test_det  # in this process: a subprocess per format doubles the time

    root = write(fmt, subset(bccd), tmp_path / fmt)
    cfg = load_config(None, tiny_bccd(*format_keys(fmt, root)))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(cfg, str(tmp_path / "work"))
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["mode"] == "train"]
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) for r in steps)  # 8 images (2 background) / 2
    assert test_det([str(tmp_path / "work" / "latest.pth"), "--out", str(tmp_path / "t")]) == 0
    again = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert set(again["per_class"]) == set(CLASSES)


# ------------------------------------------------------------------------------- background images
@pytest.mark.parametrize("fmt", ["yolo", "csv", "labelme"])
def test_background_images_kept_or_dropped(tmp_path: Path, bccd: dict, fmt: str) -> None:
    root = write(fmt, subset(bccd), tmp_path / fmt)
    keys = format_keys(fmt, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = build_dataset(load_config(None, keys), "train")
        dropped = build_dataset(load_config(None, keys + ["data.keep_background=false"]), "train")
    names = [i.rsplit("/", 1)[-1] for i in kept.image_ids]
    assert len(kept) == 8 and {"bg_empty", "bg_none"} <= set(names)
    for name in ("bg_empty", "bg_none"):
        k = names.index(name)
        assert kept.is_background(k) and kept.get_annotation(k)["boxes"].shape == (0, 4)
        _, t = kept[k]
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert len(dropped) == 6 and not any(dropped.is_background(i) for i in range(len(dropped)))


def test_keep_background_defaults_and_coco(coco128_root: Path) -> None:
    keys = ["data.format=coco", f"data.root={coco128_root}", "data.train_images=train2017",
            "data.train_ann=annotations/instances_train2017.json"]
    for fmt in ("voc", "yolo", "csv", "labelme", "shapes"):
        assert keep_background(load_config(None, [f"data.format={fmt}"]).data)
    n = {}
    for name, extra in [("default", []), ("old", ["data.coco_skip_empty=false"]),
                        ("new", ["data.keep_background=true"]), ("both", ["data.coco_skip_empty=false",
                                                                          "data.keep_background=false"])]:
        n[name] = len(build_dataset(load_config(None, keys + extra), "train"))
    assert n["old"] == n["new"] == 128 and n["default"] == n["both"] < 128  # keep_background wins when set


def first_batch_with_background(tmp_path: Path, bccd: dict) -> tuple:
    """A loader batch of one BCCD image and one background image (empty YOLO label), and the tiny model."""
    tr = voc_items(bccd["trainval"], bccd["trainval"].image_ids[:1])
    root = write_yolo({"train": tr + [background_item(tr[0], "bg_empty")], "val": tr}, tmp_path / "y")
    cfg = load_config(None, tiny_bccd("data.format=yolo", f"data.root={root}"))
    images, targets = next(iter(build_dataloader(cfg, "train")))
    torch.manual_seed(0)
    return build_detector(cfg).train(), images, targets


def grad_only_from(module: torch.nn.Module, rows) -> None:
    """Let only the output rows `rows()` (an index or slice) of `module` pass gradient back."""
    def hook(_, __, out):
        mask = torch.zeros_like(out)
        mask[rows()] = 1
        out.register_hook(lambda g: g * mask)
    module.register_forward_hook(hook)


def test_mixed_batch_background_image_gives_negative_gradients(tmp_path: Path, bccd: dict, one_thread) -> None:
    model, images, targets = first_batch_with_background(tmp_path, bccd)
    bg = [len(t["boxes"]) for t in targets].index(0)
    assert len(targets) == 2 and len(targets[1 - bg]["boxes"]) > 0
    counts: list = []  # sampled RoIs per image, in the head's row order
    sample = model.roi_head.sample

    def counting_sample(proposals, tgts):
        out = sample(proposals, tgts)
        counts[:] = [len(r) for r in out[0]]
        return out

    model.roi_head.sample = counting_sample
    bg_rows = lambda: slice(sum(counts[:bg]), sum(counts[: bg + 1]))  # noqa: E731
    for m in (model.rpn.cls_logits, model.rpn.bbox_pred):
        grad_only_from(m, lambda: bg)  # [N, ...]: the background image's batch row
    for m in (model.roi_head.cls_score, model.roi_head.bbox_pred):
        grad_only_from(m, bg_rows)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0  # the other image's boxes
    sum(losses.values()).backward()
    assert counts[bg] > 0
    rpn, head = model.rpn, model.roi_head
    # the background image alone: classification gradient (it is all negatives), no box gradient
    for p in (rpn.cls_logits.weight, head.cls_score.weight):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for p in (rpn.bbox_pred.weight, head.bbox_pred.weight):
        assert (p.grad == 0).all()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = head.cls_score.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, head.cls_score.weight) and torch.isfinite(head.cls_score.weight).all()


@pytest.mark.parametrize("bg_lo", [0.0, 0.1])
def test_all_background_batch_box_losses_exactly_zero(bg_lo: float, one_thread) -> None:
    torch.manual_seed(0)
    model = build_detector(load_config(None, TINY + [f"model.roi_head.bg_iou_lo={bg_lo}"])).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 96, 128), torch.rand(3, 128, 96)], [empty, empty])
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    # pure negatives for both stages, also with the original Fast R-CNN bg_iou_lo = 0.1
    assert losses["loss_rpn_cls"].item() > 0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.roi_head.cls_score.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- bad inputs
def tiny_image(path: Path, h: int = 40, w: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))
    return path


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    """images/{train,val}/a.jpg (40 x 50), one box each, names [cat, dog]."""
    for split in ("train", "val"):
        tiny_image(tmp_path / "images" / split / "a.jpg")
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / "a.txt").write_text("1 0.5 0.5 0.2 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    return tmp_path


def test_yolo_conversion_segments_and_lists(yolo_dir: Path) -> None:
    label = yolo_dir / "labels/train/a.txt"
    label.write_text("1 0.5 0.5 0.2 0.5\n\n0 0.1 0.2 0.3 0.2 0.2 0.6\n")  # a box, a blank line, a triangle
    ds = YOLODetection(str(yolo_dir / "data.yaml"), "train")
    ann = ds.get_annotation(0)
    np.testing.assert_allclose(ann["boxes"], [[20, 10, 30, 30], [5, 8, 15, 24]], atol=1e-5)  # W 50, H 40
    assert ann["labels"].tolist() == [2, 1] and ds.classes == ["cat", "dog"] and ds.image_ids == ["images/train/a"]
    (yolo_dir / "val.txt").write_text("./images/val/a.jpg\nimages/train/a.jpg\n")  # relative to the list
    (yolo_dir / "data.yaml").write_text("train: images/train\nval: val.txt\nnames: {0: cat, 1: dog}\n")
    assert len(YOLODetection(str(yolo_dir / "data.yaml"), "val")) == 2


def test_yolo_sizes_from_headers_read_once(yolo_dir: Path, monkeypatch) -> None:
    from vggdet.data import image_io

    calls = []
    header = image_io.read_image_size
    monkeypatch.setattr(image_io, "_sizes", {})
    monkeypatch.setattr(image_io, "read_image_size", lambda p: calls.append(p) or header(p))
    monkeypatch.setattr("vggdet.data.base.read_image", lambda p: pytest.fail(f"decoded {p} at start-up"))
    for _ in range(2):
        assert YOLODetection(str(yolo_dir / "data.yaml"), "train").image_size(0) == (40, 50)
    assert len(calls) == 1
    tiny_image(yolo_dir / "images/train/a.jpg", h=60)  # replaced: another size, another mtime
    assert YOLODetection(str(yolo_dir / "data.yaml"), "train").image_size(0) == (60, 50) and len(calls) == 2


@pytest.mark.parametrize("row, message", [
    ("1 0.5 0.5 0.2", r"a\.txt:2: expected 5 fields \(class cx cy w h\) or a segment .*got 4"),
    ("1 0.5 0.5 0.2 0.5 0.1", r"a\.txt:2: expected 5 fields .*got 6"),
    ("2 0.5 0.5 0.2 0.5", r"a\.txt:2: class id 2 is outside names \(0\.\.1\)"),
    ("0 1.2 0.5 0.2 0.5", r"a\.txt:2: coordinate outside \[0, 1\]"),
    ("0 0.5 x 0.2 0.5", r"a\.txt:2: not a number"),
])
def test_yolo_bad_rows(yolo_dir: Path, row: str, message: str) -> None:
    (yolo_dir / "labels/train/a.txt").write_text("1 0.5 0.5 0.2 0.5\n" + row + "\n")
    with pytest.raises(DataError, match=message):
        YOLODetection(str(yolo_dir / "data.yaml"), "train")


def test_yolo_bad_yaml_missing_image_and_unknown_class(yolo_dir: Path) -> None:
    yaml_path = yolo_dir / "data.yaml"
    (yolo_dir / "labels/train/a.txt").write_text("5 0.5 0.5 0.2 0.5\n1 0.5 0.5 0.2 0.5\n")
    with pytest.warns(UserWarning, match=r"a\.txt:1: skipping object of unknown class id 5"):
        ds = YOLODetection(str(yaml_path), "train", skip_unknown_classes=True)
    assert ds.get_annotation(0)["labels"].tolist() == [2]
    with pytest.raises(DataError, match=r"data\.yaml: names .* differ from data\.classes"):
        YOLODetection(str(yaml_path), "val", classes=["dog", "cat"])
    (yolo_dir / "val.txt").write_text("images/val/a.jpg\nimages/val/nope.jpg\n")
    yaml_path.write_text("train: images/train\nval: val.txt\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match=r"val\.txt:2: .*nope\.jpg: image file not found"):
        YOLODetection(str(yaml_path), "val")
    with pytest.warns(UserWarning, match=r"val\.txt:2: .*nope\.jpg.*skipped"):
        assert len(YOLODetection(str(yaml_path), "val", skip_bad_images=True)) == 1


@pytest.mark.parametrize("text, message", [
    ("train: images/train\nval: images/val\n", r"data\.yaml: no 'names' key"),
    ("train: images/train\nval: images/nowhere\nnames: [a]\n", r"data\.yaml: val source .*nowhere not found"),
    ("names: {0: a, 2: b}\ntrain: images/train\nval: images/val\n", r"data\.yaml: names ids must be 0\.\.1"),
    ("names: [a]\nnc: 2\ntrain: images/train\nval: images/val\n", r"data\.yaml: nc is 2 but names lists 1"),
    ("train: images/train\nval: [images/val\nnames: [a]\n", r"data\.yaml:3: malformed YAML"),
])
def test_yolo_bad_yaml(yolo_dir: Path, text: str, message: str) -> None:
    (yolo_dir / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=message):
        YOLODetection(str(yolo_dir / "data.yaml"), "train")


def test_csv_rows_background_and_bad_inputs(tmp_path: Path) -> None:
    tiny_image(tmp_path / "img" / "a.jpg")
    tiny_image(tmp_path / "img" / "b.png")
    csv = tmp_path / "train.csv"
    csv.write_text("image,x1,y1,x2,y2,class\nimg/a.jpg,1,2,30.5,20,dog\nimg/b.png,,,,,\nimg/a.jpg,0,0,10,10,cat\n")
    ds = CSVDetection(str(csv))
    assert ds.classes == ["cat", "dog"] and ds.image_ids == ["img/a", "img/b"]
    np.testing.assert_array_equal(ds.get_annotation(0)["boxes"], [[1, 2, 30.5, 20], [0, 0, 10, 10]])
    assert ds.get_annotation(0)["labels"].tolist() == [2, 1] and ds.is_background(1)
    csv.write_text("image,x1,y1,x2,y2,class\nimg/a.jpg,1,2,3,4,dog\nimg/nope.jpg,1,2,3,4,dog\n")
    with pytest.warns(UserWarning, match=r"train\.csv:3: .*nope\.jpg.*skipped"):
        assert len(CSVDetection(str(csv), skip_bad_images=True)) == 1
    csv.write_text("file,x1,y1,x2,y2,label\n")
    with pytest.raises(DataError, match=r"train\.csv:1: expected the header image,x1,y1,x2,y2,class"):
        CSVDetection(str(csv))


@pytest.mark.parametrize("rows, message", [
    ("img/a.jpg,1,2,3,dog", r"train\.csv:2: expected 6 fields \(image,x1,y1,x2,y2,class\), got 5"),
    ("img/a.jpg,1,2,3,4,dog\nimg/nope.jpg,1,2,3,4,dog", r"train\.csv:3: .*nope\.jpg: image file not found"),
    ("img/a.jpg,1,,3,4,dog", r"train\.csv:2: a box row needs x1, y1, x2, y2 and class"),
    ("img/a.jpg,1,2,x,4,dog", r"train\.csv:2: not a number"),
    ("img/a.jpg,1,2,inf,4,dog", r"train\.csv:2: coordinates must be finite"),
    (",1,2,3,4,dog", r"train\.csv:2: the image field is empty"),
])
def test_csv_bad_rows(tmp_path: Path, rows: str, message: str) -> None:
    tiny_image(tmp_path / "img" / "a.jpg")
    (tmp_path / "train.csv").write_text("image,x1,y1,x2,y2,class\n" + rows + "\n")
    with pytest.raises(DataError, match=message):
        CSVDetection(str(tmp_path / "train.csv"))


def test_csv_test_split_takes_train_classes(tmp_path: Path) -> None:
    tiny_image(tmp_path / "a.jpg")
    (tmp_path / "train.csv").write_text("image,x1,y1,x2,y2,class\na.jpg,1,2,30,20,dog\na.jpg,0,0,10,10,cat\n")
    (tmp_path / "val.csv").write_text("image,x1,y1,x2,y2,class\na.jpg,1,2,30,20,dog\na.jpg,1,2,30,20,cow\n")
    cfg = load_config(None, format_keys("csv", tmp_path))
    with pytest.raises(DataError, match=r"val\.csv:3: class 'cow' is not in classes \['cat', 'dog'\]"):
        build_dataset(cfg, "test")
    cfg.data.skip_unknown_classes = True
    with pytest.warns(UserWarning, match=r"val\.csv:3: skipping object of unknown class 'cow'"):
        ds = build_dataset(cfg, "test")
    assert ds.classes == ["cat", "dog"] and ds.get_annotation(0)["labels"].tolist() == [2]


def test_labelme_shapes_and_bad_inputs(tmp_path: Path) -> None:
    tiny_image(tmp_path / "a.jpg")
    folder = tmp_path / "ann"
    folder.mkdir()
    shapes = [{"label": "dog", "points": [[30, 20], [1, 2]], "shape_type": "rectangle"},
              {"label": "cat", "points": [[5, 5], [25, 9], [12, 30]], "shape_type": "polygon"}]
    doc = {"shapes": shapes, "imagePath": "..\\a.jpg", "imageHeight": 40, "imageWidth": 50}  # Windows separator
    (folder / "a.json").write_text(json.dumps(doc))
    (folder / "b.json").write_text(json.dumps({**doc, "shapes": []}))  # a background image
    ds = LabelMeDetection(str(folder))
    assert ds.classes == ["cat", "dog"] and ds.image_ids == ["a", "b"] and ds.is_background(1)
    np.testing.assert_array_equal(ds.get_annotation(0)["boxes"], [[1, 2, 30, 20], [5, 5, 25, 30]])
    (folder / "b.json").unlink()
    (folder / "a.json").write_text(json.dumps({**doc, "imagePath": "nope.jpg"}))
    with pytest.warns(UserWarning, match=r"a\.json: .*nope\.jpg.*skipped"):
        assert len(LabelMeDetection(str(tmp_path / "ann"), skip_bad_images=True)) == 0


@pytest.mark.parametrize("change, message", [  # a dict changes a valid file's keys, a str replaces the file
    ({"shapes": [{"label": "dog", "points": [[1, 2], [3, 4]], "shape_type": "circle"}]},
     r"a\.json: shape 0 \('dog'\): shape_type 'circle' is not a box"),
    ({"shapes": [{"label": "cat", "points": [[1, 2], [3, 4]], "shape_type": "polygon"}]},
     r"a\.json: shape 0 \('cat'\): a polygon needs at least 3"),
    ({"imagePath": "nope.jpg"}, r"a\.json: .*nope\.jpg: image file not found"),
    ({"imagePath": None}, r"a\.json: not a LabelMe file"),
    ('{\n "shapes": [,\n', r"a\.json:2: malformed JSON"),
])
def test_labelme_bad_inputs(tmp_path: Path, change, message: str) -> None:
    tiny_image(tmp_path / "a.jpg")
    (tmp_path / "ann").mkdir()
    doc = {"shapes": [], "imagePath": "../a.jpg", "imageHeight": 40, "imageWidth": 50}
    text = json.dumps({**doc, **change}) if isinstance(change, dict) else change
    (tmp_path / "ann" / "a.json").write_text(text)
    with pytest.raises(DataError, match=message):
        LabelMeDetection(str(tmp_path / "ann"))


def test_check_data_names_the_missing_path(tmp_path: Path, yolo_dir: Path) -> None:
    nowhere = tmp_path / "nowhere"
    hint = r"--set data\.root=/path/to/dataset data\.train_ann="
    for keys, message in [(["data.format=yolo", f"data.root={nowhere}"], r"nowhere .*--set data\.root=/path/to/data\.yaml"),
                          (format_keys("csv", nowhere), r"nowhere.train\.csv .*" + hint),
                          (format_keys("labelme", nowhere), r"nowhere.train .*" + hint)]:
        with pytest.raises(DataError, match=message):
            check_data(load_config(None, keys))
    check_data(load_config(None, ["data.format=yolo", f"data.root={yolo_dir / 'data.yaml'}"]))
    (yolo_dir / "data.yaml").write_text("train: images/train\nval: images/val\n")
    with pytest.raises(DataError, match=r"data\.yaml: no 'names' key"):
        check_data(load_config(None, ["data.format=yolo", f"data.root={yolo_dir}"]))
