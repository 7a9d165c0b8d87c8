"""Plain-Python configs: dataclass defaults here, a few changed keys in `configs/*.py`.

A config file is ordinary Python that assigns dicts named after the sections, e.g.::

    model = dict(num_classes=20, backbone=dict(weights="IMAGENET1K_V1"))
    train = dict(epochs=14, lr_steps=[10])

`load_config(path, overrides=["train.lr=0.002"])` starts from `Config()`, applies the file, then the
overrides, and checks every key and type. Errors are one-line `ConfigError`s naming the key and the file.
There is one base level (the defaults below) and no registries: every value is data, and
`build_detector` / `build_dataloader` are the only places that turn it into objects.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import runpy
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

__all__ = ["Config", "ConfigError", "load_config", "parse_overrides", "apply_overrides", "migrate_dict",
           "RENAMED"]


class ConfigError(ValueError):
    """A bad config file, key or value; the message is one line naming the key and the file."""


# ----------------------------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    depth: Literal[11, 13, 16, 19] = 16  # VGG11/13/16/19 (the VGG paper's A, B, D, E); 16 = the papers' recipe
    width: float = 1.0  # channel multiplier on VGG16's 64..512 (tiny test models use 1/8)
    freeze_at: int = 2  # freeze conv blocks 1..freeze_at (2 = conv1+conv2, the papers' recipe); 0 = none
    # torchvision-format VGG state_dict path (of this depth), or "IMAGENET1K_V1" (torchvision weights API,
    # needs network).
    weights: Optional[str] = None
    caffe_input: bool = False  # BGR, 0..255, minus caffe pixel means (for caffe-converted weights)
    batch_norm: bool = False  # torchvision's vgg16_bn layout (features[:43]); helps training from scratch


@dataclass
class RPNConfig:
    conv_channels: int = 512  # the 3x3 conv; 0 = same as the backbone's output channels
    anchor_scales: list = field(default_factory=lambda: [8, 16, 32])
    anchor_ratios: list = field(default_factory=lambda: [0.5, 1.0, 2.0])
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    allowed_border: float = 0.0  # anchors crossing the border by more than this are ignored in training
    pre_nms_top_n_train: int = 12000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0  # in original-image pixels, as in py-faster-rcnn (scaled by the resize factor)
    sigma: float = 3.0  # smooth-L1 sigma (beta = 1 / sigma^2)


@dataclass
class RoIHeadConfig:
    pool: Literal["pool", "align"] = "pool"  # torchvision.ops.roi_pool or roi_align
    pool_size: int = 7
    sampling_ratio: int = 2  # roi_align only
    fc_dim: int = 4096  # fc6 / fc7 width
    fc6_rank: Optional[int] = None  # truncated-SVD ranks (tools/compress_svd.py writes these)
    fc7_rank: Optional[int] = None
    dropout: float = 0.5
    batch_size_per_image: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_hi: float = 0.5
    bg_iou_lo: float = 0.0  # 0.1 in the original Fast R-CNN
    bbox_stds: list = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    sigma: float = 1.0
    score_thresh: float = 0.05  # detections below are dropped before NMS (`runtime.score_thresh` overrides)
    nms_thresh: float = 0.3  # IoU above which NMS suppresses (Soft-NMS linear: decays)
    nms: Literal["nms", "soft_linear", "soft_gaussian"] = "nms"  # Soft-NMS: Bodla et al. 2017
    nms_sigma: float = 0.5  # soft_gaussian: s *= exp(-IoU^2 / sigma), the paper's 0.5
    soft_nms_min_score: float = 0.001  # Soft-NMS drops boxes whose decayed score falls below this
    class_agnostic_nms: bool = False  # one NMS over all classes per image, each RoI keeping its best class
    detections_per_img: int = 100


@dataclass
class InputConfig:
    min_size: Union[int, list] = 600  # shorter side; a list = random choice per batch in training
    max_size: int = 1000
    size_divisible: int = 16
    test_min_size: Optional[int] = None  # None = max(min_size)


@dataclass
class ModelConfig:
    num_classes: int = 20  # K foreground classes; label 0 is background
    proposals: Literal["rpn", "external"] = "rpn"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class AugmentConfig:
    hflip: float = 0.5
    photometric: bool = False  # brightness/contrast + hue/saturation jitter
    random_crop: bool = False  # crop that keeps every box (albumentations BBoxSafeRandomCrop)
    scale_jitter: Optional[list] = None  # e.g. [0.8, 1.2]: random rescale before the model's resize
    min_visibility: float = 0.3


@dataclass
class DataConfig:
    format: Literal["voc", "coco", "yolo", "csv", "labelme", "shapes"] = "voc"
    root: str = "data/VOCdevkit"  # YOLO: the data.yaml, or the folder that holds it
    # VOC: lists of [subfolder, split] under root; concatenated (VOC07+12 trainval).
    train_sets: list = field(default_factory=lambda: [["VOC2007", "trainval"]])
    test_sets: list = field(default_factory=lambda: [["VOC2007", "test"]])
    # COCO: image folders and annotation files, relative to root. CSV / LabelMe: train_ann / test_ann name
    # each split's CSV file / folder of LabelMe JSON files, relative to root (no *_images: paths are
    # relative to the CSV or JSON file).
    train_images: str = "train2017"
    train_ann: str = "annotations/instances_train2017.json"
    test_images: str = "val2017"
    test_ann: str = "annotations/instances_val2017.json"
    coco_skip_empty: bool = True  # training only: skip images without usable boxes (see keep_background)
    # Train on background images (no usable box: no objects, or only crowd / difficult ones) as pure
    # negatives for the RPN and the head; False drops them from the training split (the test split keeps
    # every image). None = the format's default: kept for voc / yolo / csv / labelme / shapes, where an image
    # without objects was written so on purpose (an XML without <object>, an empty or missing YOLO label
    # file as Ultralytics trains it, a CSV background row, a LabelMe JSON without shapes); for coco,
    # `not coco_skip_empty` (dropped by default, as Detectron and torchvision's reference scripts do, so old
    # configs train on the same images). When set, it wins over coco_skip_empty.
    keep_background: Optional[bool] = None
    # Shapes: generated into root on first use.
    shapes_num_train: int = 400
    shapes_num_test: int = 100
    shapes_size: int = 256
    shapes_seed: int = 0
    # VOC: None = the 20 VOC classes; a list; or "auto" (sorted names in the split's XML). CSV / LabelMe: a
    # list, or None / "auto" = the sorted names found in the train split (for both splits). COCO and YOLO
    # name their classes (categories, data.yaml `names`); a list given here must equal YOLO's names.
    classes: Optional[Union[list, str]] = None
    use_difficult: bool = False
    skip_bad_images: bool = False
    skip_unknown_classes: bool = False
    proposals_file: Optional[str] = None  # external proposals (.pkl/.npz/.json), model.proposals="external"
    proposals_test_file: Optional[str] = None
    proposals_top_n: int = 2000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 1  # images per process
    num_workers: int = 2
    pin_memory: bool = True
    aspect_grouping: bool = True


# ----------------------------------------------------------------------------------------- train, test
@dataclass
class TrainConfig:
    epochs: int = 14  # VOC07 trainval: 70k iterations at batch 1 ~ 14 epochs
    lr: float = 0.001  # per image (batch 1); scaled linearly by the total batch
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_steps: list = field(default_factory=lambda: [10])  # epochs after which lr *= gamma (50k / 70k)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    clip_grad: Optional[float] = None  # max gradient L2 norm
    bias_lr_factor: float = 1.0  # the original Caffe recipe: 2.0
    bias_decay: bool = True  # the original Caffe recipe: False
    optimizer: Literal["sgd", "adamw"] = "sgd"
    seed: int = 0
    log_interval: int = 20
    eval_interval: int = 1  # epochs; 0 = only at the end
    checkpoint_interval: int = 1  # epochs
    keep_last: int = 3
    max_iters: Optional[int] = None  # stop early after this many iterations (smoke tests)


@dataclass
class TTAConfig:
    """Test-time augmentation for tools/test_det.py, tools/infer.py --tta and Detector (vggdet/model/tta.py)."""

    hflip: bool = False  # also run on the horizontally flipped image
    scales: list = field(default_factory=list)  # extra shorter-side sizes, e.g. [480, 720]


@dataclass
class TilesConfig:
    """Sliced inference for small objects (vggdet/inference/tiles.py); off while `size` is None."""

    size: Optional[int] = None  # tile side in image pixels, e.g. 512 (each tile is resized like an image)
    overlap: float = 0.25  # share of a tile its neighbour covers too: objects up to size * overlap stay whole
    full_image: bool = True  # also run the whole image, for objects larger than the overlap


@dataclass
class TestConfig:
    metric: Literal["voc07", "voc10", "coco"] = "voc07"
    iou_thresh: float = 0.5
    batch_size: int = 1
    tta: TTAConfig = field(default_factory=TTAConfig)  # off by default: the plain path pays nothing
    tiles: TilesConfig = field(default_factory=TilesConfig)  # sliced inference, off by default


@dataclass
class RuntimeConfig:
    """How a model runs (training, testing and inference alike), not what it is: None = automatic,
    True / False = forced. Tools' --device / --amp flags set these keys."""

    device: Optional[str] = None  # None (or "auto") = cuda when available, else cpu; "cpu", "cuda", "cuda:N"
    # Mixed precision: autocast to amp_dtype; None = float16 on CUDA (with a GradScaler in training),
    # bfloat16 on the CPU. The same rule in training, testing and inference.
    amp: bool = False
    amp_dtype: Optional[Literal["float16", "bfloat16"]] = None
    # NHWC conv input; None = for CPU inference and CUDA autocast (see FasterRCNN._channels_last).
    channels_last: Optional[bool] = None
    # CPU inference kernels (prepacked oneDNN convs and fc layers, Winograd F(4x4,3x3); vggdet/model/
    # cpu_kernels.py), applied by the predictor; None = on for CPU inference, False = the plain layers.
    winograd: Optional[bool] = None
    # Which kernel each conv runs: True = the fastest, timed once per conv shape and input size and cached
    # per machine in ~/.cache/vggdet/winograd.json; False = the fixed rule (Winograd on the wide layers).
    winograd_tune: bool = True
    # Detection score cut-off for testing / inference; None = model.roi_head.score_thresh.
    score_thresh: Optional[float] = None
    # Arithmetic for testing and inference (training is unaffected: `amp` decides there): auto = bf16
    # autocast on a CPU with native bf16 (avx512_bf16 or AMX), as OpenVINO does, fp32 elsewhere (the env
    # variable VGGDET_PRECISION=fp32|bf16 pins what auto means, e.g. for tests); fp32 = the exact path;
    # bf16 = autocast (needs native bf16); int8 = a model from tools/quantize.py. `amp` on still autocasts.
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    # CPU threads of a predictor (torch's intra-op threads, onnxruntime's intra_op_num_threads); None = the
    # library's default (one per core). A Ray worker with --worker-cpus C sets it to C.
    threads: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    name: str = "vggdet"  # work_dirs/<name> by default; load_config sets it to the file's stem
    source: Optional[str] = None  # the file this config came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> Config:
        """A config from a nested dict, e.g. a checkpoint's (renamed keys migrated without a warning)."""
        cfg = cls()
        _merge(cfg, d, source=source, warn=False)
        return cfg

    def dump(self, fmt: Literal["py", "json"] = "py") -> str:
        """The resolved config as a loadable Python config file or as JSON text."""
        d = self.to_dict()
        if fmt == "json":
            return json.dumps(d, indent=2)
        lines = [f"# resolved vggdet config (from {self.source})"]
        for k, v in d.items():
            lines.append(f"{k} = {v!r}")
        return "\n".join(lines) + "\n"

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


