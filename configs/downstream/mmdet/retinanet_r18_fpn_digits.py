# RetinaNet with mmbackbone's ResNet-18 (32 base channels, from scratch) on
# the embedded digits detection set: `make demo-det` trains and evaluates it.
# Strides 4/8/16 (the digits are 12-48 pixels), anchors 16-90 pixels.
_base_ = './digits_detection.py'

model = dict(
    type='RetinaNet',
    backbone=dict(
        type='mmbackbone.ResNet',
        depth=18,
        base_channels=32,
        stem_channels=32,
        out_indices=(0, 1, 2),
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[32, 64, 128],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=3),
    bbox_head=dict(
        type='RetinaHead',
        num_classes=10,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=2,
            ratios=[1.0, 2.0],
            strides=[4, 8, 16]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_decoded_bbox=True,
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.4,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100))
