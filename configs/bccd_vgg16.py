# Faster R-CNN VGG16 on BCCD (blood-cell microscope photos, 640x480), a custom dataset in VOC layout:
# VOC2007/{Annotations,JPEGImages,ImageSets/Main} with its own 3-class list.
# Point at your copy: --set data.root=/path/to/bccd/VOCdevkit
model = dict(
    num_classes=3,
    backbone=dict(weights="IMAGENET1K_V1"),  # or a local torchvision vgg16 .pth path; null = from scratch
    input=dict(min_size=480, max_size=640),  # BCCD images are 640x480: keep their native scale
)
data = dict(
    format="voc",
    root="data/bccd/VOCdevkit",
    train_sets=[["VOC2007", "trainval"]],
    test_sets=[["VOC2007", "test"]],
    classes=["RBC", "WBC", "Platelets"],  # case-sensitive, as in the XML
)
train = dict(epochs=20, lr_steps=[15], warmup_iters=200)  # 292 images: ~5.8k iterations at batch 1
test = dict(metric="voc07")
