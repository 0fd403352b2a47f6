# RetinaNet with a plain DeiT-S (mmbackbone's VisionTransformer, from
# scratch) made into a feature pyramid by mmbackbone.PyramidBackbone
# (ViTDet's simple pyramid from the last map), on the embedded digits set.
#
# Patch 16 leaves an 8x8 grid (65 tokens) on these 128x128 images; the
# pyramid rescales that stride-16 map by 4, 2 and 1 into strides 4/8/16, the
# levels of retinanet_r18_fpn_digits.py, with the same anchors, head and
# schedule. (Patch 8 would give a 16x16 grid but 4.5x the compute.)
# retinanet_r50_fpn_digits.py is the CNN reference at the same schedule.
_base_ = './retinanet_r18_fpn_digits.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmbackbone.PyramidBackbone',
        backbone=dict(
            type='VisionTransformer',
            arch='deit-small',
            img_size=128,
            patch_size=16,
            out_type='featmap',
            drop_path_rate=0.1,
            init_cfg=None),
        mode='last',
        scales=(4.0, 2.0, 1.0),
        out_indices=(0, 1, 2),
        out_channels=128,
        norm_cfg=dict(type='LN2d', eps=1e-6),
        init_cfg=None),
    neck=dict(in_channels=[128, 128, 128]))
