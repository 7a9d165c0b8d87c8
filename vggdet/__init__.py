"""vggdet: a small, readable Fast/Faster R-CNN with a VGG16 backbone.

Where is what: `model/` (the detector), `data/` (datasets and loading), `evaluation/` (mAP, error analysis),
`training/` (trainer, logger, checkpoints), `inference/` (running a trained model: predictors, image and
video runners, dataset evaluation), `deploy/` (ONNX export, int8, SVD), `cli/` (the tools). At the root:
config, file I/O, errors, torch.distributed helpers and the runtime rules (device, autocast, CPU facts).
"""
from vggdet import _moved
from vggdet.config import Config, ConfigError, load_config

__version__ = "0.2.0"
__all__ = ["Config", "ConfigError", "load_config", "build_detector", "Detector", "Predictor", "load_predictor"]

_moved.install()


def __getattr__(name):  # lazy, so `import vggdet` for configs does not import torch
    if name == "build_detector":
        from vggdet.model.detector import build_detector

        return build_detector
    if name in ("Detector", "Predictor", "load_predictor"):
        import vggdet.inference

        return getattr(vggdet.inference, name)
    raise AttributeError(name)
