"""The error-analysis report: analysis.json, the PNG figures and one self-contained report.html.

    a = analyze_dataset(dataset, detections, "report/")       # any VOC / COCO dataset of vggdet.data
    a = analyze_results_dir(dataset, "work_dirs/x/test", "report/")   # its devkit results files

report.html embeds every figure as a base64 `data:` URI and has no scripts, stylesheets or fonts to fetch:
it opens from disk, without a network. matplotlib (Agg backend) draws the charts; cv2 draws the gallery
crops (ground truth green, detection red; the page captions them). The numbers are analysis.py's; with
`eval_metrics` (the dict vggdet.evaluation.evaluate returns, e.g. tools/test_det.py's VOC07 mAP) the page's
headline shows that number beside TIDE's AP50 and says why they differ.
"""
from __future__ import annotations

import base64
import html
import os
import warnings
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from ..fileio import atomic_write, write_json
from .analysis import ERROR_TYPES, SPECIAL_TYPES, analyze
from .results import read_voc_results

__all__ = ["analyze_dataset", "analyze_results_dir", "coco_detections", "headline", "write_report"]

GT_COLOR, DET_COLOR = (40, 200, 40), (230, 40, 40)  # RGB
CROP_SIDE = 256  # px, the longer side of a gallery crop
ERROR_HELP = {
    "Cls": "right place (IoU >= 0.5), wrong class", "Loc": "right class, badly placed (0.1 <= IoU < 0.5)",
    "Both": "wrong class and badly placed", "Dupe": "a second detection on an already detected box",
    "Bkg": "a detection on nothing (IoU <= 0.1 with every box)", "Miss": "a box nothing detected",
    "FalsePos": "all false positives removed", "FalseNeg": "all missed boxes removed",
}


def analyze_dataset(dataset, detections, out_dir: str, *, title: Optional[str] = None, progress: bool = True,
                    eval_metrics: Optional[Mapping] = None, **options) -> dict:
    """Analyse `detections` (a list aligned with `dataset` or a dict keyed by image id) against the
    dataset's full ground truth (difficult / crowd boxes ignored) and write the report into out_dir.

    eval_metrics: the metrics dict of vggdet.evaluation.evaluate on the same detections ({"metric": "voc07",
    "mAP": 0.9389, ...}, what tools/test_det.py prints): adds "headline" to the analysis (see `headline`).
    options: see vggdet.evaluation.analysis.analyze (score_thresh, fg_iou, bg_iou, max_dets, top_errors)."""
    anns = [dataset.get_annotation(i) for i in range(len(dataset))]
    a = analyze(anns, detections, dataset.classes, dataset.image_ids, progress=progress, **options)
    if eval_metrics is not None:
        a["headline"] = headline(a, eval_metrics)
    write_report(a, out_dir, list(getattr(dataset, "image_paths", [])), title)
    return a


def analyze_results_dir(dataset, results_dir: str, out_dir: str, **kwargs) -> dict:
    """analyze_dataset on the devkit files comp4_det_<split>_<class>.txt in results_dir (tools/test_det.py
    writes them for VOC and COCO data alike; split = dataset.split, or "test" as evaluate() names them)."""
    split = str(getattr(dataset, "split", "test"))
    dets = read_voc_results(results_dir, split, dataset.classes, dataset.image_ids)
    return analyze_dataset(dataset, dets, out_dir, **kwargs)


AP50_LABEL = "AP50 (TIDE, COCO-style 101-point)"
WHY_THEY_DIFFER = {
    "voc07": "They differ because the VOC07 mAP is the devkit's 11-point AP (precision at recall 0, 0.1, ..., 1: "
             "a class that never reaches full recall loses up to 1/11 at the last point) with matches at IoU > 0.5, "
             "while TIDE's AP50 is COCO-style, 101 points, IoU >= 0.5 and at most 100 detections per image; "
             "difficult boxes are ignored by both.",
    "voc10": "They differ because the VOC2010+ mAP is the devkit's area under the whole precision envelope with "
             "matches at IoU > 0.5, while TIDE's AP50 is COCO-style, 101 points, IoU >= 0.5 and at most 100 "
             "detections per image; difficult boxes are ignored by both.",
    "coco": "They differ because the COCO mAP averages AP over IoU thresholds 0.50 to 0.95, while TIDE's AP50 "
            "counts a match at IoU >= 0.5 alone (as COCOeval's AP50, which it should equal up to rounding).",
}


