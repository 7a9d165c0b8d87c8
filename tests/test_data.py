"""Data: loaders on generated and real files, augmentation consistency, proposals, bad inputs, batching."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, one_line, run_tool

from vggdet.config import AugmentConfig, load_config
from vggdet.data import (
    SHAPES_CLASSES,
    COCODetection,
    DataError,
    VOCDetection,
    build_dataloader,
    load_proposals,
    make_shapes,
)
from vggdet.data.image_io import read_image
from vggdet.data.loader import GroupedBatchSampler, SeededSampler
from vggdet.data.transforms import DetectionTransform, build_transform


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory) -> Path:
    return Path(make_shapes(str(tmp_path_factory.mktemp("s") / "voc"), "voc", 24, 8, 128, seed=1))


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory) -> Path:
    return Path(make_shapes(str(tmp_path_factory.mktemp("s") / "coco"), "coco", 12, 4, 128, seed=2))


def copy_voc(src: Path, dst: Path, ids: list) -> Path:
    """A small writable VOC copy with split "mini" holding `ids`."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / d).mkdir(parents=True)
    for i in ids:
        shutil.copy(src / "Annotations" / f"{i}.xml", dst / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
    (dst / "ImageSets/Main/mini.txt").write_text("".join(i + "\n" for i in ids))
    return dst


# ------------------------------------------------------------------------------- reference parsers
def voc_reference(root: Path, image_id: str, classes: list) -> tuple:
    """Independent parse: all objects, 0-based continuous, zero-area (as written) dropped, clipped."""
    r = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    w, h = int(r.find("size/width").text), int(r.find("size/height").text)
    boxes, labels, diff = [], [], []
    for o in r.iter("object"):
        x1, y1, x2, y2 = (float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append([max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)])
        labels.append(classes.index(o.find("name").text) + 1)
        diff.append(o.find("difficult") is not None and o.find("difficult").text.strip() == "1")
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels), np.array(diff, bool), (h, w)


def check_voc(ds: VOCDetection, root: Path) -> None:
    for i, image_id in enumerate(ds.image_ids):
        boxes, labels, diff, size = voc_reference(root, image_id, ds.classes)
        ann = ds.get_annotation(i)
        np.testing.assert_allclose(ann["boxes"], boxes)
        np.testing.assert_array_equal(ann["labels"], labels)
        np.testing.assert_array_equal(ann["difficult"], diff)
        assert ann["boxes"].dtype == np.float32 and ann["labels"].dtype == np.int64
        assert ann["image_id"] == image_id and ann["orig_size"] == size


def check_coco(ds: COCODetection, ann_file: Path) -> None:
    data = json.loads(ann_file.read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    images = {im["id"]: im for im in data["images"]}
    for i, image_id in enumerate(ds.image_ids):
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        im = images[image_id]
        ref = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                        for a in anns], np.float32).reshape(-1, 4)
        ref[:, 0::2] = ref[:, 0::2].clip(0, im["width"])
        ref[:, 1::2] = ref[:, 1::2].clip(0, im["height"])
        ok = ((ref[:, 2] - ref[:, 0]) >= 1) & ((ref[:, 3] - ref[:, 1]) >= 1)
        ann = ds.get_annotation(i)
        np.testing.assert_allclose(ann["boxes"], ref[ok], atol=1e-3)
        np.testing.assert_array_equal(ann["labels"], [cat_ids.index(a["category_id"]) + 1 for a, k in zip(anns, ok) if k])
        np.testing.assert_array_equal(ann["iscrowd"], [bool(a["iscrowd"]) for a, k in zip(anns, ok) if k])
        assert ann["orig_size"] == (im["height"], im["width"])


# ------------------------------------------------------------------------------------ generated data
def test_shapes_voc_matches_files(shapes_voc: Path) -> None:
    ds = VOCDetection(str(shapes_voc), "trainval", classes=SHAPES_CLASSES)
    assert len(ds) == 24 and ds.classes == SHAPES_CLASSES
    check_voc(ds, shapes_voc)
    img, t = ds[0]
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert set(t) >= {"boxes", "labels", "difficult", "iscrowd", "image_id", "orig_size"}
    assert 1 <= len(t["boxes"]) <= 6


