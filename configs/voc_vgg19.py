# Faster R-CNN VGG19 on Pascal VOC 2007: configs/voc_vgg16.py with the deeper VGG of the VGG paper
# (configuration E: 16 conv layers, conv3_4 / conv4_4 / conv5_4 added). Inference on the CPU measured
# 1.10x the time of VGG16 (benchmarks/bench_infer.py --variants vggdet,vgg19; docs/benchmarks.md).
# Offline? A local torchvision VGG19 file: --set model.backbone.weights=/path/vgg19-dcbb9e9d.pth
model = dict(
    num_classes=20,
    backbone=dict(depth=19, weights="IMAGENET1K_V1"),
)
data = dict(
    format="voc",
    root="data/VOCdevkit",
    train_sets=[["VOC2007", "trainval"]],
    test_sets=[["VOC2007", "test"]],
)
train = dict(epochs=14, lr_steps=[10])
test = dict(metric="voc07")