def headline(a: Mapping, eval_metrics: Mapping) -> dict:
    """{"metrics": {label: AP points}, "note": why they differ}: the evaluation's mAP (labelled as
    vggdet.evaluation.format_table prints it, e.g. "mAP (voc07)"; for COCO also its AP50) and TIDE's AP50."""
    metric = str(eval_metrics.get("metric", ""))
    label = f"mAP ({metric}, AP@[.5:.95])" if metric == "coco" else f"mAP ({metric})"
    metrics = {label: round(100 * float(eval_metrics["mAP"]), 2)}
    if "AP50" in (eval_metrics.get("stats") or {}):
        metrics["AP50 (COCOeval)"] = round(100 * float(eval_metrics["stats"]["AP50"]), 2)
    metrics[AP50_LABEL] = round(a["tide"]["AP50"], 2)
    note = WHY_THEY_DIFFER.get(metric, "The two metrics interpolate and match differently.")
    return {"metrics": metrics, "note": note}


def coco_detections(results: Sequence[Mapping], cat_id_to_label: Mapping) -> dict:
    """COCO result dicts (checked by read_coco_results) -> {image_id: dict(boxes xyxy, labels, scores)}."""
    out: dict = {}
    for r in results:
        x, y, w, h = r["bbox"]
        d = out.setdefault(r["image_id"], {"boxes": [], "labels": [], "scores": []})
        d["boxes"].append([x, y, x + w, y + h])
        d["labels"].append(cat_id_to_label[r["category_id"]])
        d["scores"].append(r["score"])
    return out


def write_report(a: Mapping, out_dir: str, image_paths: Optional[Sequence[str]] = None,
                 title: Optional[str] = None) -> str:
    """Write analysis.json, tide.png, confusion.png, pr_curves.png, by_size.png, gallery_NN.png and
    report.html into out_dir; return the page's path. image_paths: per dataset index, for the crops (when
    they cannot be read the crops show the boxes on grey, with one warning and a note on the page)."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "analysis.json"), a)
    plt = _pyplot()
    figures = {}
    for name, draw in (("tide", _plot_tide), ("confusion", _plot_confusion), ("pr_curves", _plot_pr),
                       ("by_size", _plot_sizes)):
        fig = draw(plt, a)
        figures[name] = os.path.join(out_dir, f"{name}.png")
        fig.savefig(figures[name], bbox_inches="tight")
        plt.close(fig)
    crops, missing = [], []
    for n, item in enumerate(a["gallery"]):
        path = os.path.join(out_dir, f"gallery_{n:02d}.png")
        crop, found = _crop(item, image_paths)
        cv2.imwrite(path, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        crops.append(path)
        if not found:
            missing.append(_image_path(item, image_paths) or f"image id {item['image_id']}")
    if missing:
        warnings.warn(f"{out_dir}: {len(missing)} of {len(crops)} gallery images not found (first: {missing[0]}); "
                      "the crops show the boxes on grey. COCO results: pass the image folder with --images DIR",
                      stacklevel=2)
    page = _page(a, figures, crops, title or "Detection error analysis", image_paths, missing)
    path = os.path.join(out_dir, "report.html")
    atomic_write(path, lambda f: f.write(page.encode()))
    return path


# ---------------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_tide(plt, a: Mapping):
    """Horizontal bars: the six main dAPs and the two special ones, as TIDE's summary plot."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100, gridspec_kw={"width_ratios": [3, 1.4]})
    colours = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#7f7f7f", "#404040"]
    for ax, names, cols in ((axes[0], ERROR_TYPES, colours[:6]), (axes[1], SPECIAL_TYPES, colours[6:])):
        values = [a["tide"][n] for n in names]
        ax.barh(list(names)[::-1], values[::-1], color=cols[::-1])
        for y, v in enumerate(values[::-1]):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(max(values) * 1.25, 1.0))
        ax.set_xlabel("dAP (AP points gained by the oracle)")
    axes[0].set_title(f"main errors (AP50 = {a['tide']['AP50']:.2f})")
    axes[1].set_title("special errors")
    fig.tight_layout()
    return fig


