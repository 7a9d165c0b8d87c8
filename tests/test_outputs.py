"""Output files of every tool: written atomically with the mode open() would give, and an output folder that
cannot be written is one line before anything loads."""
from __future__ import annotations

import os
import stat

import cv2
import numpy as np
import pytest
from conftest import one_line, run_tool

from vggdet.fileio import write_json
from vggdet.training.checkpoint import save_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(str(tmp_path / "m.json"), {"a": 1})
        save_checkpoint(str(tmp_path / "c.pth"), {"model": {}})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~umask
    for name in ("m.json", "c.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name


@pytest.mark.parametrize("tool,flag", [("infer", "--out"), ("train_det", "--work-dir"), ("test_det", "--out")])
def test_unwritable_output_folder_fails_before_loading(tmp_path, tool, flag):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    args = {"infer": [str(tmp_path / "missing.pt"), str(tmp_path / "a.png")],
            "train_det": ["configs/shapes_tiny.py"], "test_det": [str(tmp_path / "missing.pt")]}[tool]
    r = run_tool([f"tools/{tool}.py", *args, flag, str(blocker / "out")])
    # the checkpoint does not exist either: the output folder is checked first, before anything loads
    assert r.returncode == 2 and f"{flag} {blocker / 'out'}: cannot write there" in one_line(r)


def test_a_run_that_fails_before_its_first_output_leaves_no_folder(tmp_path, tiny_ckpt, small_shapes):
    """infer, analyze, browse and test_det (its default <checkpoint folder>/test) on bad input: exit 2 and no
    empty output folder; a run that wrote something keeps its folder."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint" * 10)
    runs = {"infer": (["tools/infer.py", str(tmp_path / "junk.pth"), str(tmp_path / "a.png"), "--out",
                       str(tmp_path / "o_infer" / "deep")], tmp_path / "o_infer"),
            "analyze": (["tools/analyze_det.py", "--voc-root", str(tmp_path / "nowhere"), "--results",
                         str(tmp_path / "nowhere"), "--out", str(tmp_path / "o_analyze")], tmp_path / "o_analyze"),
            "browse": (["tools/browse_dataset.py", "configs/shapes_tiny.py", "--out", str(tmp_path / "o_browse"),
                        "--set", "data.format=voc", f"data.root={tmp_path / 'nowhere'}"], tmp_path / "o_browse"),
            "test_det": (["tools/test_det.py", str(tmp_path / "junk.pth")], tmp_path / "test")}
    for tool, (args, folder) in runs.items():
        r = run_tool(args)
        assert r.returncode == 2 and one_line(r), (tool, r.stderr)
        assert not folder.exists(), f"{tool} left {folder}"
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "kept"),
                  "--no-draw"])
    assert r.returncode == 0 and (tmp_path / "kept" / "detections.jsonl").is_file(), r.stderr


def test_results_writer_writes_what_json_dumps_writes(tmp_path):
    """detections.jsonl / detections_coco.json written a record at a time equal the whole lists dumped at once."""
    import json

    from vggdet.inference.outputs import ResultsWriter, write_image_results

    records = [{"file": f"{k}.jpg", "width": 4, "height": 3, "detections": []} for k in range(3)]
    coco = [[{"image_id": 0, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], [],
            [{"image_id": 2, "category_id": 2, "bbox": [1, 1, 2, 2], "score": 0.25}] * 2]
    write_image_results(str(tmp_path), records, coco)
    assert (tmp_path / "detections.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in records)
    assert (tmp_path / "detections_coco.json").read_text() == json.dumps([r for rows in coco for r in rows])
    with pytest.raises(RuntimeError):
        with ResultsWriter(str(tmp_path / "failed"), coco=True) as w:
            w.add(records[0], coco[0])
            raise RuntimeError("a failure mid-run")
    assert os.listdir(tmp_path / "failed") == []  # no torn file, no temp file
