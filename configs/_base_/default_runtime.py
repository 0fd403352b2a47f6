# Runtime shared by every config: mmengine Runner settings, scope mmbackbone.
default_scope = 'mmbackbone'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # Logs loss, lr and the ETA every `interval` iterations.
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Keeps the last two epoch checkpoints (and `last_checkpoint` for --resume).
    # Atomic: written to <name>.part, then renamed (a killed run loses nothing).
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
# Refuse a work dir that is unwritable or too full; stop on a NaN/Inf loss.
custom_hooks = [dict(type='WorkDirCheckHook'), dict(type='NonFiniteLossHook')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # gloo trains on CPU (torchrun ... --launcher pytorch); use nccl on GPUs.
    dist_cfg=dict(backend='gloo'),
)

# scalars.json in <work_dir>/<timestamp>/vis_data: tools/analysis/plot_curves.py
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)

log_processor = dict(by_epoch=True, window_size=10)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
