"""Error analysis: TIDE errors and oracles on hand-made cases, against the authors' tidecv and against
COCOeval (COCO128), the confusion matrix's sums, the report page, the tool and test_det.py --report.

tidecv's numbers come from tests/fixtures/tide_reference.json (made by tests/fixtures/make_tide_reference.py
in a throwaway venv: tidecv needs opencv-python, which has no place in a user's install); each entry holds a
fingerprint of its inputs, so a changed case fails until the fixture is made again."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT, SHAPES_CONFIG, run_tool, tiny_train_overrides

from vggdet.evaluation import write_voc_results
from vggdet.evaluation.analysis import ERROR_TYPES, SPECIAL_TYPES, analyze

A3 = (51 + 50 * 2 / 3) / 101  # AP101 of [TP, FP, TP] with 2 boxes: precision 1 up to recall .5, then 2/3
G1, G2, G3 = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]
TP1, TP2 = (G1, 1, 0.9), (G2, 1, 0.7)


def _gt(*boxes, difficult=()) -> dict:
    """One image's ground truth from (box, label) pairs."""
    return {"boxes": np.array([b for b, _ in boxes], float).reshape(-1, 4), "labels": np.array([k for _, k in boxes]),
            "difficult": np.array([i in difficult for i in range(len(boxes))])}


def _det(*dets) -> dict:
    """One image's detections from (box, label, score) triples."""
    return {"boxes": np.array([d[0] for d in dets], float).reshape(-1, 4), "labels": np.array([d[1] for d in dets]),
            "scores": np.array([d[2] for d in dets], float)}


