"""vggdet: a small, readable Fast/Faster R-CNN with a VGG16 backbone."""
from vggdet.config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "build_detector", "Detector"]


def __getattr__(name):  # lazy, so `import vggdet` for configs does not import torch
    if name == "build_detector":
        from vggdet.model.detector import build_detector

        return build_detector
    if name == "Detector":
        from vggdet.predictor import Detector

        return Detector
    raise AttributeError(name)
