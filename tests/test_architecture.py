"""The package's layout: what may import what, what sits at the root, the module paths that moved, and a
predictor interface that runners use without asking which backend runs."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

ROOT_MODULES = {"vggdet.__init__", "vggdet._moved", "vggdet.config", "vggdet.fileio", "vggdet.errors",
                "vggdet.distributed", "vggdet.runtime"}
SUBPACKAGES = {"model", "data", "evaluation", "training", "inference", "deploy", "cli", "serve"}
WEB_STACK = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart")


def _vggdet_imports(path: Path) -> set:
    """Absolute names of the vggdet modules that `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: -node.level] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m == "vggdet" or m.startswith("vggdet.")}


def _graph() -> dict:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): _vggdet_imports(p)
            for p in (ROOT / "vggdet").rglob("*.py")}


def _offenders(graph: dict, importer: str, forbidden: tuple) -> list:
    inside = [name for name in graph if name == importer or name.startswith(importer + ".")]
    assert inside, importer
    return sorted(f"{name} -> {m}" for name in inside for m in graph[name]
                  if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))


def test_the_root_holds_foundations_and_every_job_has_a_subpackage():
    graph = _graph()
    at_root = {n for n in graph if n.count(".") == 1}
    assert at_root == ROOT_MODULES, at_root ^ ROOT_MODULES
    assert {n.split(".")[1] for n in graph if n.count(".") >= 2} == SUBPACKAGES
    # foundations import no subpackage (config and runtime reach nothing but the config)
    for name in ROOT_MODULES - {"vggdet.__init__", "vggdet._moved"}:
        assert not [m for m in graph[name] if m.split(".")[1] in SUBPACKAGES], name


def test_imports_run_one_way():
    """model <- data / evaluation <- inference <- training <- cli; deploy beside inference."""
    g = _graph()
    assert len(g) > 40
    assert _offenders(g, "vggdet.model", ("vggdet.runtime", "vggdet.data", "vggdet.evaluation", "vggdet.inference",
                                          "vggdet.training", "vggdet.deploy", "vggdet.cli")) == []
    assert _offenders(g, "vggdet.data", ("vggdet.model", "vggdet.evaluation", "vggdet.inference", "vggdet.training",
                                         "vggdet.deploy", "vggdet.cli")) == []
    assert _offenders(g, "vggdet.evaluation", ("vggdet.model", "vggdet.inference", "vggdet.training",
                                               "vggdet.deploy", "vggdet.cli")) == []
    assert _offenders(g, "vggdet.inference", ("vggdet.training.trainer", "vggdet.training.logger", "vggdet.deploy",
                                              "vggdet.cli")) == []
    assert _offenders(g, "vggdet.training", ("vggdet.deploy", "vggdet.cli", "vggdet.inference.images",
                                             "vggdet.inference.video", "vggdet.inference.onnx_backend")) == []
    assert _offenders(g, "vggdet.deploy", ("vggdet.training.trainer", "vggdet.cli")) == []
    # the server runs a predictor through vggdet.inference, never a backend or the model by name
    assert _offenders(g, "vggdet.serve", ("vggdet.inference.torch_backend", "vggdet.inference.onnx_backend",
                                          "vggdet.model", "vggdet.training", "vggdet.deploy", "vggdet.cli")) == []
    assert sorted(n for n, deps in g.items() if not n.startswith("vggdet.serve")
                  and any(d == "vggdet.serve" or d.startswith("vggdet.serve.") for d in deps)) == ["vggdet.cli.serve"]
    # the runners take a predictor and never ask which backend it is
    for runner in ("images", "video", "outputs", "draw", "dataset", "ray_data"):
        assert _offenders(g, f"vggdet.inference.{runner}", ("vggdet.inference.torch_backend",
                                                            "vggdet.inference.onnx_backend")) == [], runner
    # CLI modules import the library, never each other (the shared wrapper is vggdet/cli/__init__.py)
    for name, deps in g.items():
        if name.startswith("vggdet.cli.") and name != "vggdet.cli.__init__":
            assert not [m for m in deps if m.startswith("vggdet.cli.") and m in g], name  # a module, not a name
    # nothing but the trainer, the package's lazy exports and the loader reaches a backend module by name
    users = sorted(name for name, deps in g.items()
                   if {"vggdet.inference.torch_backend", "vggdet.inference.onnx_backend"} & deps)
    assert users == ["vggdet.inference.__init__", "vggdet.inference.base", "vggdet.training.trainer"], users
    functions = [n.name for p in (ROOT / "vggdet").rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                 if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 100 and not [f for f in functions if f.startswith("test_")]


def test_only_the_ray_modules_import_ray():
    """Ray is an extra (`pip install 'vggdet[ray]'`): the Ray Data runner and the Ray Serve deployment import
    it, and only inside their functions, so importing them (or anything else in vggdet) never needs Ray."""
    users = {}
    for path in (ROOT / "vggdet").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                users.setdefault(str(path.relative_to(ROOT)), []).append(node)
    assert sorted(users) == ["vggdet/inference/ray_data.py", "vggdet/serve/ray_serve.py"], sorted(users)
    for path, nodes in users.items():
        top_level = ast.parse((ROOT / path).read_text()).body
        assert not [n for n in top_level if n in nodes], path


def test_moved_modules_import_for_one_version_with_a_warning():
    from vggdet._moved import MOVED

    code = (
        "import importlib, warnings, sys\n"
        "warnings.simplefilter('always')\n"
        f"for old, new in {MOVED!r}.items():\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        mod = importlib.import_module(old)\n"
        "    assert [x.category for x in w] == [DeprecationWarning], (old, w)\n"
        "    assert new in str(w[0].message), w[0].message\n"
        "    target = importlib.import_module(new)\n"
        "    public = [k for k in vars(target) if not k.startswith('_')]\n"
        "    assert public and all(getattr(mod, k) is getattr(target, k) for k in public), old\n"
        "from vggdet.predictor import Detector\n"
        "from vggdet.onnx_predictor import OnnxDetector\n"
        "from vggdet.media import run_images, collect_inputs\n"
        "from vggdet.dataset_eval import evaluate_checkpoint, predict_dataset\n"
        "import vggdet\n"
        "assert Detector is vggdet.Detector and OnnxDetector.__name__ == 'OnnxPredictor'\n"
        "print('ok', len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


def test_public_api_and_detector_from_checkpoint():
    import vggdet
    from vggdet.inference import OnnxPredictor, Predictor, TorchPredictor

    assert set(vggdet.__all__) >= {"Config", "load_config", "build_detector", "Detector", "Predictor",
                                   "load_predictor"}
    assert vggdet.Detector is TorchPredictor and issubclass(OnnxPredictor, Predictor)
    # each backend supplies only its forward for one same-size group and its input conversion
    shared = {"predict", "predict_batch", "class_filter", "describe", "from_checkpoint"}
    for backend in (TorchPredictor, OnnxPredictor):
        assert not shared & set(vars(backend)), backend
        assert {"_prepare", "_forward"} <= set(vars(backend))


def test_only_the_server_imports_the_web_stack():
    """fastapi / starlette / uvicorn / python-multipart are the serve extra: only vggdet/serve/ imports them."""
    for path in (ROOT / "vggdet").rglob("*.py"):
        if path.parent.name == "serve":
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
        assert not names & set(WEB_STACK), path.relative_to(ROOT)


@pytest.mark.parametrize("module", ["vggdet", "vggdet.config"])
def test_importing_the_package_for_a_config_does_not_import_torch(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}, sys; print('torch' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_every_module_states_its_job():
    for path in (ROOT / "vggdet").rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 30, f"{path.relative_to(ROOT)} has no docstring saying its job"
    assert importlib.import_module("vggdet.inference.base").__doc__
