# A TorchScript file as the backbone. Make one first, e.g. a torchvision
# ResNet-18 without its classifier (outputs N x 512):
#
#   mkdir -p work_dirs/torchscript && python -c "import torch, torchvision; \
#   m = torchvision.models.resnet18(); m.fc = torch.nn.Identity(); \
#   torch.jit.save(torch.jit.script(m), 'work_dirs/torchscript/resnet18.pt')"
#
# then: python tools/train.py configs/torchscript/torchscript_digits.py
# (or --cfg-options model.backbone.path=YOUR_FILE.pt). Loading a TorchScript
# file runs the program inside it: use files you trust.
_base_ = [
    '../_base_/datasets/digits.py',
    '../_base_/schedules/digits_sgd.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[77.8] * 3,
                           std=[82.5] * 3, num_classes=10),
    backbone=dict(type='TorchScriptBackbone',
                  path='work_dirs/torchscript/resnet18.pt', nr_features=512),
    neck=None,
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512),
)