def test_shapes_coco_matches_files_and_label_map(shapes_coco: Path) -> None:
    ann_file = shapes_coco / "annotations" / "train.json"
    ds = COCODetection(str(shapes_coco / "images"), str(ann_file))
    assert ds.classes == SHAPES_CLASSES and len(ds) == 12
    check_coco(ds, ann_file)
    for k in range(1, len(ds.classes) + 1):
        assert ds.cat_id_to_label[ds.label_to_cat_id[k]] == k
    assert ds.label_to_cat_id[1:] == [3, 5, 7]  # sparse ids -> contiguous labels


def test_make_shapes_deterministic(tmp_path: Path) -> None:
    a = Path(make_shapes(str(tmp_path / "a"), "voc", 3, 1, 96, seed=5))
    b = Path(make_shapes(str(tmp_path / "b"), "voc", 3, 1, 96, seed=5))
    c = Path(make_shapes(str(tmp_path / "c"), "voc", 3, 1, 96, seed=6))
    for f in ("Annotations/000001.xml", "JPEGImages/000001.jpg", "ImageSets/Main/test.txt"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / "JPEGImages/000001.jpg").read_bytes() != (c / "JPEGImages/000001.jpg").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes-tmp")]  # no leftovers


def test_auto_classes(shapes_voc: Path) -> None:
    assert VOCDetection(str(shapes_voc), "test", classes="auto").classes == sorted(SHAPES_CLASSES)


# ----------------------------------------------------------------------------------------- real data
def test_bccd_matches_xml_and_drops_zero_area_boxes(bccd_root: Path) -> None:
    with pytest.warns(UserWarning, match=r"dropped 2 degenerate") as rec:
        ds = VOCDetection(str(bccd_root), "trainval", classes=["RBC", "WBC", "Platelets"])
    assert sum("degenerate" in str(w.message) for w in rec) == 1  # one counting warning
    assert len(ds) == 292
    check_voc(ds, bccd_root)
    assert "BloodImage_00338" in ds.image_ids  # a trainval image with one zero-area box
    raw = len(ET.parse(bccd_root / "Annotations/BloodImage_00338.xml").getroot().findall("object"))
    assert len(ds.get_annotation(ds.image_ids.index("BloodImage_00338"))["boxes"]) == raw - 1


def test_coco128_matches_json_crowd_and_grayscale(coco128_root: Path) -> None:
    ann_file = coco128_root / "annotations" / "instances_train2017.json"
    test_ds = COCODetection(str(coco128_root / "train2017"), str(ann_file), train=False)
    train_ds = COCODetection(str(coco128_root / "train2017"), str(ann_file), train=True)
    assert len(test_ds) == 128 and 0 < len(train_ds) < 128 and len(test_ds.classes) == 80
    check_coco(test_ds, ann_file)
    assert sum(int(test_ds.get_annotation(i)["iscrowd"].sum()) for i in range(len(test_ds))) == 10
    for i in range(len(train_ds)):  # crowd boxes never become training targets
        ann = train_ds.get_annotation(i)
        assert (~ann["iscrowd"]).any()
    crowd_i = next(i for i in range(len(train_ds)) if train_ds.get_annotation(i)["iscrowd"].any())
    _, t = train_ds[crowd_i]
    assert not t["iscrowd"].any() and len(t["boxes"]) == (~train_ds.get_annotation(crowd_i)["iscrowd"]).sum()
    assert test_ds.coco is not None
    gray = test_ds.image_ids.index(86)  # 000000000086.jpg is stored as a 1-channel JPEG
    assert cv2.imread(test_ds.image_paths[gray], cv2.IMREAD_UNCHANGED).ndim == 2
    img, _ = test_ds[gray]
    assert img.shape[2] == 3 and img.dtype == np.uint8


