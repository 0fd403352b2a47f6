# RetinaNet with a plain DeiT-S (mmbackbone's VisionTransformer, from
# scratch) made into a feature pyramid by mmbackbone.PyramidBackbone
# (ViTDet's simple pyramid from the last map), on the embedded digits set.
#
# Patch size: DeiT-S's patch 16 leaves an 8x8 grid on these 128x128 images,
# coarser than the smallest digits (12 pixels); patch 8 gives a 16x16 grid
# at stride 8 (257 tokens). The pyramid rescales that map by 2, 1 and 0.5
# into strides 4/8/16, the levels of retinanet_r18_fpn_digits.py, with the
# same anchors and head. (For ImageNet DeiT-S weights keep patch_size=16 and
# use scales=(4.0, 2.0, 1.0) for the same strides.)
_base_ = './retinanet_r18_fpn_digits.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmbackbone.PyramidBackbone',
        backbone=dict(
            type='VisionTransformer',
            arch='deit-small',
            img_size=128,
            patch_size=8,
            out_type='featmap',
            drop_path_rate=0.1,
            init_cfg=None),
        mode='last',
        scales=(2.0, 1.0, 0.5),
        out_indices=(0, 1, 2),
        out_channels=128,
        norm_cfg=dict(type='LN2d', eps=1e-6),
        init_cfg=None),
    neck=dict(in_channels=[128, 128, 128]))
