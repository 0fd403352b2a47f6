# retinanet_deit-s_pyramid_digits.py with layer scale in every block (each
# residual branch starts scaled by 1e-5, as in DeiT III and DINOv2): the one
# change that separates the DeiT-S and DINOv2-S rows of the ViT comparison
# in docs/downstream.md. Same data, head, anchors and schedule.
_base_ = './retinanet_deit-s_pyramid_digits.py'

model = dict(backbone=dict(backbone=dict(layer_scale_init_value=1e-5)))