def test_png_gray_rgba_16bit(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), rgb[:, :, 0])
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb[:, :, ::-1], np.full((20, 30), 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / "d.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    assert (read_image(str(tmp_path / "g.png")) == rgb[:, :, :1]).all()
    assert (read_image(str(tmp_path / "a.png")) == rgb).all()
    assert (read_image(str(tmp_path / "d.png")) == rgb).all()


# --------------------------------------------------------------------------------------- augmentation
def test_flip_matches_manual_flip_and_moves_proposals(shapes_voc: Path) -> None:
    ds = VOCDetection(str(shapes_voc), "trainval", classes=SHAPES_CLASSES)
    img, t = ds[0]
    assert len(t["boxes"]) > 0
    t["proposals"] = np.concatenate([t["boxes"], [[0, 0, 10, 20]]]).astype(np.float32)
    flip = DetectionTransform([], hflip=1.0)
    f_img, f_t = flip(img, t)
    w = img.shape[1]
    assert (f_img == img[:, ::-1]).all()
    np.testing.assert_allclose(f_t["boxes"][:, [0, 2]], w - t["boxes"][:, [2, 0]])
    np.testing.assert_allclose(f_t["proposals"][-1], [w - 10, 0, w, 20])
    back_img, back_t = flip(f_img, f_t)  # flipping twice is the identity
    assert (back_img == img).all()
    np.testing.assert_allclose(back_t["boxes"], t["boxes"])
    np.testing.assert_allclose(back_t["proposals"], t["proposals"])


def test_full_augmentation_keeps_proposals_with_boxes(shapes_voc: Path) -> None:
    ds = VOCDetection(str(shapes_voc), "trainval", classes=SHAPES_CLASSES)
    aug = build_transform(AugmentConfig(photometric=True, random_crop=True, scale_jitter=[0.7, 1.3]), True, seed=0)
    for i in range(8):
        img, t = ds[i]
        assert len(t["boxes"]) > 0
        t["proposals"] = t["boxes"].copy()
        a_img, a_t = aug(img, t)
        assert len(a_t["proposals"]) == len(t["boxes"])  # never dropped
        assert len(a_t["boxes"]) == len(t["boxes"])  # box-safe crop keeps all
        np.testing.assert_allclose(a_t["proposals"], a_t["boxes"], atol=1e-3)
        h, w = a_img.shape[:2]
        assert (a_t["boxes"][:, 2] <= w + 1e-3).all() and (a_t["boxes"][:, 3] <= h + 1e-3).all()
        assert a_t["labels"].dtype == np.int64 and len(a_t["labels"]) == len(a_t["boxes"])
    assert build_transform(AugmentConfig(), train=False) is None


# ----------------------------------------------------------------------------------------- proposals
def test_proposal_formats_and_errors(tmp_path: Path, shapes_voc: Path) -> None:
    boxes = np.array([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], np.float32)
    scores = np.array([0.1, 0.9, 0.5], np.float32)
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump({"ids": ["a"], "boxes": [boxes], "scores": [scores]}, f)
    np.savez(tmp_path / "p.npz", a=np.hstack([boxes, scores[:, None]]))
    (tmp_path / "p.json").write_text(json.dumps({"a": {"boxes": boxes.tolist(), "scores": scores.tolist()}}))
    for name in ("p.pkl", "p.npz", "p.json"):
        got = load_proposals(str(tmp_path / name), top_n=2)
        np.testing.assert_array_equal(got["a"], boxes[[1, 2]])
    assert len(load_proposals(str(tmp_path / "p.json"), top_n=None)["a"]) == 3
    with pytest.raises(DataError, match=r"p\.txt.*extension"):
        load_proposals(str(tmp_path / "p.txt"), 10)
    with pytest.raises(DataError, match="nope.pkl.*not found"):
        load_proposals(str(tmp_path / "nope.pkl"), 10)
    with pytest.raises(DataError, match="missing from the proposals"):
        VOCDetection(str(shapes_voc), "test", classes=SHAPES_CLASSES, proposals={"a": boxes})


# ----------------------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path: Path, shapes_voc: Path) -> None:
    ids = (shapes_voc / "ImageSets/Main/test.txt").read_text().split()
    root = copy_voc(shapes_voc, tmp_path / "v", ids)
    (root / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")
    ds = VOCDetection(str(root), "mini", classes=SHAPES_CLASSES)
    with pytest.raises(DataError, match=f"{ids[1]}.jpg"):
        ds[1]
    skip = VOCDetection(str(root), "mini", classes=SHAPES_CLASSES, skip_bad_images=True)
    with pytest.warns(UserWarning, match=f"{ids[1]}.jpg"):
        _, t = skip[1]
    assert t["index"] == 2 and t["image_id"] == ids[2]
    with pytest.raises(DataError, match=r"ImageSets.Main.nosplit\.txt"):
        VOCDetection(str(root), "nosplit", classes=SHAPES_CLASSES)
    xml = root / "Annotations" / f"{ids[0]}.xml"
    xml.write_text(xml.read_text().replace("<name>circle</name>", "<name>hexagon</name>")
                   .replace("<name>square</name>", "<name>hexagon</name>").replace("<name>triangle</name>", "<name>hexagon</name>"))
    with pytest.raises(DataError, match=f"{ids[0]}.xml.*hexagon"):
        VOCDetection(str(root), "mini", classes=SHAPES_CLASSES)
    with pytest.warns(UserWarning, match="hexagon"):
        ok = VOCDetection(str(root), "mini", classes=SHAPES_CLASSES, skip_unknown_classes=True)
    assert len(ok.get_annotation(0)["boxes"]) == 0
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match=f"{ids[0]}.xml.*malformed"):
        VOCDetection(str(root), "mini", classes=SHAPES_CLASSES)
    xml.unlink()
    with pytest.raises(DataError, match=f"{ids[0]}.xml.*not found"):
        VOCDetection(str(root), "mini", classes=SHAPES_CLASSES)
    with pytest.raises(DataError, match="missing.json.*not found"):
        COCODetection(str(tmp_path), str(tmp_path / "missing.json"))


def test_size_mismatch_trusts_image_and_clips(tmp_path: Path, shapes_voc: Path) -> None:
    # the 5th test image (seed 1) has boxes inside, across and beyond a 50 x 64 crop
    ids = (shapes_voc / "ImageSets/Main/test.txt").read_text().split()[4:5]
    root = copy_voc(shapes_voc, tmp_path / "v", ids)
    annotated = VOCDetection(str(root), "mini", classes=SHAPES_CLASSES).get_annotation(0)["boxes"]
    img = cv2.imread(str(root / "JPEGImages" / f"{ids[0]}.jpg"))
    cv2.imwrite(str(root / "JPEGImages" / f"{ids[0]}.jpg"), img[:64, :50])
    ds = VOCDetection(str(root), "mini", classes=SHAPES_CLASSES)
    with pytest.warns(UserWarning, match="trusting the image"):
        im, t = ds[0]
    assert im.shape[:2] == (64, 50)
    inside = (annotated[:, 0] < 50) & (annotated[:, 1] < 64)
    assert len(annotated) == 5 and inside.sum() == 3 and (annotated[inside, 2:] > [50, 64]).any()
    np.testing.assert_allclose(t["boxes"], np.minimum(annotated[inside], [50, 64, 50, 64]))
    assert (t["boxes"][:, 2] <= 50).all() and (t["boxes"][:, 3] <= 64).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per file
        ds[0]


# ------------------------------------------------------------------------------------------- loader
def test_dataloader_types_and_seeded_order(shapes_voc: Path) -> None:
    cfg = load_config(None, ["data.format=shapes", f"data.root={shapes_voc}", "data.batch_size=2",
                             "data.num_workers=0", "data.pin_memory=false"])
    dl = build_dataloader(cfg, "train")
    dl.set_epoch(3)
    images, targets = next(iter(dl))
    assert len(images) == len(targets) == 2
    assert images[0].dtype == torch.uint8 and images[0].shape[0] == 3
    t = targets[0]
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4 and t["labels"].dtype == torch.int64
    assert {"image_id", "orig_size", "index"} <= set(t)
    order = [[t["index"] for t in ts] for _, ts in dl]
    dl2 = build_dataloader(cfg, "train")
    dl2.set_epoch(3)
    assert order == [[t["index"] for t in ts] for _, ts in dl2]
    dl2.set_epoch(4)
    assert order != [[t["index"] for t in ts] for _, ts in dl2]
    test = build_dataloader(cfg, "test")
    assert [t["index"] for _, ts in test for t in ts] == list(range(8))



def test_generating_shapes_says_where_once(tmp_path: Path, monkeypatch, capsys) -> None:
    # #24: a shapes config silently wrote its images into ./data/shapes of whatever folder a tool ran from
    from vggdet.data import build_dataset

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.format=shapes", "data.root=data/shapes", "data.shapes_num_train=3",
                             "data.shapes_num_test=2", "data.shapes_size=64"])
    assert len(build_dataset(cfg, "test")) == 2
    err = capsys.readouterr().err
    assert err == (f"generating the shapes dataset (3 train / 2 test images, 64 px) into "
                   f"{tmp_path.resolve() / 'data' / 'shapes'} (data.root)\n")
    build_dataset(cfg, "train")  # already there: nothing to say
    assert capsys.readouterr().err == ""

