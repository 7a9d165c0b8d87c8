"""From config to batches: `check_data(cfg)` (fail early), `build_dataset(cfg, split)` and
`build_dataloader(cfg, split, ...)`.

The loader yields `(images, targets)`: images a list of uint8 [3, H, W] RGB tensors (the model converts
to float; 4x less host->GPU traffic), targets a list of dicts with `boxes` float32 [N, 4] xyxy, `labels`
int64 [N], optional `proposals` float32 [M, 4], plus `image_id`, `orig_size` (h, w) and `index` (the
dataset index). Call `loader.set_epoch(epoch)` before each epoch: the order (and augmentation seeds) are a
function of (seed, epoch) only, so a resumed run sees exactly the batches the uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import Config, DataConfig
from .base import ConcatDetection
from .coco import COCODetection
from .csvfile import CSVDetection, csv_class_names
from .errors import DataError
from .labelme import LabelMeDetection, labelme_class_names
from .proposals import load_proposals
from .shapes import SHAPES_CLASSES, ensure_shapes
from .transforms import build_transform
from .voc import VOCDetection
from .yolo import YOLODetection, find_yolo_yaml, load_yolo_yaml

__all__ = ["check_data", "build_dataset", "build_dataloader", "DetectionLoader", "GroupedBatchSampler",
           "collate", "keep_background"]


def check_data(cfg: Config) -> None:
    """Fail early, in one line, when the configured data is not where the config says."""
    d = cfg.data
    if d.format == "shapes":
        return  # generated on first use
    paths, hint = _data_paths(d)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"data not found: {missing[0]} (data.root={d.root!r} in {cfg.source}); "
                        f"point the config at your copy with --set {hint}")
    if d.format == "yolo":
        load_yolo_yaml(paths[0])  # names and split folders / lists: a DataError naming the yaml


def _data_paths(d: DataConfig) -> tuple:
    """(paths that must exist, the --set hint) for the configured format."""
    if d.format == "voc":
        folders = [os.path.join(d.root, sub) for sub, _ in d.train_sets + d.test_sets]
        return folders, "data.root=/path/to/VOCdevkit"
    if d.format == "coco":
        files = (d.train_images, d.train_ann, d.test_images, d.test_ann)
        return [os.path.join(d.root, p) for p in files], "data.root=/path/to/coco"
    if d.format == "yolo":
        return [find_yolo_yaml(d.root)], "data.root=/path/to/data.yaml"
    split = "train.csv" if d.format == "csv" else "train_json_folder"
    return ([os.path.join(d.root, p) for p in (d.train_ann, d.test_ann)],
            f"data.root=/path/to/dataset data.train_ann={split} data.test_ann=...")


def keep_background(d: DataConfig) -> bool:
    """data.keep_background, or the format's default when None (see DataConfig)."""
    if d.keep_background is not None:
        return d.keep_background
    return not d.coco_skip_empty if d.format == "coco" else True


