"""Shared test settings: the tiny configs, tool runner, free port, and the real-data fixtures.

Test modules import the plain names (`from conftest import TINY, run_tool`): pytest puts this folder on
`sys.path` (rootdir-based, no `__init__.py`), so that works both from the repo root and from inside tests/.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = str(ROOT / "configs" / "shapes_tiny.py")
FIXTURES = ROOT / "tests" / "fixtures"
LEGACY = FIXTURES / "legacy_v1.pt"  # written by vggdet 0.1.0 (commit 228f70e), see tests/fixtures/README.md
LEGACY_EXPECTED = json.loads((FIXTURES / "legacy_v1_expected.json").read_text())

# A seconds-fast model: VGG16 at 1/8 width, 128-px inputs, 2 classes.
TINY = ["model.backbone.width=0.125", "model.backbone.freeze_at=0", "model.roi_head.fc_dim=128",
        "model.roi_head.dropout=0.0", "model.input.min_size=128", "model.input.max_size=256",
        "model.num_classes=2", "model.rpn.anchor_scales=[2,4,8]", "model.rpn.min_size=4",
        "model.rpn.pre_nms_top_n_train=2000", "model.rpn.post_nms_top_n_train=300"]


def tiny_train_overrides(tmp_path: Path, *extra: str) -> list:
    """Overrides that make configs/shapes_tiny.py a seconds-long run on 128-px images under `tmp_path`."""
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_num_train=24", "data.shapes_num_test=12",
            "data.shapes_size=128", "data.num_workers=0", "model.input.min_size=128", "model.input.max_size=128",
            "model.backbone.width=0.125", "model.roi_head.fc_dim=128", "model.rpn.anchor_scales=[1,2,4]",
            "data.batch_size=2", "test.batch_size=6", "train.log_interval=1", "train.eval_interval=0",
            "train.warmup_iters=5", *extra]


def run_tool(args: list, **kw) -> subprocess.CompletedProcess:
    """`python *args` in the repo root, output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- real data
def _need_dir(path: Path) -> Path:
    """`path`, or skip naming the first folder on the way to it that is missing."""
    for p in [*reversed(path.parents), path]:
        if ROOT.parent in p.parents and not p.is_dir():
            pytest.skip(f"../{p.relative_to(ROOT.parent).as_posix()} not present: the real-data tests need the "
                        "project's shared data folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the project's real datasets, beside the checkout (may be absent)."""
    return ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def bccd_root(shared_data: Path) -> Path:
    """The BCCD blood-cell dataset in VOC layout (292 trainval / 72 test images)."""
    return _need_dir(shared_data / "bccd" / "VOCdevkit" / "VOC2007")


@pytest.fixture(scope="session")
def coco128_root(shared_data: Path) -> Path:
    """COCO128: the first 128 COCO train2017 images with their instances annotations."""
    return _need_dir(shared_data / "coco128")


@pytest.fixture(scope="session")
def legacy_shapes(tmp_path_factory) -> Path:
    """The shapes data the legacy checkpoint (LEGACY) was trained and tested on, generated again."""
    from vggdet.data.shapes import make_shapes

    s = LEGACY_EXPECTED["shapes"]
    root = tmp_path_factory.mktemp("legacy") / "shapes"
    make_shapes(str(root), "voc", s["num_train"], s["num_test"], s["size"], s["seed"])
    return root


@pytest.fixture(scope="session", autouse=True)
def fp32_everywhere():
    """runtime.precision=auto means bf16 on CPUs with native bf16: the tests pin fp32 (VGGDET_PRECISION, which
    tools run as subprocesses inherit) so they give the same numbers on every host."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGDET_PRECISION", "fp32")
        yield


@pytest.fixture(scope="session", autouse=True)
def winograd_cache_dir(tmp_path_factory) -> Path:
    """VGGDET_CACHE_DIR in a temp folder for the whole session (tools run as subprocesses inherit it): the
    Winograd tuning decisions (vggdet/model/winograd.py) never go to the real ~/.cache."""
    folder = tmp_path_factory.mktemp("vggdet_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGDET_CACHE_DIR", str(folder))
        yield folder


# ------------------------------------------------------------------------------------- shared materials
FAST = ["model.rpn.pre_nms_top_n_test=500", "model.rpn.post_nms_top_n_test=50", "model.roi_head.detections_per_img=10"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained TINY checkpoint (2 classes, seeded): fast, and with plenty of low-score detections."""
    import torch

    from vggdet import build_detector, load_config
    from vggdet.training.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = load_config(None, TINY + FAST)
    torch.manual_seed(0)
    save_checkpoint(str(d / "tiny.pt"), {"model": build_detector(cfg).state_dict(), "config": cfg.to_dict(),
                                         "classes": ["circle", "square"]})
    return d / "tiny.pt"


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> str:
    """A shapes dataset in VOC layout: 8 train / 4 test images of 128 px (seed 3)."""
    from vggdet.data import make_shapes

    return make_shapes(str(tmp_path_factory.mktemp("small_shapes") / "voc"), "voc", 8, 4, 128, seed=3)


def one_line(r: subprocess.CompletedProcess) -> str:
    """The one error line of a tool's stderr (warnings aside)."""
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, r.stderr
    return lines[0]
