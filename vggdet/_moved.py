"""Module paths that moved in 0.2 (the subpackages of issue #20) keep importing for one version.

`import vggdet.predictor` (or `from vggdet.media import run_images`) still works and warns once with a
DeprecationWarning naming the new home. The old name is a thin module whose attributes are the new
module's, so `vggdet.predictor.Detector is vggdet.inference.Detector`. Remove after 0.2.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> new module
MOVED = {
    "vggdet.predictor": "vggdet.inference.torch_backend",
    "vggdet.onnx_predictor": "vggdet.inference.onnx_backend",
    "vggdet.media": "vggdet.inference.images",
    "vggdet.video": "vggdet.inference.video",
    "vggdet.visualize": "vggdet.inference.draw",
    "vggdet.dataset_eval": "vggdet.inference.dataset",
    "vggdet.trainer": "vggdet.training.trainer",
    "vggdet.logger": "vggdet.training.logger",
    "vggdet.checkpoint": "vggdet.training.checkpoint",
    "vggdet.export": "vggdet.deploy.export",
    "vggdet.quantize": "vggdet.deploy.quantize",
    "vggdet.svd": "vggdet.deploy.svd",
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old path works until vggdet 0.3",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__doc__ = target.__doc__
        module.__getattr__ = lambda name: getattr(target, name)  # PEP 562: names added to it later


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