def test_aspect_grouping_same_orientation() -> None:
    groups = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1]
    sampler = GroupedBatchSampler(SeededSampler(len(groups), shuffle=True, seed=0), groups, 3)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 4
        for b in batches:
            assert len(b) == 3 and len({groups[i] for i in b}) == 1


def test_loader_with_proposals_workers_and_concat(tmp_path: Path, shapes_voc: Path) -> None:
    ds = VOCDetection(str(shapes_voc), "trainval", classes=SHAPES_CLASSES)
    props = {i: ds.get_annotation(k)["boxes"].tolist() for k, i in enumerate(ds.image_ids)}
    (tmp_path / "p.json").write_text(json.dumps(props))
    root = tmp_path / "root"
    root.mkdir()
    (root / "A").symlink_to(shapes_voc)
    cfg = load_config(None, ["data.format=voc", f"data.root={root}", "data.train_sets=[['A', 'trainval'], ['A', 'test']]",
                             f"data.classes={SHAPES_CLASSES}", f"data.proposals_file={tmp_path / 'p.json'}",
                             "data.augment.hflip=1.0", "data.batch_size=2", "data.num_workers=1",
                             "data.pin_memory=false"])
    props.update({i: [] for i in (shapes_voc / "ImageSets/Main/test.txt").read_text().split()})
    (tmp_path / "p.json").write_text(json.dumps(props))
    dl = build_dataloader(cfg, "train")
    assert len(dl.dataset) == 32 and len(dl.dataset.image_ids) == 32
    seen = with_props = 0
    for _, targets in dl:
        for t in targets:
            if t["index"] < 24:  # proposals = the flipped ground truth
                torch.testing.assert_close(t["proposals"], t["boxes"])
                with_props += 1
            else:
                assert t["proposals"].shape == (0, 4) and t["image_id"] == dl.dataset.image_ids[t["index"]]
            seen += 1
    assert seen == 32 and with_props == 24


