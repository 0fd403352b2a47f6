# ResNet-18 trained from scratch on the handwritten digits (make demo):
#   python tools/train.py configs/resnet/resnet18_digits.py
_base_ = [
    '../_base_/models/resnet18_digits.py',
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_sgd.py',
    '../_base_/default_runtime.py',
]
