# UperNet with mmbackbone's ResNetV1c-18 (32 base channels, from scratch) on
# the embedded digits segmentation set: `make demo-seg` trains and evaluates
# it. Four stages (strides 4-32) feed UPerHead, stage 3 the auxiliary head.
_base_ = './digits_segmentation.py'

norm_cfg = dict(type='BN', requires_grad=True)
# background is ~92 % of the pixels: at weight 1 the model learns to
# predict background everywhere first (mIoU 0.08 after 800 iterations)
class_weight = [0.2] + [1.0] * 10
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[30.0, 30.0, 30.0],
        std=[60.0, 60.0, 60.0],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(128, 128)),
    backbone=dict(
        type='mmbackbone.ResNetV1c',
        depth=18,
        base_channels=32,
        stem_channels=32,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        init_cfg=None),
    decode_head=dict(
        type='UPerHead',
        in_channels=[32, 64, 128, 256],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=11,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
            class_weight=class_weight)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=128,
        in_index=2,
        channels=64,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=11,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4,
            class_weight=class_weight)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
