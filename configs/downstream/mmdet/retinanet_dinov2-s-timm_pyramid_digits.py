# RetinaNet with timm's DINOv2-S architecture (vit_small_patch14_dinov2:
# layer scale, 384 channels, 12 blocks; from scratch) behind
# mmbackbone.TIMMBackbone, made into a feature pyramid by
# mmbackbone.PyramidBackbone (ViTDet's simple pyramid from the last map).
#
# timm takes the patch and image size as model arguments: patch 16 on
# 128x128 images gives the 8x8 grid of retinanet_deit-s_pyramid_digits.py,
# and the same strides 4/8/16, anchors, head and schedule. (With DINOv2
# weights, timm resamples the patch-14 embedding to patch 16 on load.)
_base_ = './retinanet_deit-s_pyramid_digits.py'

model = dict(
    backbone=dict(
        backbone=dict(
            _delete_=True,
            type='mmbackbone.TIMMBackbone',
            model_name='vit_small_patch14_dinov2',
            pretrained=False,
            patch_size=16,
            img_size=128,
            dynamic_img_size=True,
            drop_path_rate=0.1)))