def _plot_confusion(plt, a: Mapping):
    """Row-normalised colours, raw counts written in the cells (when there is room)."""
    c = a["confusion"]
    mat = np.asarray(c["matrix"], float)
    n = len(mat)
    side = min(3.0 + 0.45 * n, 26.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=90)
    norm = mat / np.maximum(mat.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), c["columns"], rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticks(range(n), c["classes"], fontsize=8)
    ax.set(xlabel="predicted", ylabel="ground truth",
           title=f"confusion at score >= {c['score_thresh']:g} (colour: row fraction)")
    if n <= 30:
        for (r, col), v in np.ndenumerate(mat):
            if v:
                ax.text(col, r, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if norm[r, col] > 0.6 else "black")
    fig.tight_layout()
    return fig


def _plot_pr(plt, a: Mapping):
    """The 101-point interpolated precision that AP50 averages, per class; up to 6 classes per panel, the
    legend beside the panel (not over the curves)."""
    curves = a["pr_curves"]["precision"]
    groups = [list(curves)[i:i + 6] for i in range(0, len(curves), 6)] or [[]]
    cols = min(2, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.6 * cols, 3.4 * rows), dpi=100, squeeze=False)
    for ax, names in zip(axes.flat, groups):
        for name in names:
            ax.plot(a["pr_curves"]["recall"], curves[name], lw=1.6,
                    label=f"{name} ({a['per_class'][name]['AP50']:.1f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                      title="class (AP50)", title_fontsize=9, frameon=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _plot_sizes(plt, a: Mapping):
    sizes = a["by_size"]
    names = list(sizes)
    values = [sizes[s]["AP50"] or 0.0 for s in names]
    fig, ax = plt.subplots(figsize=(4.5, 3), dpi=100)
    ax.bar([f"{s}\n({sizes[s]['num_gt']} boxes)" for s in names], values, color="#4363d8")
    for x, s in enumerate(names):
        ax.text(x, values[x], "n/a" if sizes[s]["AP50"] is None else f"{values[x]:.1f}", ha="center",
                va="bottom", fontsize=8)
    ax.set(ylim=(0, 105), ylabel="AP50", title="AP50 by object size (box area, COCO bounds 32², 96²)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- gallery
def _crop(item: Mapping, image_paths: Optional[Sequence[str]]) -> tuple:
    """(RGB crop around the item's boxes (gt green, detection red), CROP_SIDE px long; whether the image was
    found). The caption is the page's (it wraps there; a bar drawn into a narrow crop would cut it)."""
    boxes = [(b["box"], col) for b, col in ((item["gt"], GT_COLOR), (item["det"], DET_COLOR)) if b]
    img, found = _image(item["image"], image_paths, boxes)
    h, w = img.shape[:2]
    for box, col in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), col, max(1, round(max(h, w) / 300)))
    xy = np.array([b for b, _ in boxes], float)
    lo, hi = xy[:, :2].min(0), xy[:, 2:].max(0)
    pad = max(16.0, 0.4 * float((hi - lo).max()))
    x1, y1 = np.maximum(lo - pad, 0).astype(int)
    x2, y2 = np.minimum(hi + pad, [w, h]).astype(int)
    crop = img[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    scale = CROP_SIDE / max(crop.shape[:2])
    return cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))), found


def _image_path(item: Mapping, image_paths: Optional[Sequence[str]]) -> Optional[str]:
    index = item["image"]
    return image_paths[index] if image_paths and 0 <= index < len(image_paths) else None


