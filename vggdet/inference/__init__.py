"""Running a trained model: the one predictor interface and everything built on it.

- `base.py` — the interface written once (`Predictor`, `load_predictor`): input rules, size grouping, the
  one score / class filter; `torch_backend.py` (PyTorch, `Detector`) and `onnx_backend.py` (onnxruntime:
  `.onnx` and int8 exports) supply only their forward.
- `images.py` — the image runner (inputs, batches, outputs; torchrun sharding), `video.py` — videos and
  cameras, `outputs.py` — records, COCO rows, files and the run summary, `draw.py` — drawing boxes.
- `dataset.py` — dataset evaluation (tools/test_det.py and training's periodic evaluation).
- `ray_data.py` — images and a dataset's predictions on a Ray Data actor pool (`--ray`; the only module that
  imports Ray, which this package never imports for it).
- `tuning.py` — the Winograd conversion for CPU inference and its per-machine timing cache.
Every runner takes a predictor and never asks which backend it is.
"""
from vggdet.inference.base import Predictor, load_predictor

__all__ = ["Predictor", "load_predictor", "Detector", "TorchPredictor", "OnnxPredictor"]


def __getattr__(name):  # the backends import torch / onnxruntime: only when asked for
    if name in ("Detector", "TorchPredictor"):
        from vggdet.inference.torch_backend import TorchPredictor

        return TorchPredictor
    if name == "OnnxPredictor":
        from vggdet.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(name)
