# CSPResNet-50 on the digits. CSPDarkNet (depth=53, 1024 channels) and
# CSPResNeXt (depth=50, 2048 channels) drop in the same way.
_base_ = [
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_sgd.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='CSPResNet', depth=50),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=1024),
)
optim_wrapper = dict(optimizer=dict(lr=0.05))
