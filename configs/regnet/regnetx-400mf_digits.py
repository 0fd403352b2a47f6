# RegNetX-400MF on the digits (stride-32 output: 1x1 at 32x32 inputs).
_base_ = [
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_sgd.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='RegNet', arch='regnetx_400mf'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=384),
)
