"""Evaluation: hand-computed VOC cases, a reference port of voc_eval.py, COCO vs pycocotools, files, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import ROOT, run_tool

from vggdet.data import VOCDetection
from vggdet.evaluation import (
    EvalError,
    evaluate,
    evaluate_coco,
    evaluate_voc,
    format_table,
    read_coco_results,
    read_voc_results,
    voc_ap,
    write_coco_results,
    write_voc_results,
)
from vggdet.evaluation.voc import _devkit_iou, to_devkit


# ------------------------------------------------------------------ reference: py-faster-rcnn's voc_eval
def ref_voc_eval(results_path, recs, classname, ovthresh=0.5, use_07_metric=False):
    """A straight port of py-faster-rcnn's lib/datasets/voc_eval.py (recs: {image_id: [objects]} with
    1-based bbox), reading the devkit results file; the one change: a stable sort (our documented rule)."""
    class_recs, npos = {}, 0
    for imagename, objs in recs.items():
        R = [obj for obj in objs if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R]).astype(float).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    with open(results_path) as f:
        lines = f.readlines()
    splitlines = [x.strip().split(" ") for x in lines]
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines]).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1., 0.)
            ih = np.maximum(iymax - iymin + 1., 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                   (BBGT[:, 2] - BBGT[:, 0] + 1.) * (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return ref_voc_ap(rec, prec, use_07_metric)


def ref_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.
        return ap
    mrec = np.concatenate(([0.], rec, [1.]))
    mpre = np.concatenate(([0.], prec, [0.]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def random_problem(rng, num_images=300, num_classes=4, dets_per_image=30):
    """GT as a VOC reader gives it (integer 1-based VOC boxes -> 0-based) and jittered/random detections."""
    gts, dets = [], []
    for i in range(num_images):
        n = rng.integers(0, 8)
        x1, y1 = rng.integers(1, 300, n), rng.integers(1, 300, n)
        vboxes = np.stack([x1, y1, x1 + rng.integers(0, 80, n), y1 + rng.integers(0, 80, n)], 1)
        gts.append({"boxes": (vboxes - [1, 1, 0, 0]).astype(np.float32).reshape(-1, 4),
                    "labels": rng.integers(1, num_classes + 1, n), "difficult": rng.random(n) < 0.2,
                    "image_id": f"img{i:04d}"})
        m = rng.integers(0, dets_per_image)
        src = rng.integers(0, max(n, 1), m)
        near = gts[-1]["boxes"][src] if n else np.zeros((m, 4))
        rand = rng.uniform(0, 300, (m, 2)).repeat(2, 1) + [0, 0, 1, 1] * rng.uniform(0, 80, (m, 4))
        b = np.where((rng.random(m) < 0.7)[:, None] & (n > 0), near + rng.normal(0, 5, (m, 4)), rand)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        labels = gts[-1]["labels"][src] if n else rng.integers(1, num_classes + 1, m)
        labels = np.where(rng.random(m) < 0.1, rng.integers(1, num_classes + 1, m), labels)
        scores = np.round(rng.random(m), 2)  # rounding makes many ties
        dets.append({"boxes": b.astype(np.float32), "labels": labels, "scores": scores})
    return gts, dets


def devkit_recs(gts, classes):
    return {g["image_id"]: [{"name": classes[k - 1], "bbox": (b + [1, 1, 0, 0]).round().astype(int).tolist(),
                             "difficult": int(d)} for b, k, d in zip(g["boxes"], g["labels"], g["difficult"])]
            for g in gts}


@pytest.mark.parametrize("metric,thresh", [("voc07", 0.5), ("voc10", 0.5), ("voc10", 0.7)])
def test_matches_reference_voc_eval(tmp_path, metric, thresh):
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    gts, dets = random_problem(rng)
    ids = [g["image_id"] for g in gts]
    write_voc_results(str(tmp_path), "test", classes, ids, dets)
    ours = evaluate_voc(gts, dets, classes, metric=metric, iou_thresh=thresh)
    from_files = evaluate_voc(gts, read_voc_results(str(tmp_path), "test", classes, ids), classes, metric,
                              thresh)
    recs = devkit_recs(gts, classes)
    for name in classes:
        ref = ref_voc_eval(tmp_path / f"comp4_det_test_{name}.txt", recs, name, thresh, metric == "voc07")
        assert abs(ours["per_class"][name] - ref) <= 1e-12
        assert from_files["per_class"][name] == ours["per_class"][name]  # bit-identical through the files
    assert 0.05 < ours["mAP"] < 0.95


# ------------------------------------------------------------------------------ hand-computed cases
def test_voc_ap_11_point_vs_area():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-15)
    assert voc_ap(np.array([]), np.array([]), True) == 0.0 == voc_ap(np.array([]), np.array([]))


def jittered_ground_truth(ds, seed: int, sigma: float, keep=None) -> list:
    """Detections for a real dataset: its ground truth moved by N(0, sigma) px, a random `keep` fraction
    of it (all when None), random scores."""
    rng = np.random.default_rng(seed)
    dets = []
    for i in range(len(ds)):
        a = ds.get_annotation(i)
        b = a["boxes"].astype(np.float64) + rng.normal(0, sigma, a["boxes"].shape)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        k = rng.random(len(b)) < keep if keep is not None else np.ones(len(b), bool)
        dets.append({"boxes": b[k], "labels": a["labels"][k], "scores": rng.random(int(k.sum()))})
    return dets


def _det(boxes, labels, scores):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels), "scores": np.array(scores)}


def test_difficult_duplicates_no_gt_class():
    # class 1: a normal box and a difficult box; class 2: no ground truth; class 3: gt but no detections
    gt = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], np.float32),
           "labels": np.array([1, 1, 3]), "difficult": np.array([False, True, False])}]
    det = _det([[200, 200, 210, 210],  # 0.95 FP (nothing there)
                [0, 0, 10, 10],        # 0.90 TP
                [0, 0, 10, 11],        # 0.80 FP: duplicate of a matched box
                [50, 50, 60, 60],      # 0.70 ignored: the difficult box
                [300, 0, 310, 10],     # 0.60 FP
                [0, 0, 10, 10]],       # class 2 (no gt)
               [1, 1, 1, 1, 1, 2], [0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    with pytest.warns(UserWarning, match="no \\(non-difficult\\) ground truth for class\\(es\\) b"):
        m = evaluate_voc(gt, [det], ["a", "b", "c"], metric="voc10")
    # tp = [0,1,1,1,1], fp = [1,1,2,2,3]: precision 1/2 at recall 1
    assert m["per_class"] == {"a": 0.5, "b": None, "c": 0.0}
    assert m["mAP"] == 0.25
    assert json.loads(json.dumps(m))["per_class"]["b"] is None  # valid JSON: null
    assert "n/a" in format_table(m)


def test_match_goes_to_max_iou_box_even_if_taken():
    # The devkit rule: the second detection's best box is the matched one -> FP, although the other
    # box overlaps it by > 0.5 as well.
    gt = [{"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 14]], np.float32), "labels": np.array([1, 1]),
           "difficult": np.zeros(2, bool)}]
    det = _det([[0, 0, 10, 10], [0, 0, 10, 11]], [1, 1], [0.9, 0.8])
    m = evaluate_voc(gt, [det], ["a"], metric="voc10")
    assert m["per_class"]["a"] == 0.5  # recall stops at 1/2


def test_score_ties_keep_the_given_order():
    gt = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([1]), "difficult": [False]}]
    tp_first = _det([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], [0.5, 0.5])
    fp_first = _det([[40, 40, 50, 50], [0, 0, 10, 10]], [1, 1], [0.5, 0.5])
    assert evaluate_voc(gt, [tp_first], ["a"], "voc10")["mAP"] == 1.0
    assert evaluate_voc(gt, [fp_first], ["a"], "voc10")["mAP"] == 0.5


def test_pixel_inclusive_iou():
    # VOC boxes (1-based inclusive) 1..10 and 10..19 share one pixel column; 1..10 and 11..20 touch.
    gt_voc = np.array([[1, 1, 10, 10]], float)
    share, touch = np.array([[10, 1, 19, 10]], float), np.array([[11, 1, 20, 10]], float)
    assert _devkit_iou(share, gt_voc)[0] == 10 / 190
    assert _devkit_iou(touch, gt_voc)[0] == 0.0
    # in package coordinates the devkit IoU equals the continuous IoU of the 0-based boxes
    import torch
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (20, 2)).repeat(2, 1) + [0, 0, 1, 1] * rng.uniform(0, 30, (20, 4))
    b = rng.uniform(0, 50, (20, 2)).repeat(2, 1) + [0, 0, 1, 1] * rng.uniform(0, 30, (20, 4))
    ref = box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    ours = _devkit_iou(to_devkit(a)[:, None], to_devkit(b)[None])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_threshold_is_strictly_greater():
    # IoU exactly 0.5: [0,0,10,10] vs [0,0,10,20] (continuous) -> 100 / 200
    gt = [{"boxes": np.array([[0, 0, 10, 20]], np.float32), "labels": np.array([1]), "difficult": [False]}]
    det = _det([[0, 0, 10, 10]], [1], [0.9])
    assert evaluate_voc(gt, [det], ["a"], iou_thresh=0.5)["mAP"] == 0.0
    assert evaluate_voc(gt, [det], ["a"], iou_thresh=0.49)["mAP"] == pytest.approx(1.0)  # 11 x (1/11)


def test_empty_results_give_zeros_and_a_warning():
    gt = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([1]), "difficult": [False]}]
    with pytest.warns(UserWarning, match="no detections"):
        m = evaluate_voc(gt, [_det([], [], [])], ["a"])
    assert m == {"metric": "voc07", "mAP": 0.0, "per_class": {"a": 0.0}}


# ------------------------------------------------------------------------------------ files and errors
def test_voc_results_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    gts, dets = random_problem(rng, num_images=40)
    ids, classes = [g["image_id"] for g in gts], ["a", "b", "c", "d"]
    dets[5] = {k: v[:0] for k, v in dets[5].items()}  # an image without detections: no line in any file
    write_voc_results(str(tmp_path), "val", classes, ids, dets)
    back = read_voc_results(str(tmp_path), "val", classes, ids)
    with_dets = [i for i, d in zip(ids, dets) if len(d["scores"])]
    assert 0 < len(with_dets) < len(ids)
    assert sorted(back) == sorted(with_dets)
    for i, d in zip(ids, dets):
        if len(d["scores"]) == 0:
            assert i not in back
            continue
        order = np.argsort(d["labels"], kind="stable")  # the reader groups by class file
        np.testing.assert_array_equal(back[i]["boxes"], d["boxes"].astype(np.float64)[order])
        np.testing.assert_array_equal(back[i]["labels"], d["labels"][order])
        np.testing.assert_array_equal(back[i]["scores"], d["scores"][order])


def test_torch_detections_accepted():
    torch = pytest.importorskip("torch")
    gt = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([1]), "difficult": [False]}]
    det = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.3])}
    assert evaluate_voc(gt, [det], ["a"], "voc10")["mAP"] == 1.0


@pytest.mark.parametrize("line,match", [
    ("img0 0.5 1 1 10\n", "got .img0 0.5 1 1 10."),
    ("img0 high 1 1 10 10\n", "not a number"),
    ("nope 0.5 1 1 10 10\n", "unknown image id 'nope'"),
    ("img0 0.5 nan 1 10 10\n", "NaN"),
    ("img0 0.5 20 1 10 10\n", "negative-size"),
])
def test_bad_results_lines(tmp_path, line, match):
    (tmp_path / "comp4_det_test_a.txt").write_text("img0 0.9 1 1 10 10\n" + line)
    with pytest.raises(EvalError, match=match) as e:
        read_voc_results(str(tmp_path), "test", ["a"], ["img0"])
    assert "comp4_det_test_a.txt:2:" in str(e.value) and "\n" not in str(e.value)


def test_unknown_class_file_and_bad_detections(tmp_path):
    (tmp_path / "comp4_det_test_zebra.txt").write_text("")
    with pytest.raises(EvalError, match="unknown class 'zebra'"):
        read_voc_results(str(tmp_path), "test", ["a"])
    gt = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "image_id": "x"}]
    for det, match in [(_det([[0, 0, np.nan, 1]], [1], [0.5]), "NaN"), (_det([[5, 0, 1, 1]], [1], [0.5]),
                                                                       "negative-size"),
                       (_det([[0, 0, 1, 1]], [7], [0.5]), "label outside 1..1")]:
        with pytest.raises(EvalError, match=f"image 0 \\('x'\\), detection 0: {match}"):
            evaluate_voc(gt, [det], ["a"])


def test_bad_coco_results(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                                {"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(EvalError, match="dets.json: entry 1: unknown image_id 9"):
        read_coco_results(str(path), {1}, {1})
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}]))
    with pytest.raises(EvalError, match="entry 0: .*negative-size"):
        read_coco_results(str(path), {1}, {1})


# ------------------------------------------------------------------------------------------------ COCO
def test_coco_matches_pycocotools(tmp_path, coco128_root):
    from pycocotools.cocoeval import COCOeval

    from vggdet.data.coco import COCODetection

    ds = COCODetection(str(coco128_root / "train2017"),
                       str(coco128_root / "annotations" / "instances_train2017.json"))
    dets = jittered_ground_truth(ds, seed=3, sigma=3, keep=0.9)
    # pycocotools called directly on the straightforward conversion
    cat = ds.label_to_cat_id
    res = [{"image_id": int(ds.image_ids[i]), "category_id": int(cat[k]), "score": float(s),
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
           for i, d in enumerate(dets) for (x1, y1, x2, y2), k, s in zip(d["boxes"], d["labels"], d["scores"])]
    ev = COCOeval(ds.coco, ds.coco.loadRes(res), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    m = evaluate(ds, dets, "coco", out_dir=tmp_path)
    assert list(m["stats"].values()) == ev.stats.tolist()
    assert m["mAP"] == ev.stats[0] and len(m["per_class"]) == len(ds.classes)
    assert (tmp_path / "coco_results.json").is_file()
    again = evaluate_coco(ds.coco, str(tmp_path / "coco_results.json"))
    assert again["stats"] == m["stats"]


# ---------------------------------------------------------------------------------------- CLI on BCCD
def test_eval_det_cli_on_bccd(tmp_path, bccd_root):
    from vggdet.data.voc import VOCDetection

    ds = VOCDetection(str(bccd_root), "test", classes="auto")
    dets = jittered_ground_truth(ds, seed=4, sigma=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect = evaluate(ds, dets, "voc10", out_dir=tmp_path / "res")
    out, plots = tmp_path / "m.json", tmp_path / "plots"
    cmd = [sys.executable, str(ROOT / "tools" / "eval_det.py"), "--voc-root", str(bccd_root), "--split", "test",
           "--results", str(tmp_path / "res"), "--metric", "voc10", "--out", str(out), "--plot", str(plots)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "WBC" in r.stdout and "mAP (voc10)" in r.stdout
    got = json.loads(out.read_text())
    assert got == json.loads(json.dumps(expect)) and got["metric"] == "voc10"
    assert sorted(p.name for p in plots.iterdir()) == ["pr_Platelets.png", "pr_RBC.png", "pr_WBC.png"]
    # a malformed line -> one line on stderr with file:line, exit status 2
    with open(tmp_path / "res" / "comp4_det_test_RBC.txt", "a") as f:
        f.write("BloodImage_00007 0.5 1 2\n")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "comp4_det_test_RBC.txt:" in r.stderr


def test_write_coco_results_maps_categories(tmp_path):
    det = _det([[1, 2, 4, 8]], [2], [0.5])
    res = write_coco_results(str(tmp_path / "r.json"), [det], ["42"], [None, 7, 9])
    assert res == [{"image_id": 42, "category_id": 9, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]
    assert json.loads((tmp_path / "r.json").read_text()) == res


def test_evaluation_without_any_ground_truth_is_an_error():
    gt = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)} for _ in range(3)]
    dets = [{"boxes": np.array([[0, 0, 5, 5.0]]), "labels": np.array([1]), "scores": np.array([0.9])}] * 3
    with pytest.raises(EvalError, match="no class has .* ground truth in the 3 test image"):
        evaluate_voc(gt, dets, ["a", "b"])


def test_eval_det_warns_when_most_images_have_no_detections(tmp_path, small_shapes):
    ds = VOCDetection(small_shapes, "test", classes=["circle", "square", "triangle"])
    assert len(ds) == 4
    from vggdet.evaluation import write_voc_results

    ann = ds.get_annotation(0)
    dets = [{"boxes": ann["boxes"], "labels": ann["labels"], "scores": np.ones(len(ann["labels"]))}]
    dets += [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}] * 3
    write_voc_results(str(tmp_path / "res"), "test", ds.classes, ds.image_ids, dets)
    r = run_tool(["tools/eval_det.py", "--voc-root", small_shapes, "--split", "test", "--results", str(tmp_path / "res"),
                  "--classes", "circle,square,triangle"])
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "3 of 4 images have no detections at all" in r.stderr


def test_eval_det_out_is_checked_before_the_work_and_a_folder_gets_metrics_json(tmp_path, small_shapes):
    ds = VOCDetection(small_shapes, "test", classes=["circle", "square", "triangle"])
    from vggdet.evaluation import write_voc_results

    dets = [{k: ds.get_annotation(i)[k] for k in ("boxes", "labels")} for i in range(len(ds))]
    for d in dets:
        d["scores"] = np.ones(len(d["labels"]))
    write_voc_results(str(tmp_path / "res"), "test", ds.classes, ds.image_ids, dets)
    args = ["tools/eval_det.py", "--voc-root", small_shapes, "--results", str(tmp_path / "res"),
            "--classes", "circle,square,triangle", "--out"]
    (tmp_path / "folder").mkdir()
    r = run_tool(args + [str(tmp_path / "folder")])
    assert r.returncode == 0 and json.loads((tmp_path / "folder" / "metrics.json").read_text())["mAP"] == pytest.approx(1.0)
    (tmp_path / "a_file").write_text("x")
    r = run_tool(args + [str(tmp_path / "a_file" / "m.json")])
    assert r.returncode == 2 and r.stderr.startswith(f"error: --out {tmp_path / 'a_file'}: cannot write there")
    assert "mAP" not in r.stdout  # refused before the table, not after it
