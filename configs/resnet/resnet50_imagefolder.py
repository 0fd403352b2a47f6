# ResNet-50 on your own images (data/my_dataset/{train,val}/<class>/*):
#   python tools/train.py configs/resnet/resnet50_imagefolder.py \
#       --cfg-options model.head.num_classes=NUM_CLASSES
# Start from ImageNet weights with e.g.
#   model.backbone.init_cfg.type=Pretrained \
#   model.backbone.init_cfg.checkpoint=resnet50.pth
_base_ = [
    '../_base_/datasets/image_folder.py',
    '../_base_/schedules/imagenet_sgd_100e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    # ImageNet statistics; the images are RGB already (PIL).
    data_preprocessor=dict(type='ClsDataPreprocessor',
                           mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375]),
    backbone=dict(type='ResNet', depth=50, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=1000, in_channels=2048),
)
