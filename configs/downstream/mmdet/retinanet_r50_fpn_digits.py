# RetinaNet with mmbackbone's ResNet-50 (standard widths, from scratch) on
# the embedded digits detection set: the CNN reference for the ViT pyramid
# detectors (retinanet_deit-s_pyramid_digits.py,
# retinanet_dinov2-s-timm_pyramid_digits.py), same head and schedule.
_base_ = './retinanet_r18_fpn_digits.py'

model = dict(
    backbone=dict(
        depth=50,
        base_channels=64,
        stem_channels=64,
        out_indices=(0, 1, 2)),
    neck=dict(in_channels=[256, 512, 1024]))