def build_dataset(cfg: Config, split: str):
    """split "train" (augmented; background images dropped unless keep_background) or "test" (no
    augmentation; every image)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d, train = cfg.data, split == "train"
    transform = build_transform(d.augment, train, seed=cfg.train.seed)
    prop_file = d.proposals_file if train else (d.proposals_test_file or d.proposals_file)
    proposals = load_proposals(prop_file, d.proposals_top_n) if prop_file else None
    common = dict(skip_bad_images=d.skip_bad_images, transform=transform, proposals=proposals)
    drop = train and not keep_background(d)
    if d.format == "coco":
        images, ann = (d.train_images, d.train_ann) if train else (d.test_images, d.test_ann)
        return COCODetection(os.path.join(d.root, images), os.path.join(d.root, ann), train=train,
                             skip_empty=drop, **common)
    common["skip_unknown_classes"] = d.skip_unknown_classes
    if d.format == "voc" or d.format == "shapes":
        parts = _voc_parts(d, train, common)
    else:
        parts = [_file_dataset(d, train, common)]
    if drop:
        for part in parts:
            part.drop_background()
    return parts[0] if len(parts) == 1 else ConcatDetection(parts)


def _voc_parts(d: DataConfig, train: bool, common: dict) -> list:
    common = dict(use_difficult=d.use_difficult, **common)
    if d.format == "shapes":
        ensure_shapes(d.root, d.shapes_num_train, d.shapes_num_test, d.shapes_size, d.shapes_seed)
        return [VOCDetection(d.root, "trainval" if train else "test", classes=SHAPES_CLASSES, **common)]
    sets = d.train_sets if train else d.test_sets
    return [VOCDetection(os.path.join(d.root, sub), s, classes=d.classes, **common) for sub, s in sets]


def _file_dataset(d: DataConfig, train: bool, common: dict):
    """YOLO (test split: the yaml's `test` when present, else `val`), CSV or LabelMe."""
    classes = d.classes if isinstance(d.classes, list) else None  # None / "auto": named by the data
    if d.format == "yolo":
        yaml_path = find_yolo_yaml(d.root)
        split = "train" if train else ("test" if "test" in load_yolo_yaml(yaml_path) else "val")
        return YOLODetection(yaml_path, split, classes=classes, **common)
    reader, names = ((CSVDetection, csv_class_names) if d.format == "csv"
                     else (LabelMeDetection, labelme_class_names))
    train_path = os.path.join(d.root, d.train_ann)
    if classes is None and not train:  # the test split takes the train split's classes
        classes = names(train_path)
    return reader(train_path if train else os.path.join(d.root, d.test_ann), classes=classes, **common)


def collate(batch: list) -> tuple:
    images, targets = [], []
    for img, t in batch:
        images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        out = {"boxes": torch.from_numpy(t["boxes"]).float().reshape(-1, 4),
               "labels": torch.from_numpy(t["labels"]).long(),
               "image_id": t["image_id"], "orig_size": tuple(t["orig_size"]), "index": int(t["index"])}
        if "proposals" in t:
            out["proposals"] = torch.from_numpy(t["proposals"]).float().reshape(-1, 4)
        targets.append(out)
    return images, targets


class SeededSampler(Sampler):
    """Random (train) or sequential order that depends only on (seed, epoch), like DistributedSampler."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ShardSampler(Sampler):
    """Test-time distributed sharding without padding: rank r gets r, r + world, ...; every image exactly
    once over all ranks (unlike DistributedSampler, which repeats images to even out the shards)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GroupedBatchSampler(Sampler):
    """Batches whose images share a group (0 = landscape w >= h, 1 = portrait), so padding to a common
    size wastes little. Yields exactly ceil(len(sampler) / batch_size) batches per epoch (equal on every
    rank): a group's last incomplete batch is topped up with repeats from that group, and when fewer
    batches are due than incomplete groups remain, the smallest remainder waits for the next epoch."""

    def __init__(self, sampler: Sampler, group_ids: list, batch_size: int) -> None:
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start`: leave out the epoch's first batches (a resume mid-epoch) without loading them."""
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return self._full_len() - self.start

    def _full_len(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list]:
        for n, batch in enumerate(self._batches()):
            if n >= self.start:
                yield batch

    def _batches(self) -> Iterator[list]:
        buffers: dict = {}
        seen: dict = {}
        done = 0
        for i in self.sampler:
            g = self.group_ids[i]
            buffers.setdefault(g, []).append(i)
            seen.setdefault(g, []).append(i)
            if len(buffers[g]) == self.batch_size:
                yield buffers.pop(g)
                done += 1
        for g, buf in sorted(buffers.items(), key=lambda kv: -len(kv[1])):
            if done >= self._full_len():
                break
            pool = seen[g]
            yield buf + [pool[k % len(pool)] for k in range(self.batch_size - len(buf))]
            done += 1


class DetectionLoader(DataLoader):
    """A DataLoader whose order and augmentation are reproducible from (seed, epoch): call set_epoch."""

    def __init__(self, dataset, batch_sampler: Sampler, seed: int, **kwargs) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                         worker_init_fn=_seed_worker, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order and augmentation seeds for `epoch`; `start_batch` skips that many batches unloaded."""
        self.epoch = epoch
        self.batch_sampler.set_epoch(epoch, start_batch)
        self.generator.manual_seed(self.seed * 100003 + epoch)  # workers' base seed for this epoch

    def __iter__(self):
        transform = getattr(self.dataset, "transform", None)
        if self.num_workers == 0 and transform is not None:  # no workers: seed the in-process transform
            transform.set_seed(self.seed * 100003 + self.epoch)
        return super().__iter__()


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_seed(torch.initial_seed() % 2**32)  # distinct per worker, fixed by (seed, epoch)


def build_dataloader(cfg: Config, split: str, distributed: bool = False, dataset=None,
                     seed: Optional[int] = None) -> DetectionLoader:
    """Train: shuffled, aspect-grouped batches of data.batch_size (DistributedSampler when distributed).
    Test: in order, batches of test.batch_size, sharded without duplicates when distributed."""
    dataset = dataset if dataset is not None else build_dataset(cfg, split)
    seed = cfg.train.seed if seed is None else seed
    train = split == "train"
    if distributed:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        if train:
            sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed)
        else:
            sampler = ShardSampler(len(dataset), rank, world)
    else:
        sampler = SeededSampler(len(dataset), shuffle=train, seed=seed)
    batch_size = cfg.data.batch_size if train else cfg.test.batch_size
    if train and batch_size > 1 and cfg.data.aspect_grouping:
        groups = [int(h > w) for h, w in (dataset.image_size(i) for i in range(len(dataset)))]
    else:
        groups = [0] * len(dataset)  # one group: plain batches in sampler order
    return DetectionLoader(dataset, GroupedBatchSampler(sampler, groups, batch_size), seed,
                           num_workers=cfg.data.num_workers,
                           pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),  # else a warning
                           persistent_workers=False)
