# The embedded detection set: scikit-learn's 8x8 digits drawn on 128x128
# canvases (1-4 per image, 10 classes, boxes and instance masks), written in
# COCO format under data_root on first use by mmbackbone.DigitsCocoDataset.
# Everything but the model: a detector config inherits this file and adds
# `model`. Runs with mmdet's own tools/train.py and tools/test.py on
# mmcv-lite: mmbackbone.mmcv_ops provides the compiled ops (NMS, RoIAlign).
custom_imports = dict(
    imports=['mmbackbone', 'mmbackbone.mmcv_ops',
             'mmbackbone.datasets.downstream_mmdet'],
    allow_failed_imports=False)
default_scope = 'mmdet'

# every digits detector normalises the dark canvases the same way; a model
# config adds its type, backbone, neck and heads
model = dict(
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[30.0, 30.0, 30.0],
        std=[60.0, 60.0, 60.0],
        bgr_to_rgb=True,
        pad_size_divisor=32))

dataset_type = 'mmbackbone.DigitsCocoDataset'
data_root = 'data/digits_det/'
image_size = 128
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    format_only=False)
test_evaluator = val_evaluator

# 8 epochs of 75 iterations: AdamW, warm-up, cosine decay.
max_epochs = 8
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         T_max=max_epochs, eta_min_ratio=0.01, convert_to_iter_based=True),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=16)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # checkpoints a killed run cannot leave half-written; at the end the
    # weights and meta alone are published as <last>-<sha256[:8]>.pth, a
    # file torch.load(weights_only=True) reads (mmengine's plain Runner in
    # test.py, DetInferencer / MMSegInferencer)
    checkpoint=dict(type='mmbackbone.AtomicCheckpointHook',
                    interval=max_epochs,
                    published_keys=['meta', 'state_dict']),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends,
                  name='visualizer')
log_processor = dict(type='LogProcessor', window_size=25, by_epoch=True)
log_level = 'INFO'
# mmengine's Runner reads checkpoints with a bare torch.load, which refuses
# its own training checkpoints under torch >= 2.6 (weights_only): this one
# reads them checked and loads them strictly (load_from, --resume)
runner_type = 'mmbackbone.SafeLoadRunner'
load_from = None
resume = False
randomness = dict(seed=0)
