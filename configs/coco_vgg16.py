# Faster R-CNN VGG16 on COCO train2017 -> val2017 (COCO mAP@[.5:.95]).
model = dict(
    num_classes=80,
    backbone=dict(weights="IMAGENET1K_V1"),
    rpn=dict(anchor_scales=[4, 8, 16, 32]),  # COCO has many small objects (the paper adds 64^2 anchors)
)
data = dict(
    format="coco",
    root="data/coco",
    train_images="train2017",
    train_ann="annotations/instances_train2017.json",
    test_images="val2017",
    test_ann="annotations/instances_val2017.json",
    classes=None,  # taken from the annotation file's categories
)
train = dict(epochs=12, lr_steps=[8, 11], lr=0.0005)
test = dict(metric="coco")