def test_browse_dataset_tool(tmp_path: Path, shapes_voc: Path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import browse_dataset

    cfg = tmp_path / "c.py"
    cfg.write_text(f"data = dict(format='shapes', root={str(shapes_voc)!r})\n")
    assert browse_dataset.main([str(cfg), "--out", str(tmp_path / "o"), "--num", "2"]) == 0
    assert len(list((tmp_path / "o").iterdir())) == 2 and "circle" in capsys.readouterr().out
    assert browse_dataset.main([str(cfg), "--out", str(tmp_path / "o"), "--set", "data.format=voc"]) == 2


def test_empty_split_stops_with_the_split_file(tmp_path, small_shapes):
    split = os.path.join(small_shapes, "ImageSets", "Main", "empty.txt")
    open(split, "w").close()
    with pytest.raises(DataError, match=r"empty\.txt: the split is empty"):
        VOCDetection(small_shapes, "empty", classes=["circle", "square", "triangle"])
    cfg = tmp_path / "c.py"
    cfg.write_text(f"model = dict(num_classes=3)\ndata = dict(format='voc', root={small_shapes!r}, "
                   "train_sets=[['.', 'empty']], test_sets=[['.', 'test']], classes=['circle', 'square', 'triangle'])\n")
    r = run_tool(["tools/train_det.py", str(cfg), "--work-dir", str(tmp_path / "w")])
    assert r.returncode == 2 and "empty.txt: the split is empty" in one_line(r)
    assert not list((tmp_path / "w").glob("*.pth"))


def test_degenerate_boxes_warning_names_images_and_why(tmp_path, small_shapes):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(small_shapes, root)
    first = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    xmin = text.split("<xmin>")[1].split("<")[0]
    xml.write_text(text.replace(f"<xmax>{text.split('<xmax>')[1].split('<')[0]}</xmax>", f"<xmax>{xmin}</xmax>", 1))
    with pytest.warns(UserWarning, match=rf"dropped 1 degenerate box\(es\): {first} \(zero area as annotated\)"):
        VOCDetection(str(root), "test", classes=["circle", "square", "triangle"])
