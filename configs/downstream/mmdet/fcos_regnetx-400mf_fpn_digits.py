# FCOS (anchor-free) with mmbackbone's RegNetX-400MF (from scratch) on the
# embedded digits detection set. Strides 4/8/16; each level regresses the
# digits of its size range.
_base_ = './digits_detection.py'

model = dict(
    type='FCOS',
    backbone=dict(
        type='mmbackbone.RegNet',
        arch='regnetx_400mf',
        out_indices=(0, 1, 2),
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[32, 64, 160],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_output',
        num_outs=3,
        relu_before_extra_convs=True),
    bbox_head=dict(
        type='FCOSHead',
        num_classes=10,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        strides=[4, 8, 16],
        regress_ranges=((-1, 12), (12, 24), (24, 1e8)),
        norm_on_bbox=True,
        centerness_on_reg=True,
        center_sampling=True,
        conv_bias=True,
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100))