def _image(index: int, image_paths: Optional[Sequence[str]], boxes: list) -> tuple:
    """(the image (RGB), True), or (a grey canvas with a note, False) when it cannot be read (e.g. COCO
    without --images)."""
    from vggdet.data.image_io import read_image

    try:
        return read_image(image_paths[index]).copy(), True
    except (TypeError, IndexError, ValueError):
        size = np.max([b for b, _ in boxes], axis=0)[2:] + 32
        canvas = np.full((int(size[1]), int(size[0]), 3), 128, np.uint8)
        cv2.putText(canvas, "image not found", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        return canvas, False


def _caption(item: Mapping) -> str:
    if item["type"] == "Miss":
        near = f" (nearest det: {item['det']['class']} {item['det']['score']:.2f})" if item["det"] else ""
        return f"Miss: {item['gt']['class']}{near}"
    gt = f" (gt {item['gt']['class']})" if item["gt"] and item["type"] in ("Cls", "Both") else ""
    return f"{item['type']}: {item['det']['class']} {item['score']:.2f}{gt}"


# ------------------------------------------------------------------------------------------------- page
def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _cell(v) -> str:
    return "n/a" if v is None else f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
         "img{max-width:100%}.headline{font-size:1.15em}.headline b{margin-right:.3em}"
         ".headline span{margin-right:1.5em;white-space:nowrap}"
         f"figure{{display:inline-block;width:{CROP_SIDE}px;margin:6px;vertical-align:top}}"
         f"figure img{{display:block;margin:0 auto;max-height:{CROP_SIDE}px}}"
         "figcaption{font-size:12px;margin-top:3px;overflow-wrap:anywhere}figcaption b{display:block}"
         ".warn{color:#b00;font-weight:bold}")


def _headline(a: Mapping) -> str:
    """The numbers at the top: the evaluation's mAP (when given) beside TIDE's AP50, each labelled."""
    h = a.get("headline") or {"metrics": {AP50_LABEL: a["tide"]["AP50"]}, "note": ""}
    spans = "".join(f"<span><b>{html.escape(k)}</b>{v:.2f}</span>" for k, v in h["metrics"].items())
    note = f"<br><small>{html.escape(h['note'])}</small>" if h["note"] else ""
    return f'<p class="headline">{spans}{note}</p>'


def _counts(s: Mapping) -> str:
    """"273 ground-truth boxes, of which 38 difficult (ignored, as in the devkit)": the files' own count."""
    crowd = s.get("num_crowd_gt", 0)
    ignored = [f"{n} {what} (ignored, as in {rule})" for n, what, rule in (
        (s["num_ignored_gt"] - crowd, "difficult", "the devkit"), (crowd, "crowd", "COCOeval")) if n]
    boxes = f"{s['num_gt'] + s['num_ignored_gt']} ground-truth boxes"
    return boxes + (f", of which {' and '.join(ignored)}" if ignored else "")


def _tile(item: Mapping, crop: str, image_paths: Optional[Sequence[str]]) -> str:
    """A gallery figure: the crop, its caption, and the image's file name (with the id when they differ)."""
    path, image_id = _image_path(item, image_paths), str(item["image_id"])
    name = os.path.basename(path) if path else image_id
    if path and os.path.splitext(name)[0] != image_id:
        name += f" (id {image_id})"
    return (f"<figure>{_img(crop, item['type'])}<figcaption><b>{html.escape(_caption(item))}</b>"
            f"{html.escape(name)}</figcaption></figure>")


