"""The tools as commands: one error wrapper, one --set rule, console entry points, the --amp rule, and
the package's one-way imports."""
from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHAPES_CONFIG, run_tool, tiny_train_overrides

from vggdet.cli import command, split_set_items
from vggdet.config import RuntimeConfig, load_config
from vggdet.errors import Interrupted, TrainingError
from vggdet.runtime import amp_dtype

TOOLS = {"train_det": "vggdet-train", "test_det": "vggdet-test", "infer": "vggdet-infer", "eval_det": "vggdet-eval",
         "compress_svd": "vggdet-svd", "browse_dataset": "vggdet-browse", "make_shapes": "vggdet-shapes",
         "plot_log": "vggdet-plot-log", "analyze_det": "vggdet-analyze", "export": "vggdet-export",
         "quantize": "vggdet-quantize"}


def test_wrapper_maps_errors_to_one_line_and_exit_status(capsys):
    def fails(exc):
        @command
        def main(argv=None):
            raise exc
        return main

    cases = [(ValueError("data/x.xml: bad box\ndetail"), 2), (FileNotFoundError("no such file: a.pth"), 2),
             (TrainingError("loss_cls is nan at iteration 3"), 1), (OSError("disk full"), 1),
             (KeyboardInterrupt(), 130), (Interrupted(signal.SIGTERM, "w/latest.pth"), 143)]
    for exc, code in cases:
        assert fails(exc)() == code, exc
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
    assert command(lambda argv=None: 0)() == 0


def test_set_items_never_swallow_positionals():
    assert split_set_items(["--set", "a.b=1", "cfg.py", "--amp"]) == ["cfg.py", "--amp", "--set", "a.b=1"]
    assert split_set_items(["x.pth", "--set=a=1", "--set", "b=[1, 2]", "c=x", "img.jpg"]) == \
        ["x.pth", "img.jpg", "--set", "a=1", "b=[1, 2]", "c=x"]
    assert split_set_items(["--out=d", "cfg.py"]) == ["--out=d", "cfg.py"]
    # in a real tool: the config after --set is still the config, so the error is about the bad key
    r = run_tool(["tools/train_det.py", "--set", "test.winograd=False", "train.lrr=0.1", SHAPES_CONFIG])
    warning, error = r.stderr.strip().splitlines()  # warnings too are one line, without echoed source
    assert r.returncode == 2 and "did you mean 'train.lr'" in error, r.stderr
    assert warning == ("warning: --set: config key 'test.winograd' is deprecated; use 'runtime.winograd' "
                       "(see vggdet/config.py)")


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_console_commands_run_the_tools(tool):
    exe = Path(sys.executable).parent / TOOLS[tool]
    if not exe.exists():
        pytest.skip(f"{exe.name} is not installed in this environment (pip install -e . installs it)")
    a, b = run_tool(["tools/" + tool + ".py", "--help"]), _run([str(exe), "--help"])
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and "usage:" in a.stdout  # the same parser, the same code


def test_console_command_bad_input_is_one_line(tmp_path):
    exe = Path(sys.executable).parent / "vggdet-test"
    if not exe.exists():
        pytest.skip("vggdet-test is not installed in this environment")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    r = _run([str(exe), str(tmp_path / "junk.pth")])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "junk.pth" in r.stderr, r.stderr



def test_shapes_checks_out_before_drawing(tmp_path, monkeypatch, capsys):
    # #24: `vggdet-shapes --out <a file>` drew every image, then failed with "[Errno 20] Not a directory"
    import vggdet.data.shapes as shapes
    from vggdet.cli.shapes import main

    def no_drawing(*args):
        raise AssertionError("an image was drawn before --out was checked")

    monkeypatch.setattr(shapes, "render_image", no_drawing)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    for out, why in (("a_file", "a file, not a folder"), ("full", "not empty"),
                     ("a_file/sub", "cannot write there (Not a directory)")):
        assert main(["--out", str(tmp_path / out), "--num", "20"]) == 2, out
        assert capsys.readouterr().err == f"error: --out {tmp_path / out}: {why}" + (
            "; give a new or empty folder\n" if out != "a_file/sub" else "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]  # no temp folders left behind

def test_amp_is_one_rule_for_every_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(RuntimeConfig(), cpu) is None and amp_dtype(RuntimeConfig(), cuda) is None
    on = RuntimeConfig(amp=True)
    assert amp_dtype(on, cpu) == torch.bfloat16 and amp_dtype(on, cuda) == torch.float16
    assert amp_dtype(RuntimeConfig(amp=True, amp_dtype="bfloat16"), cuda) == torch.bfloat16


def test_cpu_training_with_amp_runs_bf16(tmp_path):
    from vggdet.trainer import Trainer

    cfg = load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "runtime.amp=true", "runtime.device=cpu"))
    trainer = Trainer(cfg, str(tmp_path / "work"))
    assert trainer.dtype == torch.bfloat16 and not trainer.scaler.is_enabled()  # bf16 needs no loss scaling
    images, targets = next(iter(trainer.loader))
    losses = trainer.step(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(v == v and abs(v) < 1e3 for v in losses.values())  # finite


# ----------------------------------------------------------------------------------- one-way imports
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


def test_imports_run_one_way():
    """model <- data / evaluation <- dataset_eval / predictor <- trainer <- cli (and tools)."""
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): _vggdet_imports(p)
             for p in (ROOT / "vggdet").rglob("*.py")}
    assert len(graph) > 30

    def offenders(importer: str, forbidden: tuple) -> list:
        inside = [name for name in graph if name == importer or name.startswith(importer + ".")]
        assert inside, importer
        return sorted(m for name in inside for m in graph[name]
                      if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))

    user_facing = ("vggdet.predictor", "vggdet.cli", "vggdet.trainer", "vggdet.dataset_eval", "vggdet.media",
                   "vggdet.video")
    assert offenders("vggdet.model", ("vggdet.data", "vggdet.evaluation", "vggdet.checkpoint") + user_facing) == []
    assert offenders("vggdet.data", ("vggdet.model", "vggdet.evaluation") + user_facing) == []
    assert offenders("vggdet.evaluation", ("vggdet.model",) + user_facing) == []
    assert offenders("vggdet.dataset_eval", ("vggdet.predictor", "vggdet.trainer", "vggdet.cli")) == []
    assert offenders("vggdet.trainer", ("vggdet.predictor", "vggdet.cli", "vggdet.media", "vggdet.video")) == []
    # nothing but the tools and the package's lazy top-level export reaches the predictor
    users = sorted(name for name, deps in graph.items() if "vggdet.predictor" in deps)
    assert users == ["vggdet.__init__", "vggdet.cli.infer"], users
    assert not any(name.startswith("vggdet.") and name.split(".")[-1].startswith("test_") for name in graph)
    functions = [n.name for p in (ROOT / "vggdet").rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                 if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 100 and not [f for f in functions if f.startswith("test_")]