# ------------------------------------------------------------------------------------ renamed keys
def _same(v: Any) -> Any:
    return v


# Renamed or moved keys: old dotted key -> (new key, value conversion). Config files and --set items that
# use an old key keep working for one version with a FutureWarning (the deprecation warning Python shows
# users by default); checkpoints written before the
# key moved are migrated silently on load (vggdet/checkpoint.py). Add a row when a key moves.
RENAMED = {
    "train.device": ("runtime.device", lambda v: None if v == "auto" else v),
    "train.amp": ("runtime.amp", _same),
    "train.amp_dtype": ("runtime.amp_dtype", lambda v: None if v == "float16" else v),  # float16 was CUDA's
    "train.channels_last": ("runtime.channels_last", lambda v: True if v else None),  # False meant auto
    "test.winograd": ("runtime.winograd", lambda v: None if v else False),  # True meant auto
    "test.score_thresh": ("runtime.score_thresh", _same),
    "test.precision": ("runtime.precision", _same),  # 0.2: one precision rule for every tool
}


def _renamed(dotted: str, value: Any, source: str, warn: bool) -> tuple:
    """(dotted, value) with a renamed key mapped to its new name and meaning."""
    if dotted not in RENAMED:
        return dotted, value
    new, convert = RENAMED[dotted]
    if warn:
        warnings.warn(f"{source}: config key '{dotted}' is deprecated; use '{new}' (see vggdet/config.py)",
                      FutureWarning, stacklevel=2)
    return new, convert(value)


