# A DeiT-tiny sized ViT (192 dims, 12 layers) with 4x4 patches on the
# 32x32 digits: 64 tokens plus the class token.
_base_ = [
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_adamw.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='VisionTransformer', arch='deit-tiny', img_size=32,
                  patch_size=4, out_type='cls_token', drop_path_rate=0.1),
    neck=None,
    head=dict(type='LinearClsHead', num_classes=10, in_channels=192),
)
