"""The tools as commands: one error wrapper, one --set rule, console entry points, the --amp rule, and
the package's one-way imports."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHAPES_CONFIG, run_tool

from vggdet.cli import command, split_set_items
from vggdet.errors import Interrupted, TrainingError

TOOLS = {"train_det": "vggdet-train", "test_det": "vggdet-test", "infer": "vggdet-infer", "eval_det": "vggdet-eval",
         "compress_svd": "vggdet-svd", "browse_dataset": "vggdet-browse", "make_shapes": "vggdet-shapes",
         "plot_log": "vggdet-plot-log", "analyze_det": "vggdet-analyze", "export": "vggdet-export",
         "quantize": "vggdet-quantize", "serve": "vggdet-serve"}


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
    # the same parser and code; the usage line names the command that was run
    assert a.stdout.startswith(f"usage: {tool}.py") and b.stdout.startswith(f"usage: {TOOLS[tool]}")
    assert " ".join(a.stdout.split()[2:]) == " ".join(b.stdout.split()[2:])


def test_help_answers_without_importing_torch():
    """--help parses before any heavy import (torch alone takes seconds to import on these machines)."""
    code = ("import importlib, sys\n"
            f"for name in {sorted(TOOLS)!r}:\n"
            "    module = importlib.import_module('vggdet.cli.' + {'train_det': 'train', 'test_det': 'test', "
            "'eval_det': 'eval', 'compress_svd': 'svd', 'browse_dataset': 'browse', 'make_shapes': 'shapes', "
            "'analyze_det': 'analyze'}.get(name, name))\n"
            "    try:\n"
            "        module.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "    heavy = [m for m in ('torch', 'cv2', 'onnx', 'matplotlib', 'albumentations', 'fastapi', 'uvicorn',"
            "             'ray') if m in sys.modules]\n"
            "    assert not heavy, (name, heavy)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


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