# Each case: one image, the error it contains, the expected counts and every TIDE number (AP points).
# Class 1 = "a", 2 = "b". The extra detection scores 0.8, between the two true positives.
CASES = {
    "Bkg": (_gt((G1, 1), (G2, 1)), _det(TP1, ([100, 100, 110, 110], 1, 0.8), TP2),
            {"Bkg": 1}, {"AP50": A3, "Bkg": 1 - A3, "FalsePos": 1 - A3}),
    "Dupe": (_gt((G1, 1), (G2, 1)), _det(TP1, ([0, 0, 10, 9], 1, 0.8), TP2),  # IoU 0.9 with the matched G1
             {"Dupe": 1}, {"AP50": A3, "Dupe": 1 - A3, "FalsePos": 1 - A3}),
    # IoU 1/3 with G3, which nothing else detects: Loc (not Miss); fixed, it is a TP: [TP, TP, TP]
    "Loc": (_gt((G1, 1), (G2, 1), (G3, 1)), _det(TP1, ([45, 0, 55, 10], 1, 0.8), TP2),
            {"Loc": 1}, {"AP50": 56 / 101, "Loc": 1 - 56 / 101, "FalsePos": 11 / 101, "FalseNeg": A3 - 56 / 101}),
    # class a on the class-b box G3: fixed, a TP of class b; without it class b has no positives left
    "Cls": (_gt((G1, 1), (G2, 1), (G3, 2)), _det(TP1, (G3, 1, 0.8), TP2),
            {"Cls": 1}, {"AP50": A3 / 2, "Cls": 1 - A3 / 2, "FalsePos": 0.5 - A3 / 2, "FalseNeg": A3 / 2}),
    # class a with IoU 1/3 with the class-b box G3: Both; G3 stays a Miss
    "Both": (_gt((G1, 1), (G2, 1), (G3, 2)), _det(TP1, ([45, 0, 55, 10], 1, 0.8), TP2),
             {"Both": 1, "Miss": 1}, {"AP50": A3 / 2, "Both": 0.5 - A3 / 2, "Miss": A3 / 2,
                                      "FalsePos": 0.5 - A3 / 2, "FalseNeg": A3 / 2}),
    "Miss": (_gt((G1, 1), (G2, 1), (G3, 1)), _det(TP1, TP2),
             {"Miss": 1}, {"AP50": 67 / 101, "Miss": 34 / 101, "FalseNeg": 34 / 101}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_error_type_by_hand(name):
    gt, det, counts, tide = CASES[name]
    a = analyze([gt], [det], ["a", "b"])
    assert a["tide_counts"] == {t: counts.get(t, 0) for t in ERROR_TYPES}
    expect = {t: 100 * tide.get(t, 0.0) for t in ("AP50",) + ERROR_TYPES + SPECIAL_TYPES}
    assert a["tide"] == pytest.approx(expect, abs=1e-9)
    assert json.loads(json.dumps(a))["tide"] == a["tide"]  # plain JSON


def test_two_errors_claim_one_box_once():
    # A Loc (0.8) and a Cls (0.6) error on the same unmatched box G3: the higher-scoring one claims it, so
    # the Loc oracle makes it a TP and the Cls oracle only removes the Cls detection (tidecv's BestGTMatch).
    gt = _gt((G1, 1), (G3, 1))
    det = _det(TP1, ([45, 0, 55, 10], 1, 0.8), (G3, 2, 0.6))
    a = analyze([gt], [det], ["a", "b"])
    assert (a["tide_counts"]["Loc"], a["tide_counts"]["Cls"], a["tide_counts"]["Miss"]) == (1, 1, 0)
    base = 51 / 101  # [TP, FP] of a with 2 boxes; b has no boxes, so it is not in the mean
    assert a["tide"]["AP50"] == pytest.approx(100 * base)
    assert a["tide"]["Loc"] == pytest.approx(100 * (1 - base))
    assert a["tide"]["Cls"] == 0.0


def test_difficult_and_crowd_boxes_are_ignored():
    # VOC difficult (IoU) and COCO crowd (intersection / detection area): a detection on them is neither
    # TP nor FP nor an error; one of another class is still an error.
    gt = _gt((G1, 1), (G2, 1), difficult=(1,))
    det = _det(TP1, ([20, 0, 30, 9], 1, 0.95), ([20, 0, 30, 10], 2, 0.5))
    crowd = {"boxes": np.array([G1, [100, 0, 200, 100]], float), "labels": np.array([1, 1]),
             "iscrowd": np.array([False, True])}
    in_crowd = _det(TP1, ([150, 50, 160, 60], 1, 0.95))  # IoU 0.01 with the crowd box, but inside it
    a, b = analyze([gt], [det], ["a", "b"]), analyze([crowd], [in_crowd], ["a", "b"])
    for x in (a, b):
        assert x["tide"]["AP50"] == 100.0 and x["settings"]["num_ignored_dets"] == 1
        assert x["settings"]["num_gt"] == 1 and x["tide_counts"]["Miss"] == 0
    assert a["tide_counts"]["Bkg"] == 1 and sum(b["tide_counts"].values()) == 0
    assert a["confusion"]["matrix"] == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]  # the class-b one on nothing


# In a crowd box, IoU 1/3 with the normal box G3: ignored (not counted), but as in tidecv its Loc error
# claims G3 (no Miss) and the Loc oracle adds it as a TP.
IGNORED_CLAIMS = ({"boxes": np.array([G1, G3, [40, 0, 200, 100]], float), "labels": np.array([1, 1, 1]),
                   "iscrowd": np.array([False, False, True])}, _det(TP1, ([45, 0, 55, 10], 1, 0.8)))


def test_ignored_detection_still_claims_its_box_as_in_tidecv():
    gt, det = IGNORED_CLAIMS
    a = analyze([gt], [det], ["a"])
    assert sum(a["tide_counts"].values()) == 0 and a["settings"]["num_ignored_dets"] == 1
    assert a["tide"]["AP50"] == pytest.approx(100 * 51 / 101) and a["tide"]["Loc"] == pytest.approx(100 * 50 / 101)
    assert a["gallery"] == []
    ref, _ = tide_reference("ignored_claims_box", [gt], [det])
    assert a["tide"] == pytest.approx(ref, abs=1e-9)


def test_empty_detections_and_max_dets():
    gt = _gt((G1, 1), (G2, 2))
    a = analyze([gt], [_det()], ["a", "b"])
    assert a["empty"] and a["tide_counts"]["Miss"] == 2 and a["tide"]["AP50"] == 0.0
    assert all(a["tide"][t] == 0.0 for t in ERROR_TYPES + SPECIAL_TYPES)
    many = _det(*[([x, 0, x + 10, 10], 1, 0.9 - x / 1000) for x in range(0, 300, 20)])
    b = analyze([gt], [many], ["a", "b"], max_dets=4)
    assert b["settings"]["num_dets"] == 4 and b["settings"]["num_dropped_dets"] == 11


# ------------------------------------------------------------------------------------------- confusion
def random_problem(rng, num_images=60, k=4):
    gts, dets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1)
        labels = rng.integers(1, k + 1, n)
        gts.append({"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.15})
        m = int(rng.integers(0, 15))
        src = rng.integers(0, max(n, 1), m)
        b = boxes[src] + rng.normal(0, 4, (m, 4)) if n else rng.uniform(0, 200, (m, 4))
        b = np.where(rng.random((m, 1)) < 0.2, rng.uniform(0, 200, (m, 4)), b)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        lab = np.where((rng.random(m) < 0.2) | (n == 0), rng.integers(1, k + 1, m), labels[src] if n else 1)
        dets.append({"boxes": b, "labels": lab, "scores": rng.random(m)})
    return gts, dets


def test_confusion_matrix_rows_and_columns_add_up():
    gts, dets = random_problem(np.random.default_rng(0))
    a = analyze(gts, dets, ["a", "b", "c", "d"], score_thresh=0.3)
    mat = np.array(a["confusion"]["matrix"])
    labels = np.concatenate([g["labels"][~g["difficult"]] for g in gts])
    np.testing.assert_array_equal(mat[:4].sum(1), np.bincount(labels, minlength=5)[1:])
    assert mat[4, 4] == 0
    above = np.bincount(np.concatenate([d["labels"][d["scores"] >= 0.3] for d in dets]), minlength=5)[1:]
    assert (mat[:, :4].sum(0) <= above).all() and a["settings"]["num_ignored_dets"] > 0  # those on difficult
    # without difficult boxes nothing is ignored and every column is exactly the detections above 0.3
    for g in gts:
        g["difficult"][:] = False
    mat = np.array(analyze(gts, dets, ["a", "b", "c", "d"], score_thresh=0.3)["confusion"]["matrix"])
    np.testing.assert_array_equal(mat[:, :4].sum(0), above)
    assert mat[:4, :4].trace() > 0 and mat[:4, :4].sum() > mat[:4, :4].trace()  # both kinds are exercised


def test_confusion_matrix_cells_by_hand():
    gt = _gt((G1, 1), (G2, 2), (G3, 2))
    det = _det((G1, 1, 0.9), ([0, 0, 10, 9], 1, 0.8), (G2, 1, 0.7), ([90, 90, 99, 99], 2, 0.6), (G3, 2, 0.2))
    a = analyze([gt], [det], ["a", "b"], score_thresh=0.5)
    # a on a; the duplicate and the box on nothing: background; a on the b box G2; G3 only found at 0.2
    assert a["confusion"]["matrix"] == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert a["confused_pairs"] == [{"gt": "b", "predicted": "a", "count": 1}] == a["cls_error_pairs"]


# -------------------------------------------------------------------------------- tidecv and COCOeval
TIDE_REFERENCE = FIXTURES / "tide_reference.json"
MAKE_REFERENCE = FIXTURES / "make_tide_reference.py"


def fingerprint(inputs) -> str:
    """A short sha256 of a case's inputs (arrays, dicts, lists; floats rounded to 1e-4)."""
    def plain(x):
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple, np.ndarray)):
            return [plain(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        return round(float(x), 4) if isinstance(x, (float, np.floating)) else x
    return hashlib.sha256(json.dumps(plain(inputs)).encode()).hexdigest()[:16]


def tide_reference(name: str, *inputs) -> tuple:
    """tidecv's (AP50 and dAPs, error counts) for case `name`, from the fixture made for these inputs."""
    entry = json.loads(TIDE_REFERENCE.read_text())["cases"][name]
    assert entry["inputs"] == fingerprint(inputs), (
        f"case {name} changed since {TIDE_REFERENCE.name} was made: run {MAKE_REFERENCE.relative_to(ROOT)} "
        "again (tests/fixtures/README.md)")
    return entry["tide"], entry["counts"]


def test_tide_reference_matches_live_tidecv():
    # where tidecv is installed, the fixture's hand cases are made again, live, with the fixture's own script
    pytest.importorskip("tidecv", reason="tidecv is not installed (the fixture holds its numbers)")
    spec = importlib.util.spec_from_file_location("make_tide_reference", MAKE_REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = json.loads(TIDE_REFERENCE.read_text())["cases"]
    for name, entry in module.hand_cases().items():
        assert entry["inputs"] == saved[name]["inputs"] and entry["counts"] == saved[name]["counts"], name
        assert entry["tide"] == pytest.approx(saved[name]["tide"], abs=1e-9), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_cases_agree_with_tidecv(name):
    gt, det, _, _ = CASES[name]
    ref, ref_counts = tide_reference(name, [gt], [det])
    a = analyze([gt], [det], ["a", "b"])
    assert a["tide"] == pytest.approx(ref, abs=1e-9) and a["tide_counts"] == ref_counts


def perturbed_detections(ds, seed: int) -> list:
    """COCO results made from `ds`'s non-crowd boxes: dropped, shifted, moved by half a width, relabelled,
    duplicated, plus boxes on nothing; random scores. Labels only from classes with boxes (tidecv scores a
    class with detections but no boxes 0, COCOeval and vggdet leave it out of the mean)."""
    rng = np.random.default_rng(seed)
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    present = np.unique(np.concatenate([a["labels"] for a in anns]))
    res = []
    for image_id, a in zip(ds.image_ids, anns):
        h, w = a["orig_size"]
        out = []
        for b, k, crowd in zip(a["boxes"].astype(float), a["labels"], a["iscrowd"]):
            if crowd or rng.random() < 0.15:
                continue
            size = np.tile(b[2:] - b[:2], 2)
            shift = rng.normal(0, 0.08, 4) * size + (rng.random() < 0.15) * 0.45 * size * [1, 0, 1, 0]
            out.append((b + shift, rng.choice(present) if rng.random() < 0.12 else k))
            if rng.random() < 0.1:
                out.append((b + rng.normal(0, 0.05, 4) * size, k))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            out.append((np.array([x, y, x + rng.uniform(10, 150), y + rng.uniform(10, 150)]), rng.choice(present)))
        for b, k in out:
            b = np.clip(b, 0, [w, h, w, h])
            b[2:] = np.maximum(b[2:], b[:2] + 1)
            res.append({"image_id": int(image_id), "category_id": int(ds.label_to_cat_id[k]),
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(rng.random())})
    return res


def coco128_files(coco128_root, folder) -> tuple:
    """(ground-truth JSON, results JSON) in `folder`: COCO128 with box areas, and perturbed_detections (seed
    0) on it; the fixture's script makes tidecv's numbers from the same two files."""
    from vggdet.data.coco import COCODetection

    d = json.loads((coco128_root / "annotations" / "instances_train2017.json").read_text())
    for x in d["annotations"]:
        x["area"] = x["bbox"][2] * x["bbox"][3]  # the box's area: vggdet's size rule (COCO's is the mask's)
    gt_path, res_path = folder / "gt.json", folder / "dets.json"
    gt_path.write_text(json.dumps(d))
    res_path.write_text(json.dumps(perturbed_detections(COCODetection("", str(gt_path), train=False), seed=0)))
    return gt_path, res_path


@pytest.fixture(scope="module")
def coco128(tmp_path_factory, coco128_root) -> tuple:
    """(dataset, ground-truth JSON, results JSON, analysis) on COCO128 (its 10 crowd boxes included) with
    perturbed detections, read by the tool's own COCO reader."""
    from vggdet.evaluation import load_coco_with_results

    gt_path, res_path = coco128_files(coco128_root, tmp_path_factory.mktemp("coco128"))
    ds, dets = load_coco_with_results(str(gt_path), str(res_path))
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    return ds, gt_path, res_path, analyze(anns, dets, ds.classes, ds.image_ids)


def test_coco128_agrees_with_tidecv(coco128):
    # Every number within 0.1 AP points; what is left comes from the recall thresholds (linspace vs i / 100).
    _, gt_path, res_path, a = coco128
    ref, ref_counts = tide_reference("coco128", json.loads(res_path.read_text()))
    diff = {k: abs(a["tide"][k] - ref[k]) for k in ref}
    assert max(diff.values()) < 0.1, diff
    assert min(a["tide"][t] for t in ERROR_TYPES) > 0.3  # every error type is really exercised
    assert a["tide"]["AP50"] < 60
    # tidecv also counts the detections it ignores in crowd boxes; vggdet counts false positives only
    fp_types = ERROR_TYPES[:5]
    ignored = a["settings"]["num_ignored_dets"]
    assert sum(ref_counts[t] for t in fp_types) == sum(a["tide_counts"][t] for t in fp_types) + ignored
    assert ref_counts["Miss"] == a["tide_counts"]["Miss"] and ignored > 0


def test_coco128_ap50_and_sizes_equal_cocoeval(coco128):
    from pycocotools.cocoeval import COCOeval

    ds, _, res_path, a = coco128
    assert a["settings"]["num_ignored_gt"] == 10 and a["settings"]["num_ignored_dets"] > 0  # the crowds
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(str(res_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, :, :, 2]  # IoU 0.5, [recall, class, area], maxDets 100
    assert a["tide"]["AP50"] == pytest.approx(100 * prec[:, :, 0][prec[:, :, 0] > -1].mean(), abs=1e-9)
    for n, size in enumerate(("small", "medium", "large"), start=1):
        p = prec[:, :, n]
        assert a["by_size"][size]["AP50"] == pytest.approx(100 * p[p > -1].mean(), abs=1e-9), size


# ----------------------------------------------------------------------------------------- the tool
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    """A generated VOC set (two boxes marked difficult), perturbed detections as devkit files."""
    from vggdet.data.shapes import make_shapes
    from vggdet.data.voc import VOCDetection

    d = tmp_path_factory.mktemp("analysis")
    root = make_shapes(str(d / "voc"), "voc", num_train=1, num_test=10, size=96, seed=1)
    for name in ("000001", "000002"):
        xml = d / "voc" / "Annotations" / f"{name}.xml"
        xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    ds = VOCDetection(root, "test", classes="auto")
    rng = np.random.default_rng(2)
    dets = []
    for i in range(len(ds)):
        g = ds.get_annotation(i)
        b = g["boxes"] + rng.normal(0, 4, g["boxes"].shape)
        b = np.concatenate([b, [[5, 5, 30, 30]]])
        labels = np.concatenate([np.where(rng.random(len(g["labels"])) < 0.3, 1, g["labels"]), [2]])
        dets.append({"boxes": np.maximum(b, b[:, [0, 1, 0, 1]] + [0, 0, 1, 1]), "labels": labels,
                     "scores": rng.random(len(b))})
    write_voc_results(str(d / "res"), "test", ds.classes, ds.image_ids, dets)
    return d, root, ds


def test_tool_writes_a_self_contained_report(voc_run):
    from vggdet.evaluation import read_voc_results

    d, root, ds = voc_run
    r = run_tool(["tools/analyze_det.py", "--voc-root", root, "--results", str(d / "res"), "--out", str(d / "rep")])
    assert r.returncode == 0, r.stderr
    assert "FalsePos" in r.stdout and "most confused" in r.stdout
    a = json.loads((d / "rep" / "analysis.json").read_text())
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    same = analyze(anns, read_voc_results(str(d / "res"), "test", ds.classes, ds.image_ids), ds.classes,
                   ds.image_ids)
    assert a == json.loads(json.dumps(same))
    assert a["settings"]["num_ignored_gt"] == 2 and a["tide_counts"]["Cls"] > 0
    mat = np.array(a["confusion"]["matrix"])
    assert mat[:-1].sum(1).tolist() == [a["per_class"][c]["num_gt"] for c in ds.classes]
    page = (d / "rep" / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    links = [v for _, attrs in tags.tags for k, v in attrs.items() if k in ("src", "href")]
    assert not [v for v in links if v.startswith(("http:", "https:", "//"))]
    assert not [t for t, _ in tags.tags if t in ("script", "link", "iframe")]
    images = [attrs["src"] for t, attrs in tags.tags if t == "img"]
    assert images and all(s.startswith("data:image/png;base64,") for s in images)
    sections = {attrs.get("id") for t, attrs in tags.tags if t == "section"}
    assert {"summary", "tide", "confusion", "pr-curves", "by-size", "gallery", "per-class"} <= sections
    assert sum(t == "figure" for t, _ in tags.tags) == len(a["gallery"]) > 0
    assert base64.b64decode(images[0].split(",", 1)[1]) == (d / "rep" / "tide.png").read_bytes()
    for name in ("tide", "confusion", "pr_curves", "by_size", "gallery_00"):
        assert (d / "rep" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "score &ge; 0.5" in page and "no detections" not in page


def test_tool_empty_results_and_bad_input(voc_run, tmp_path):
    d, root, ds = voc_run
    write_voc_results(str(tmp_path / "empty"), "test", ds.classes, ds.image_ids, {})
    cmd = ["tools/analyze_det.py", "--voc-root", root, "--results", str(tmp_path / "empty"), "--out",
           str(tmp_path / "rep")]
    r = run_tool(cmd)
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "rep" / "analysis.json").read_text())
    assert a["empty"] and a["tide_counts"]["Miss"] == a["settings"]["num_gt"] > 0
    assert "no detections" in (tmp_path / "rep" / "report.html").read_text()
    # a malformed line: eval_det.py's one-line error with file:line, exit status 2
    with open(tmp_path / "empty" / f"comp4_det_test_{ds.classes[0]}.txt", "w") as f:
        f.write(f"{ds.image_ids[0]} 0.9 1 1 10 10\n{ds.image_ids[0]} 0.5 1 2\n")
    r = run_tool(cmd)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"comp4_det_test_{ds.classes[0]}.txt:2:" in r.stderr
    # COCO: an unknown image id names the file and the entry
    gt = {"images": [{"id": 1, "width": 50, "height": 50, "file_name": "x.jpg"}], "categories": [{"id": 3, "name": "c"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 7, "category_id": 3, "bbox": [0, 0, 9, 9],
                                                     "score": 0.5}]))
    r = run_tool(["tools/analyze_det.py", "--coco-ann", str(tmp_path / "gt.json"), "--results",
                  str(tmp_path / "dets.json"), "--out", str(tmp_path / "coco")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "dets.json: entry 0: unknown image_id 7" in r.stderr


def test_test_det_report(tmp_path):
    from vggdet import build_detector, load_config
    from vggdet.data import SHAPES_CLASSES
    from vggdet.training.checkpoint import save_checkpoint

    cfg = load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "model.rpn.post_nms_top_n_test=50",
                                                          "model.roi_head.detections_per_img=20"))
    torch.manual_seed(0)
    ckpt = tmp_path / "random.pth"  # an untrained model: what matters is the report, not the numbers
    save_checkpoint(str(ckpt), {"model": build_detector(cfg).state_dict(), "config": cfg.to_dict(),
                                "classes": SHAPES_CLASSES})
    r = subprocess.run([sys.executable, "tools/test_det.py", str(ckpt), "--out", str(tmp_path / "t"), "--report"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "t" / "report" / "analysis.json").read_text())
    assert a["settings"]["num_images"] == 12 and list(a["per_class"]) == SHAPES_CLASSES
    assert a["settings"]["num_dets"] == sum(1 for f in (tmp_path / "t").glob("comp4_det_test_*.txt")
                                            for line in f.read_text().splitlines() if line)
    assert (tmp_path / "t" / "report" / "report.html").is_file() and "FalseNeg" in r.stdout


# ------------------------------------------------------------------------------------- #24: the report's words
def test_report_counts_every_box_in_the_files(voc_run, tmp_path):
    # "N ground-truth boxes (2 ignored ...)" where N left the 2 difficult boxes out of the XML files' count
    from vggdet.evaluation.report import analyze_results_dir

    d, root, ds = voc_run
    a = analyze_results_dir(ds, str(d / "res"), str(tmp_path / "rep"), progress=False)
    in_files = sum(open(f"{root}/Annotations/{i}.xml").read().count("<object>") for i in ds.image_ids)
    assert a["settings"]["num_gt"] == in_files - 2
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"{in_files} ground-truth boxes, of which 2 difficult (ignored, as in the devkit);" in page


def test_report_headline_names_both_metrics(voc_run, tmp_path):
    # test_det printed "mAP (voc07) 93.89" while the report's headline said "AP50 99.33", unlabelled
    from vggdet.evaluation import evaluate, read_voc_results
    from vggdet.evaluation.report import analyze_dataset

    d, root, ds = voc_run
    dets = read_voc_results(str(d / "res"), "test", ds.classes, ds.image_ids)
    metrics = evaluate(ds, dets, metric="voc07")
    a = analyze_dataset(ds, dets, str(tmp_path / "rep"), progress=False, eval_metrics=metrics)
    voc07, ap50 = round(100 * metrics["mAP"], 2), round(a["tide"]["AP50"], 2)
    assert voc07 != ap50 and a["headline"]["metrics"] == {"mAP (voc07)": voc07,
                                                          "AP50 (TIDE, COCO-style 101-point)": ap50}
    assert "11-point" in a["headline"]["note"] and "101 points" in a["headline"]["note"]
    assert json.loads((tmp_path / "rep" / "analysis.json").read_text())["headline"] == a["headline"]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"<b>mAP (voc07)</b>{voc07:.2f}" in page and f"<b>AP50 (TIDE, COCO-style 101-point)</b>{ap50:.2f}" in page
    assert "They differ because the VOC07 mAP is the devkit&#x27;s 11-point AP" in page


def test_report_without_images_says_so_once_and_names_files(tmp_path):
    # COCO results without --images: grey tiles, nothing on the console, tiles named by numeric id only
    from vggdet.data.coco import COCODetection
    from vggdet.data.shapes import make_shapes

    root = make_shapes(str(tmp_path / "coco"), "coco", num_train=1, num_test=6, size=96, seed=1)
    ann = f"{root}/annotations/test.json"
    ds = COCODetection(f"{root}/images", ann, train=False)
    rng = np.random.default_rng(0)
    res = [{"image_id": int(i), "category_id": int(ds.label_to_cat_id[1]), "score": float(rng.random()),
            "bbox": [float(x) for x in rng.uniform(0, 40, 2)] + [30.0, 30.0]} for i in ds.image_ids]
    (tmp_path / "dets.json").write_text(json.dumps(res))
    r = run_tool(["tools/analyze_det.py", "--coco-ann", ann, "--results", str(tmp_path / "dets.json"),
                  "--out", str(tmp_path / "rep")])  # the default image folder, <root>/test, does not exist
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "gallery images not found" in warned[0] and "--images" in warned[0], r.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "were not found" in page and "--images IMAGE_DIR" in page
    first = json.loads((tmp_path / "rep" / "analysis.json").read_text())["gallery"][0]
    name = ds.coco.imgs[first["image_id"]]["file_name"]
    assert f"</b>{name} (id {first['image_id']})</figcaption>" in page
    # with the images: no warning, no note
    r = run_tool(["tools/analyze_det.py", "--coco-ann", ann, "--results", str(tmp_path / "dets.json"),
                  "--out", str(tmp_path / "rep2"), "--images", f"{root}/images"])
    assert r.returncode == 0 and "warning:" not in r.stderr, r.stderr
    assert "were not found" not in (tmp_path / "rep2" / "report.html").read_text()


def test_pr_legend_sits_beside_the_curves():
    # the legend (7 pt, lower left) covered the curves; now it is outside the axes, in a readable size
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vggdet.evaluation.report import _plot_pr

    gts, dets = random_problem(np.random.default_rng(1))
    fig = _plot_pr(plt, analyze(gts, dets, ["a", "b", "c", "d"]))
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    plt.close(fig)
