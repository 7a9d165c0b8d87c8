"""The network: `build_detector(cfg)` -> `FasterRCNN` (detector.py), its stages (transform, backbone, rpn,
roi_head), box maths (boxes, nms) and the CPU conversions (winograd, tta). Imports nothing but torch,
torchvision and the config."""
