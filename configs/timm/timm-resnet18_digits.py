# Any timm model as the backbone: here timm's resnet18 (last feature level).
# Swap model_name for another timm model (timm.list_models()) and set the
# head's in_channels to its out_channels (or leave in_channels out).
_base_ = [
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_sgd.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='TIMMBackbone', model_name='resnet18',
                  features_only=True, out_indices=(-1, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512),
)
