"""Detection data: VOC / COCO / YOLO / CSV / LabelMe / generated shapes datasets, augmentation and loaders."""
from .base import ConcatDetection, DetectionDataset
from .coco import COCODetection
from .csvfile import CSVDetection
from .errors import DataError
from .labelme import LabelMeDetection
from .loader import build_dataloader, build_dataset, check_data
from .proposals import load_proposals
from .shapes import SHAPES_CLASSES, make_shapes
from .voc import VOC_CLASSES, VOCDetection
from .yolo import YOLODetection

__all__ = [
    "DataError", "VOCDetection", "VOC_CLASSES", "COCODetection", "YOLODetection", "CSVDetection",
    "LabelMeDetection", "ConcatDetection", "DetectionDataset", "build_dataset", "build_dataloader",
    "check_data", "load_proposals", "make_shapes", "SHAPES_CLASSES",
]
