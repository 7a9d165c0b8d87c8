# Faster R-CNN VGG16 on VOC 2007+2012 trainval -> VOC 2007 test.
# Published target (Ren et al. 2015, Table 3): 73.2 mAP on VOC07 test; not yet reproduced by this package.
model = dict(
    num_classes=20,
    backbone=dict(weights="IMAGENET1K_V1"),
)
data = dict(
    format="voc",
    root="data/VOCdevkit",
    train_sets=[["VOC2007", "trainval"], ["VOC2012", "trainval"]],
    test_sets=[["VOC2007", "test"]],
)
train = dict(epochs=8, lr_steps=[6])  # ~16.5k images: 8 epochs ~ 130k iterations at batch 1
test = dict(metric="voc07")
