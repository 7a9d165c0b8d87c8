# Faster R-CNN VGG16 on Pascal VOC 2007: trainval -> test, the papers' recipe (defaults in vggdet/config.py).
# Published target (Ren et al. 2015, Table 3): 69.9 mAP on VOC07 test; not yet reproduced by this package.
# Point at your data with: --set data.root=/path/to/VOCdevkit
# Offline? Use a local torchvision VGG16 file: --set model.backbone.weights=/path/vgg16-397923af.pth
model = dict(
    num_classes=20,
    backbone=dict(weights="IMAGENET1K_V1"),
)
data = dict(
    format="voc",
    root="data/VOCdevkit",
    train_sets=[["VOC2007", "trainval"]],
    test_sets=[["VOC2007", "test"]],
)
train = dict(epochs=14, lr_steps=[10])  # 70k iterations at batch 1 on 5,011 images, step at 50k
test = dict(metric="voc07")