def migrate_dict(d: dict, source: str, warn: bool = True) -> dict:
    """A nested config dict with every renamed key moved to its new place (a new dict; `d` is unchanged)."""
    out: dict = {}
    for dotted, value in _flatten(d):
        dotted, value = _renamed(dotted, value, source, warn)
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _flatten(d: dict, prefix: str = "") -> list:
    """Nested dict -> [(dotted key, leaf value)]; a dict value under a renamed key is still a leaf."""
    items = []
    for k, v in d.items():
        dotted = prefix + str(k)
        if isinstance(v, dict) and v and dotted not in RENAMED:
            items += _flatten(v, dotted + ".")
        else:
            items.append((dotted, v))
    return items


# --------------------------------------------------------------------------------------------- loading
def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> Config:
    """Defaults <- config file <- `key=value` overrides, all validated."""
    cfg = Config()
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            ns = runpy.run_path(path)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{path}: cannot execute config file: {type(e).__name__}: {e}") from e
        sections = {k: v for k, v in ns.items() if not k.startswith("_") and not _is_import(v)}
        _merge(cfg, sections, source=path, warn=True)
        if "name" not in sections:
            cfg.name = os.path.splitext(os.path.basename(path))[0]
        cfg.source = path
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list) -> None:
    """Apply `--set` items ("a.b=1", ...) to `cfg` in place, checking keys and types."""
    for key, value in parse_overrides(overrides).items():
        set_key(cfg, *_renamed(key, value, "--set", warn=True), source="--set")


