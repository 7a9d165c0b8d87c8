# Faster R-CNN VGG16 on a dataset in the Ultralytics YOLO layout: data.yaml, images/, labels/ (docs/data.md).
# Classes are data.yaml's `names`; the test split is its `test` when present, else `val`.
# Point at your copy: --set data.root=/path/to/data.yaml (or the folder holding data.yaml)
model = dict(
    num_classes=3,  # len(names) in data.yaml
    backbone=dict(weights="IMAGENET1K_V1"),  # or a local torchvision vgg16 .pth path; null = from scratch
)
data = dict(
    format="yolo",
    root="data/bccd_yolo/data.yaml",
    keep_background=True,  # images with an empty or no label file train as negatives (the YOLO default)
)
train = dict(epochs=20, lr_steps=[15], warmup_iters=200)
test = dict(metric="voc07")
