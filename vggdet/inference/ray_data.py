"""Batch inference on Ray Data: images (local paths or URIs) streamed through a pool of actors, each holding
one predictor loaded once; the driver writes what the one-process run writes (vggdet/inference/images.py).

    rows (index, path, source)  --map_batches(actor pool: decode, predict, draw)-->  rows (index, record or
    error, COCO rows, annotated image)  -->  driver: annotated files as they arrive; detections.jsonl and
    detections_coco.json in input order (outputs.ResultsWriter); the summary (outputs.InferenceStats)

- Streaming: the rows hold paths, not pixels; an actor reads and decodes only the batch it is given, and
  Ray Data keeps a bounded number of blocks in flight, so the images are never all in memory at once.
- Input order: every row carries its input index; the driver writes a record as soon as every earlier one
  is written (`InOrder`), holding only the records that finished ahead of a slower one.
- Faults: a killed actor is restarted (`max_restarts`) and the batches it held are run again on the new one
  (`max_task_retries`), both set explicitly; every image still gets exactly one record.
- Any backend: the actors build their predictor from a `PredictorFactory` (model path + config overrides,
  `load_predictor`), so this module never names one; `--worker-cpus C` becomes `runtime.threads=C`.
- `predict_dataset_on_ray` / `evaluate_file_on_ray`: the same pool over a dataset's test split
  (tools/test_det.py --ray), scored by vggdet/inference/dataset.py's `score_detections`.

Ray is imported here only (the `ray` extra, `pip install 'vggdet[ray]'`); `ray_session` joins a cluster
(`ray start --head`, KubeRay) or starts a local instance sized to this machine's cores.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from vggdet.data.errors import DataError
from vggdet.data.image_io import decode_image, read_image
from vggdet.errors import first_line
from vggdet.inference.base import empty_detections, is_onnx_file, load_predictor
from vggdet.inference.images import is_uri, output_names
from vggdet.inference.outputs import (
    InferenceStats,
    ResultsWriter,
    coco_rows,
    detection_record,
    encode_image,
    predict_timed,
    safe_output,
    write_encoded,
    write_text,
    yolo_lines,
)

__all__ = ["RayClusterError", "PredictorFactory", "Workers", "InOrder", "ray_session", "run_images_on_ray",
           "predict_dataset_on_ray", "evaluate_file_on_ray"]

MAX_RESTARTS = 4  # how often one actor of the pool may be restarted after its process died
MAX_TASK_RETRIES = 4  # how often a batch held by a dead actor is run again


class RayClusterError(ValueError):
    """No Ray cluster at the given address, or Ray not installed; the message names the address."""


# ---------------------------------------------------------------------------------------------- cluster
@contextmanager
def ray_session(address: str = "local") -> Iterator[None]:
    """Ray for the duration of the block: "local" starts an instance on this machine (all its cores, no
    dashboard), anything else joins the cluster there ("auto", "HOST:PORT" of `ray start --head`,
    "ray://HOST:10001"). Left as it was when Ray was already initialised in this process (tests)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    _init(ray, address)
    try:
        yield
    finally:
        ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayClusterError("--ray needs Ray: pip install 'vggdet[ray]' (ray[data])") from None
    return ray


def _init(ray, address: str) -> None:
    quiet = dict(log_to_driver=False, logging_level="warning")  # worker output stays in the cluster's logs
    if address == "local":
        ray.init(include_dashboard=False, **quiet)  # Ray counts this machine's cores (and GPUs) itself
        return
    hostport = address.split("://", 1)[1] if address.startswith("ray://") else address
    if address != "auto" and not _answers(hostport):
        raise RayClusterError(f"--ray {address}: no Ray cluster answers there (start one with `ray start --head`, "
                              "or use --ray local)")
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayClusterError(f"--ray {address}: cannot join the Ray cluster ({first_line(e)})") from None


