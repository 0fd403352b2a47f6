# ResNet-18 classifier for 32x32 inputs (10 classes). With the standard
# stride-4 stem the four stages give 8x8, 4x4, 2x2 and 1x1 maps.
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='ResNet', depth=18, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)),
)
