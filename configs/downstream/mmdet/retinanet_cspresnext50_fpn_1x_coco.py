# RetinaNet with mmbackbone's CSPResNeXt-50 in mmdet 3.x: the ResNet-50
# RetinaNet of this folder with the backbone swapped. Train with mmdet's tool:
#   python $(python -c "import mmdet, os; print(os.path.dirname(mmdet.__file__))")/.mim/tools/train.py \
#       configs/downstream/mmdet/retinanet_cspresnext50_fpn_1x_coco.py
# Stages 2-4 (out_indices 1, 2, 3; strides 8, 16, 32) feed the FPN.
# Set backbone.init_cfg to your ImageNet checkpoint, e.g.
#   init_cfg=dict(type='Pretrained', checkpoint='cspresnext50.pth', prefix='backbone')
# (mmpretrain classifier checkpoints and timm's cspresnext50 both load).
_base_ = './retinanet_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmbackbone.CSPResNeXt',
        depth=50,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=None),
    neck=dict(in_channels=[512, 1024, 2048], start_level=0))