def _page(a: Mapping, figures: Mapping, crops: Sequence[str], title: str,
          image_paths: Optional[Sequence[str]] = None, missing: Sequence[str] = ()) -> str:
    s, t = a["settings"], a["tide"]
    parts = [f"<h1>{html.escape(title)}</h1>", _headline(a),
             f"<p>{s['num_images']} images, {_counts(s)}; {s['num_dets']} detections ({s['num_ignored_dets']} on "
             f"ignored boxes, not counted; {s['num_dropped_dets']} dropped beyond {s['max_dets']} per image). "
             f"Foreground IoU {s['fg_iou']:g}, background IoU {s['bg_iou']:g}; AP at IoU {s['fg_iou']:g}, "
             "COCO 101-point, in points.</p>"]
    if a["empty"]:
        parts.append('<p class="warn">The results contain no detections: every box is missed; '
                     "there is nothing else to analyse.</p>")
    rows = [["dAP", t["AP50"]] + [t[n] for n in ERROR_TYPES + SPECIAL_TYPES],
            ["count", None] + [a["tide_counts"][n] for n in ERROR_TYPES] + [None, None]]
    parts += ['<section id="summary"><h2>Summary</h2>',
              _table(["", "AP50", *ERROR_TYPES, *SPECIAL_TYPES], rows),
              "<ul>" + "".join(f"<li><b>{n}</b>: {ERROR_HELP[n]}</li>" for n in ERROR_HELP) + "</ul></section>",
              '<section id="tide"><h2>TIDE error breakdown</h2>', _img(figures["tide"], "TIDE dAP bars"),
              "</section>"]
    pairs = "".join(f"<li>{html.escape(p['gt'])} detected as {html.escape(p['predicted'])}: {p['count']}</li>"
                    for p in a["confused_pairs"][:5]) or "<li>none</li>"
    parts += ['<section id="confusion"><h2>Confusion matrix</h2>',
              f"<p>Detections with score &ge; {a['confusion']['score_thresh']:g}. Rows: ground-truth classes, then "
              "<i>background</i> (detections matched to no box: on nothing, badly placed, or a second detection, "
              "of any class, on a box already taken); columns: "
              "predicted classes, then <i>missed</i>. Difficult / crowd boxes and the detections on them are "
              f"left out. Most confused:</p><ul>{pairs}</ul>", _img(figures["confusion"], "confusion matrix"),
              "<p>Cls errors at any score (box class &rarr; predicted class): " + (", ".join(
                  f"{html.escape(p['gt'])} &rarr; {html.escape(p['predicted'])} ({p['count']})"
                  for p in a["cls_error_pairs"][:8]) or "none") + "</p>",
              "</section>",
              '<section id="pr-curves"><h2>Precision-recall curves</h2>', _img(figures["pr_curves"], "PR curves"),
              "</section>",
              '<section id="by-size"><h2>AP by object size</h2>', _img(figures["by_size"], "AP by size"),
              _table(["size", "AP50", "boxes", "recall (%)"],
                     [[k, v["AP50"], v["num_gt"], v["recall"]] for k, v in a["by_size"].items()]), "</section>",
              '<section id="gallery"><h2>Worst errors</h2><p>The highest-scoring false positives and the largest '
              "missed boxes. Green: ground truth, red: detection.</p>"]
    if missing:
        parts.append(f'<p class="warn">{len(missing)} of {len(crops)} images were not found (first: '
                     f"{html.escape(missing[0])}), so their tiles show the boxes on grey. For COCO results, give "
                     "the image folder: <code>tools/analyze_det.py --coco-ann ANN --results RES --out DIR "
                     "--images IMAGE_DIR</code> (VOC reads JPEGImages/ beside Annotations/).</p>")
    parts += [_tile(item, path, image_paths) for item, path in zip(a["gallery"], crops)]
    parts += ["</section>", '<section id="per-class"><h2>Per class</h2>',
              _table(["class", "AP50", "boxes", "detections", *ERROR_TYPES],
                     [[n, c["AP50"], c["num_gt"], c["num_det"], *c["errors"].values()]
                      for n, c in a["per_class"].items()]), "</section>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def tide_summary(a: Mapping) -> str:
    """An analysis as text: TIDE's table (AP50 and the dAPs, in AP points), the error counts and the top
    confusions (tools/analyze_det.py and tools/test_det.py --report print it)."""
    names = ("AP50",) + ERROR_TYPES + SPECIAL_TYPES
    lines = ["  ".join(f"{n:>8}" for n in ("",) + names),
             "  ".join([f"{'dAP':>8}"] + [f"{a['tide'][n]:8.2f}" for n in names]),
             "  ".join([f"{'count':>8}", f"{'':>8}"] + [f"{a['tide_counts'][n]:8d}" for n in ERROR_TYPES])]
    pairs = [f"{p['gt']} -> {p['predicted']} ({p['count']})" for p in a["confused_pairs"][:3]]
    lines.append(f"most confused at score >= {a['confusion']['score_thresh']:g}: {', '.join(pairs) or 'none'}")
    pairs = [f"{p['gt']} -> {p['predicted']} ({p['count']})" for p in a["cls_error_pairs"][:3]]
    lines.append(f"most Cls errors (any score, box class -> predicted): {', '.join(pairs) or 'none'}")
    if a["empty"]:
        lines.append("the results contain no detections: every box is missed")
    return "\n".join(lines)
