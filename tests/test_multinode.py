"""Training on several machines: two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, gloo) train the weights
that one node with two processes trains; checkpoints come from global rank 0 only; --resume auto on every node;
Ray Train's TorchTrainer runs the same Trainer to the same weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHAPES_CONFIG, free_port, tiny_train_overrides

from vggdet.training.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 300


def _train_args(tmp_path: Path, work: Path, epochs: int, resume: bool) -> list:
    return ["tools/train_det.py", SHAPES_CONFIG, "--work-dir", str(work), "--device", "cpu",
            *(["--resume", "auto"] if resume else []),
            "--set", *tiny_train_overrides(tmp_path, f"train.epochs={epochs}")]


def _one_node(tmp_path: Path, work: Path, epochs: int, resume: bool = False) -> None:
    """torchrun --nproc_per_node 2 on one node."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), *_train_args(tmp_path, work, epochs, resume)],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]


def _two_nodes(tmp_path: Path, works: list, epochs: int, resume: bool = False) -> list:
    """torchrun --nnodes 2 --nproc_per_node 1, node_rank 0 and 1, each with its own --work-dir (no shared
    filesystem between the "machines"), meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(node), "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               endpoint, "--rdzv-id", "vggdet-test",
                               *_train_args(tmp_path, works[node], epochs, resume)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for node in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out + err for out, err in outs]


def _weights(path: Path) -> dict:
    return load_checkpoint(str(path))["model"]


def _checkpoints(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> tuple:
    """The data (made once) and a one-node two-process run of one epoch: (tmp folder, its work_dir, weights)."""
    from vggdet.config import load_config
    from vggdet.data.loader import build_dataset

    tmp_path = tmp_path_factory.mktemp("multinode")
    build_dataset(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path)), "train")
    _one_node(tmp_path, tmp_path / "one", epochs=1)
    return tmp_path, tmp_path / "one", _weights(tmp_path / "one" / "latest.pth")


def test_two_nodes_train_what_one_node_trains_and_resume_on_every_node(one_node):
    tmp_path, one, first = one_node
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    logs = _two_nodes(tmp_path, nodes, epochs=1)
    assert any("x2" in log for log in logs)  # the log names the world size
    # global rank 0 alone wrote: one node's folder holds the checkpoints, the other's nothing
    written = [n for n in nodes if _checkpoints(n)]
    assert len(written) == 1 and _checkpoints(written[0]) == _checkpoints(one) == ["best.pth", "epoch_1.pth",
                                                                                  "latest.pth"]
    assert not [p for p in nodes if p not in written and p.exists()]
    ckpt = load_checkpoint(str(written[0] / "latest.pth"))
    assert ckpt["iteration"] == 6  # 24 images / (2 per process x 2 processes)
    a, b = first, _weights(written[0] / "latest.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])][:3]
    # --resume auto on both nodes: the node without a latest.pth gets rank 0's copy, and both continue
    _one_node(tmp_path, one, epochs=2, resume=True)
    logs = _two_nodes(tmp_path, nodes, epochs=2, resume=True)
    assert any("resumed from" in log and "iteration 6" in log for log in logs)
    newest = max((n / "latest.pth" for n in nodes if (n / "latest.pth").exists()),
                 key=lambda p: load_checkpoint(str(p))["iteration"])
    assert load_checkpoint(str(newest))["iteration"] == load_checkpoint(str(one / "latest.pth"))["iteration"] == 12
    a, b = _weights(one / "latest.pth"), _weights(newest)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def ray_train_loop(config: dict) -> None:
    """What each Ray Train worker runs: vggdet's own Trainer (Ray Train has set up the process group)."""
    from vggdet.config import load_config
    from vggdet.training.trainer import train

    train(load_config(config["config"], config["overrides"]), config["work_dir"], resume="auto")


def test_ray_train_torch_trainer_runs_the_same_trainer(one_node):
    """Ray Train's TorchTrainer with 2 CPU workers on a local Ray instance trains torchrun's weights."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tmp_path, _, first = one_node
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    ray.init(num_cpus=2, object_store_memory=150 << 20, include_dashboard=False, logging_level="warning")
    try:
        result = TorchTrainer(
            ray_train_loop, scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
            train_loop_config={"config": SHAPES_CONFIG, "work_dir": str(tmp_path / "ray_train"),
                               "overrides": tiny_train_overrides(tmp_path, "train.epochs=1", "runtime.device=cpu")},
            run_config=RunConfig(storage_path=str(tmp_path / "ray_results"), name="vggdet")).fit()
    finally:
        ray.shutdown()
    assert result.error is None, result.error
    b = _weights(tmp_path / "ray_train" / "latest.pth")
    assert all(torch.equal(first[k], b[k]) for k in first), [k for k in first if not torch.equal(first[k], b[k])][:3]