def _answers(hostport: str, timeout: float = 3.0) -> bool:
    """True when something accepts a TCP connection at HOST:PORT (ray.init would wait a minute to find out)."""
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"--ray {hostport}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Workers:
    """The actor pool: `count` actors (None: as many as the cluster's CPUs / GPUs hold), each with `cpus`
    CPUs (its predictor's threads) and `gpus` GPUs (fractions share one; > 0 runs the model on CUDA)."""

    count: Optional[int] = None
    cpus: float = 1.0
    gpus: float = 0.0

    def resolved(self) -> Workers:
        """`count` filled in from the cluster's resources now; a warning when the pool does not fit (yet)."""
        import ray

        total = ray.cluster_resources()
        have, need = ("GPU", self.gpus) if self.gpus > 0 else ("CPU", self.cpus)
        fits = int(total.get(have, 0) // need)
        count = self.count if self.count is not None else max(1, fits)
        if count > fits:
            warnings.warn(f"{count} Ray workers x {need:g} {have} = {count * need:g} {have}, but the cluster has "
                          f"{total.get(have, 0):g}: the pool waits for more nodes (an autoscaler) to start", stacklevel=2)
        return Workers(count, self.cpus, self.gpus)

    def pool(self, rows, actor: type, args: tuple, batch: int):
        """`rows` through a pool of `actor(*args)`: its size and resources, and restarts / retries set explicitly
        (bounded, so a model that kills its process on every batch ends the run instead of looping)."""
        import ray

        with warnings.catch_warnings():  # ray 2.60 deprecates these two as map_batches kwargs and has no named
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")  # parameter for them yet
            return rows.map_batches(actor, fn_constructor_args=args, batch_size=batch, batch_format="numpy",
                                    compute=ray.data.ActorPoolStrategy(size=self.count), num_cpus=self.cpus,
                                    num_gpus=self.gpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)


@dataclass(frozen=True)
class PredictorFactory:
    """What an actor needs to build its predictor: `load_predictor(path, device, config, overrides)`. The
    model file (and config) must be readable at `path` on every node (a shared filesystem)."""

    path: str
    config: Optional[str] = None
    overrides: tuple = ()
    device: Optional[str] = None

    def __call__(self):
        return load_predictor(self.path, self.device, self.config, list(self.overrides))

    def for_workers(self, workers: Workers) -> PredictorFactory:
        """The actors' factory: absolute paths, the device by the pool's GPUs, `runtime.threads` = its CPUs."""
        device = "cuda" if workers.gpus > 0 else "cpu"
        threads = [f"runtime.threads={max(1, round(workers.cpus))}"] if workers.gpus == 0 else []
        return PredictorFactory(os.path.abspath(self.path), self.config and os.path.abspath(self.config),
                                tuple(self.overrides) + tuple(threads), device)

    def describe(self) -> tuple:
        """(config, classes) of the model, read on the driver (a bad file fails here, in one line, before any
        actor starts): loaded on the CPU without the CPU-kernel conversion (no timing), then released."""
        skip = [] if is_onnx_file(self.path) else ["runtime.winograd=false"]  # the conversion is a .pth matter
        with load_predictor(self.path, "cpu", self.config, list(self.overrides) + skip) as predictor:
            return predictor.config, list(predictor.classes)


# ---------------------------------------------------------------------------------------------- actors
def _load(path: str, source: str):
    """The image at `source` (a local absolute path or a URI), errors naming `path` as the user gave it;
    a DataError is returned, not raised, so one bad file never stops its batch."""
    try:
        if not is_uri(source):
            return read_image(source, name=path)
        import pyarrow.fs

        fs, where = pyarrow.fs.FileSystem.from_uri(source)
        with fs.open_input_stream(where) as f:
            return decode_image(f.readall(), path)
    except DataError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any filesystem or decoder failure is reported per file
        return DataError(f"{path}: cannot read image ({first_line(e)})")


class _Predict:
    """An actor of the pool: its predictor, built once, and a few threads that read the batch's images."""

    def __init__(self, factory: PredictorFactory):
        self.predictor = factory()
        self.precision = self.predictor.precision_text()
        self.pool = ThreadPoolExecutor(max_workers=4)  # reads wait on the disk or the network, not the GIL

    def start(self, batch: dict, names: tuple, **more) -> tuple:
        """Read the batch's images -> (images, indices of those that loaded, the output columns: the rows'
        indices, the actor's precision, each failed image's error, `names` empty, `more` as given)."""
        images = list(self.pool.map(_load, batch["path"], batch["source"]))
        n = len(images)
        ok = [k for k, im in enumerate(images) if not isinstance(im, Exception)]
        out = {"index": np.asarray(batch["index"], np.int64), "precision": [self.precision] * n,
               "error": [str(im) if isinstance(im, Exception) else "" for im in images],
               **{name: [""] * n for name in names}, **more}
        return images, ok, out

    @staticmethod
    def finish(out: dict) -> dict:
        """The columns as Ray Data takes them (lists -> object arrays)."""
        return {k: np.asarray(v, dtype=object) if isinstance(v, list) else v for k, v in out.items()}


class DetectImages(_Predict):
    """Rows (index, path, source) -> rows (index, record JSON or error, COCO rows JSON, YOLO label lines,
    annotated image bytes, model seconds): what `run_images` produces for an image, computed where the
    predictor runs."""

    def __init__(self, factory: PredictorFactory, score_thr: Optional[float], keep: Optional[frozenset],
                 draw: bool, coco: bool, yolo: bool):
        super().__init__(factory)
        self.score_thr, self.keep, self.draw, self.coco, self.yolo = score_thr, keep, draw, coco, yolo

    def __call__(self, batch: dict) -> dict:
        from vggdet.inference.draw import draw_detections

        n = len(batch["index"])
        images, ok, out = self.start(batch, ("record", "coco", "yolo"), annotated=[b""] * n, model_s=np.zeros(n))
        if ok:
            dets, seconds = predict_timed(self.predictor, [images[k] for k in ok], self.score_thr, self.keep)
            for k, det in zip(ok, dets):
                path, (h, w) = str(batch["path"][k]), images[k].shape[:2]
                out["record"][k] = json.dumps(detection_record(path, w, h, det))
                out["model_s"][k] = seconds / len(ok)
                if self.coco:
                    out["coco"][k] = json.dumps(coco_rows(path, det, w, h))
                if self.yolo:
                    out["yolo"][k] = "".join(yolo_lines(det, w, h))
                if self.draw:
                    out["annotated"][k] = encode_image(path, draw_detections(images[k], det))
        return self.finish(out)


class DetectArrays(_Predict):
    """Rows (index, path, source) -> rows (index, error, boxes / labels / scores as raw float32 / int64 bytes):
    a dataset's detections exactly as `predict_dataset` gets them (no rounding), for scoring."""

    def __call__(self, batch: dict) -> dict:
        n = len(batch["index"])
        images, ok, out = self.start(batch, (), boxes=[b""] * n, labels=[b""] * n, scores=[b""] * n)
        if ok:
            for k, det in zip(ok, self.predictor.predict_batch([images[k] for k in ok])):
                out["boxes"][k] = det["boxes"].astype(np.float32).tobytes()
                out["labels"][k] = det["labels"].astype(np.int64).tobytes()
                out["scores"][k] = det["scores"].astype(np.float32).tobytes()
        return self.finish(out)


# ---------------------------------------------------------------------------------------------- driver
def _rows(paths: list, batch: int, workers: Workers):
    """The input rows as a Ray dataset, in blocks of whole batches: ~16 blocks per worker where there are enough
    images (so the pool shares the work evenly to the end and results flow back steadily), at most 16
    batches per block (so a retry redoes little, and the driver holds few records ahead of a slow block)."""
    import pyarrow as pa
    import ray

    n = len(paths)
    per_block = batch * max(1, min(16, n // max(1, batch * workers.count * 16)))
    sources = [p if is_uri(p) else os.path.abspath(p) for p in paths]  # the actors' working folder differs
    return ray.data.from_arrow([pa.table({"index": np.arange(i, min(n, i + per_block), dtype=np.int64),
                                          "path": paths[i:i + per_block], "source": sources[i:i + per_block]})
                                for i in range(0, n, per_block)])


def _batches(results) -> Iterator[dict]:
    """The pool's output blocks as they finish (numpy columns). A failure on the cluster (an actor that cannot
    load the model, a worker without vggdet) is one line: the error the worker raised."""
    from ray.exceptions import RayError

    try:
        yield from results.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    except RayError as e:
        raise RuntimeError(_worker_error(e)) from None


def _worker_error(e: Exception) -> str:
    """A Ray error's message as one line: the last line of the worker's traceback, the exception it raised."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line[:1].isspace()]
    cause = lines[-1] if lines else type(e).__name__
    hint = "; is vggdet installed on every node? (pip install 'vggdet[ray]')" if "No module named" in cause else ""
    return f"a Ray worker failed: {cause}{hint}"


@dataclass
class InOrder:
    """Items back in input order: `put(index, item)` hands on every item whose predecessors have all arrived
    (`emit(item)`); those that arrive early wait here. Ray never delivers a row twice (its retries replace
    lost work), but a duplicate would be counted and dropped, never written twice."""

    emit: object
    next: int = 0
    waiting: dict = field(default_factory=dict)
    duplicates: int = 0

    def put(self, index: int, item) -> None:
        if index < self.next or index in self.waiting:
            self.duplicates += 1
            return
        self.waiting[index] = item
        while self.next in self.waiting:
            self.emit(self.waiting.pop(self.next))
            self.next += 1

    def flush(self) -> None:
        """Hand on what has arrived, in order, past any gap (an interrupted run keeps its finished records)."""
        for index in sorted(self.waiting):
            self.emit(self.waiting.pop(index))


def run_images_on_ray(factory: PredictorFactory, paths: list, out_dir: str, workers: Workers = Workers(), *,
                      score_thr: Optional[float] = 0.5, keep: Optional[frozenset] = None, batch: int = 1,
                      draw: bool = True, coco: bool = False, yolo: bool = False,
                      classes: Optional[list] = None) -> InferenceStats:
    """`run_images` on a Ray actor pool (Ray must be initialised: `ray_session`): the same annotated copies,
    `detections.jsonl` (input order), COCO file and YOLO labels (`classes`: for classes.txt) in `out_dir`,
    and the counts for the summary. A file that cannot be read is one line on stderr and counted in
    `stats.failed`; the others still run. The workers' precision is said once on stderr, as one process says
    its own."""
    workers = workers.resolved()
    names = output_names(paths)
    results = workers.pool(_rows(paths, batch, workers), DetectImages,
                           (factory.for_workers(workers), score_thr, keep, draw, coco, yolo), batch)
    stats, said = InferenceStats(), set()
    with ResultsWriter(out_dir, coco) as writer:
        def write(item: Optional[tuple]) -> None:
            if item is not None:  # None: an image that failed
                writer.add(*item)

        ordered = InOrder(write)
        try:
            for out in _batches(results):
                _say_precision(out, said)
                for k, index in enumerate(out["index"].tolist()):
                    ordered.put(index, _collect(out, k, paths[index], out_dir, names, stats, yolo))
        except KeyboardInterrupt:
            ordered.flush()
            stats.interrupted = (f"interrupted: {writer.paths[0]} holds the {stats.images} finished images of "
                                 f"{len(paths)}")
        if ordered.duplicates:
            warnings.warn(f"Ray delivered {ordered.duplicates} image(s) twice; each was written once", stacklevel=2)
    stats.outputs += writer.paths
    if yolo:
        write_text(os.path.join(out_dir, "classes.txt"), [c + "\n" for c in classes or []])
    return stats


def _say_precision(out: dict, said: set) -> None:
    """"precision: ..." on stderr, once per distinct value the workers report (their devices may differ)."""
    for precision in set(out["precision"].tolist()) - said:
        said.add(precision)
        tqdm.write(f"precision: {precision} (Ray workers)", file=sys.stderr)


def _collect(out: dict, k: int, path: str, out_dir: str, names: dict, stats: InferenceStats,
             yolo: bool) -> Optional[tuple]:
    """Row k of an output block -> (record, COCO rows) to write in order (None for a failed image); counts it
    and writes its annotated copy and YOLO label file now."""
    if out["error"][k]:
        stats.fail(str(out["error"][k]))
        return None
    record = json.loads(out["record"][k])
    stats.images += 1
    stats.per_class.update(d["label"] for d in record["detections"])
    stats.image_model_s += float(out["model_s"][k])
    stats.image_model_n += 1
    if out["annotated"][k]:
        write_encoded(safe_output(out_dir, names[path], path), bytes(out["annotated"][k]))
    if yolo:
        write_text(os.path.join(out_dir, "labels", os.path.splitext(names[path])[0] + ".txt"), [out["yolo"][k]])
    return record, (json.loads(out["coco"][k]) if out["coco"][k] else None)


def predict_dataset_on_ray(factory: PredictorFactory, dataset, workers: Workers = Workers(), batch: int = 1,
                           skip_bad: bool = False) -> tuple:
    """`predict_dataset` on a Ray actor pool -> (detections, precision): numpy dicts for every image of
    `dataset` in dataset order, and what the workers ran. An unreadable image is a DataError naming it, or
    with `skip_bad` (data.skip_bad_images) a warning and no detections, as in one process."""
    workers = workers.resolved()
    paths = list(dataset.image_paths)
    results = workers.pool(_rows(paths, batch, workers), DetectArrays, (factory.for_workers(workers),), batch)
    dets: list = [None] * len(paths)
    precisions: set = set()
    for out in _batches(results):
        precisions.update(out["precision"].tolist())
        for k, index in enumerate(out["index"].tolist()):
            if out["error"][k]:
                if not skip_bad:
                    raise DataError(str(out["error"][k]))
                warnings.warn(f"{out['error'][k]}; skipped (skip_bad_images=True)", stacklevel=2)
                dets[index] = empty_detections()
                continue
            dets[index] = {"boxes": np.frombuffer(out["boxes"][k], np.float32).reshape(-1, 4),
                           "labels": np.frombuffer(out["labels"][k], np.int64),
                           "scores": np.frombuffer(out["scores"][k], np.float32)}
    missing = [i for i, d in enumerate(dets) if d is None]
    if missing:  # never expected: Ray returns every row or raises
        raise RuntimeError(f"Ray returned no detections for {len(missing)} image(s), e.g. {paths[missing[0]]}")
    return dets, " / ".join(sorted(precisions)) + " on the Ray workers"


def evaluate_file_on_ray(path: str, config: Optional[str] = None, overrides: Optional[list] = None,
                         results_dir: Optional[str] = None, analysis_dir: Optional[str] = None,
                         workers: Workers = Workers()):
    """`evaluate_file` with the predictions made on a Ray actor pool (Ray must be initialised): the same
    Evaluation, results files and metrics.json."""
    from vggdet.data import build_dataset
    from vggdet.inference.dataset import score_detections, write_metrics

    factory = PredictorFactory(path, config, tuple(overrides or ()))
    cfg, _ = factory.describe()
    if cfg.model.proposals != "rpn":
        raise ValueError(f"{path}: model.proposals={cfg.model.proposals!r}; a model with external proposals is "
                         "tested without --ray")
    dataset = build_dataset(cfg, "test")
    dets, precision = predict_dataset_on_ray(factory, dataset, workers, cfg.test.batch_size,
                                             cfg.data.skip_bad_images)
    result = score_detections(cfg, dataset, dets, results_dir, analysis_dir, precision=precision)
    if results_dir is not None:
        write_metrics(results_dir, result, path)
    return result
