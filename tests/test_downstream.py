"""Our backbones inside the real mmdet 3.3 / mmseg 1.2, on mmcv-lite.

The downstream configs in configs/downstream/ are loaded whole, built
through ``mmdet.registry.MODELS`` / ``mmseg.registry.MODELS`` under their
own default scope, initialised from a checkpoint made from our backbone,
and trained for one loss step on CPU.
"""
import math
from pathlib import Path

import pytest
import torch

from helpers_downstream import install_mmcv_ops, save_backbone_checkpoint

install_mmcv_ops()  # before anything imports mmcv.ops

import mmdet.models  # noqa: E402,F401
import mmseg.models  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import InstanceData, PixelData  # noqa: E402

from mmbackbone.apis import check_config_types  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MMDET_CONFIGS = {
    'retinanet_cspresnext50_fpn_1x_coco.py': dict(type='CSPResNeXt',
                                                  depth=50),
    'retinanet_r50_fpn_1x_coco.py': dict(type='ResNet', depth=50),
}
MMSEG_CONFIG = 'upernet_regnetx-4.0gf_512x512_160k_ade20k.py'
SIZE = 128


def _load(kind: str, name: str) -> Config:
    cfg = Config.fromfile(str(ROOT / 'configs' / 'downstream' / kind / name))
    check_config_types(cfg.to_dict())
    return cfg


def _with_checkpoint(cfg: Config, backbone_cfg: dict, tmp_path) -> dict:
    path = tmp_path / 'backbone.pth'
    state = save_backbone_checkpoint(backbone_cfg, path)
    cfg.model.backbone.init_cfg = dict(type='Pretrained',
                                       checkpoint=str(path),
                                       prefix='backbone')
    return {k[len('backbone.'):]: v for k, v in state.items()}


def _assert_loaded(backbone, expected: dict) -> None:
    state = backbone.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0,
                                   msg=f'{key} was not loaded')


def _step(model, data: dict) -> dict:
    model.train()
    batch = model.data_preprocessor(data, training=True)
    losses = model(**batch, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert math.isfinite(loss.item()), log_vars
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()
             if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all()
                         for g in grads)
    return log_vars


def _image() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, SIZE, SIZE), generator=gen,
                         dtype=torch.uint8)


@pytest.mark.parametrize('name', sorted(MMDET_CONFIGS))
def test_retinanet_with_our_backbone_trains_a_step(name, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    cfg = _load('mmdet', name)
    assert cfg.model.backbone.type.startswith('mmbackbone.')
    expected = _with_checkpoint(cfg, MMDET_CONFIGS[name], tmp_path)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        model.init_weights()
    assert type(model).__name__ == 'RetinaNet'
    assert type(model.backbone).__module__.startswith('mmbackbone.')
    _assert_loaded(model.backbone, expected)
    assert list(model.backbone.out_channels) == cfg.model.neck.in_channels

    sample = DetDataSample(metainfo=dict(
        img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
        scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10., 12., 70., 90.], [60., 30., 120., 100.]]),
        labels=torch.tensor([1, 7]))
    data = dict(inputs=[_image()], data_samples=[sample])
    log_vars = _step(model, data)
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)
    assert log_vars['loss_cls'] > 0
    # inference ends in NMS, which mmbackbone.mmcv_ops provides (score_thr
    # 0 keeps the random model's low scores, so NMS has boxes to process)
    model.bbox_head.test_cfg.score_thr = 0.0
    model.eval()
    with torch.no_grad():
        preds = model.test_step(data)
    pred = preds[0].pred_instances
    max_per_img = model.bbox_head.test_cfg.max_per_img
    assert 0 < len(pred.bboxes) <= max_per_img
    assert pred.bboxes.shape[1] == 4 and torch.isfinite(pred.bboxes).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()  # sorted by NMS
    assert int(pred.labels.max()) < cfg.model.bbox_head.num_classes


def test_upernet_with_regnet_trains_a_step(tmp_path):
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    cfg = _load('mmseg', MMSEG_CONFIG)
    assert cfg.model.backbone.type == 'mmbackbone.RegNet'
    assert cfg.model.backbone.arch == 'regnetx_4.0gf'
    expected = _with_checkpoint(cfg, dict(type='RegNet', arch='regnetx_4.0gf',
                                          out_indices=(0, 1, 2, 3)), tmp_path)
    cfg.model.data_preprocessor.size = (SIZE, SIZE)  # 512x512 is slow on CPU
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
        model.init_weights()
    assert type(model).__name__ == 'EncoderDecoder'
    _assert_loaded(model.backbone, expected)
    assert list(model.backbone.out_channels) == \
        cfg.model.decode_head.in_channels == [80, 240, 560, 1360]
    assert model.backbone.out_channels[cfg.model.auxiliary_head.in_index] \
        == cfg.model.auxiliary_head.in_channels == 560

    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(2):  # the PPM's 1x1 pooling needs 2 values per BN channel
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE),
                                             ori_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(data=torch.randint(
            0, 150, (1, SIZE, SIZE), generator=gen))
        samples.append(sample)
    data = dict(inputs=[_image(), _image()], data_samples=samples)
    log_vars = _step(model, data)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars)
    # segmentation inference needs no compiled op: it runs on mmcv-lite
    model.eval()
    with torch.no_grad():
        preds = model.test_step(data)
    assert tuple(preds[0].pred_sem_seg.data.shape) == (1, SIZE, SIZE)
    assert int(preds[0].pred_sem_seg.data.max()) < 150


def test_unprovided_compiled_op_fails_loudly_naming_op_and_model():
    import mmcv.ops
    module = install_mmcv_ops()
    if not getattr(module, '__mmbackbone_mmcv_ops__', False):
        pytest.fail('a compiled mmcv._ext is installed: this check is for '
                    'mmcv-lite')
    psa = mmcv.ops.PSAMask('collect', (3, 3))
    with pytest.raises(NotImplementedError,
                       match=r'psamask_forward.*PSANet'):
        psa(torch.rand(1, 9, 4, 4))
    # mmengine (e.g. the Runner's SyncBN check) still sees no full mmcv
    from mmengine.utils.dl_utils import mmcv_full_available
    assert not mmcv_full_available()