def parse_overrides(items: list) -> dict:
    """["a.b=1", "c=[1, 2]", "d=null"] -> {"a.b": 1, "c": [1, 2], "d": None}; bare words stay strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        out[key.strip()] = _parse_value(text.strip())
    return out


def set_key(cfg: Config, dotted: str, value: Any, source: str) -> None:
    """Set one dotted key (a section takes a dict of its keys), checking the key and the value's type."""
    obj: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        _check_key(obj, part, ".".join(parts[: i + 1]), source)
        if i == len(parts) - 1:
            break
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{source}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
    current = getattr(obj, parts[-1])
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{dotted}' is a section; give a dict, got {value!r}")
        for name, v in value.items():
            set_key(cfg, f"{dotted}.{name}", v, source)
        return
    hint = typing.get_type_hints(type(obj))[parts[-1]]
    setattr(obj, parts[-1], _check(value, hint, dotted, source))


def _merge(cfg: Config, values: dict, source: str, warn: bool) -> None:
    """Apply a nested dict of sections (a config file's namespace, a checkpoint's config)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the config must be a dict of sections, got {type(values).__name__}")
    for dotted, value in _flatten(values):
        set_key(cfg, *_renamed(dotted, value, source, warn), source=source)


def _check_key(obj: Any, name: str, dotted: str, source: str) -> None:
    """The one unknown-key check: `name` must be a field of the section `obj`."""
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        prefix = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown config key '{dotted}'{hint}")


def _parse_value(text: str) -> Any:
    if text in ("null", "None", "none"):
        return None
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string such as `align` or a path


def _is_import(v: Any) -> bool:
    return isinstance(v, type(os)) or callable(v)


def _check(value: Any, hint: Any, dotted: str, source: str) -> Any:
    """Return `value` (ints widened to float, tuples to lists) or raise a ConfigError."""
    ok, value = _coerce(value, hint)
    if not ok:
        raise ConfigError(f"{source}: '{dotted}' expects {_type_name(hint)}, got {value!r}")
    return value


def _coerce(value: Any, hint: Any) -> tuple:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        for arg in args:
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return value in args, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        return isinstance(value, list), value
    return True, value


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))
