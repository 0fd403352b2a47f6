# The embedded segmentation set: scikit-learn's 8x8 digits drawn on 128x128
# canvases, a label per pixel (0 background, 1-10 the digits 0-9), written
# in mmseg's layout (img_dir/, ann_dir/) under data_root on first use by
# mmbackbone.DigitsSegDataset. Everything but the model: a segmenter config
# inherits this file and adds `model`. Runs with mmseg's own
# tools/train.py and tools/test.py on mmcv-lite.
custom_imports = dict(
    imports=['mmbackbone', 'mmbackbone.mmcv_ops',
             'mmbackbone.datasets.downstream_mmseg'],
    allow_failed_imports=False)
default_scope = 'mmseg'

dataset_type = 'mmbackbone.DigitsSegDataset'
data_root = 'data/digits_seg/'
image_size = 128
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# 800 iterations of 16 images: AdamW, warm-up, poly decay.
max_iters = 800
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=60),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=60, end=max_iters,
         by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # checkpoints a killed run cannot leave half-written; at the end the
    # weights and meta alone are published as <last>-<sha256[:8]>.pth, a
    # file torch.load(weights_only=True) reads (mmengine's plain Runner in
    # test.py, DetInferencer / MMSegInferencer)
    checkpoint=dict(type='mmbackbone.AtomicCheckpointHook', by_epoch=False,
                    interval=max_iters,
                    published_keys=['meta', 'state_dict']),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends,
                  name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
# mmengine's Runner reads checkpoints with a bare torch.load, which refuses
# its own training checkpoints under torch >= 2.6 (weights_only): this one
# reads them checked and loads them strictly (load_from, --resume)
runner_type = 'mmbackbone.SafeLoadRunner'
load_from = None
resume = False
randomness = dict(seed=0)
