"""Datasets, transforms and the Accuracy metric of the training side."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from PIL import Image

from mmbackbone.datasets import (DigitsDataset, ImageFolderDataset,
                                 RandomCrop, RandomFlip, Resize,
                                 build_pipeline)
from mmbackbone.datasets.digits import split_positions
from mmbackbone.evaluation import Accuracy
from mmbackbone.registry import DATASETS, METRICS, MODELS
from mmbackbone.structures import ClsDataSample


@pytest.fixture(scope='module')
def sk_digits():
    from sklearn.datasets import load_digits
    return load_digits()


# ------------------------------------------------------------------ digits
def test_digits_split_is_fixed_stratified_and_complete(sk_digits):
    train, val = DigitsDataset('train'), DigitsDataset('val')
    assert (len(train), len(val)) == (1438, 359)
    pos = split_positions()
    assert not set(pos['train']) & set(pos['val'])
    assert sorted(pos['train'] + pos['val']) == list(range(1797))
    labels = sk_digits.target
    for cls in range(10):
        n_val = int((labels[pos['val']] == cls).sum())
        n_all = int((labels == cls).sum())
        assert n_val == round(n_all * 0.2)
    # same split and same pixels when built again
    again = DigitsDataset('val')
    assert torch.equal(again[17]['inputs'], val[17]['inputs'])
    assert [val.get_label(i) for i in range(len(val))] == \
        labels[pos['val']].tolist()


def test_digits_item_layout_and_pixels(sk_digits):
    dataset = DigitsDataset('val')
    item = dataset[5]
    img, sample = item['inputs'], item['data_samples']
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 32, 32)
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    assert isinstance(sample, ClsDataSample)
    position = split_positions()['val'][5]
    assert sample.gt_label.tolist() == [int(sk_digits.target[position])]
    assert sample.metainfo['img_shape'] == (32, 32)
    # the 32x32 image is the 8x8 digit (0..16 scaled to 0..255) upsampled
    original = torch.tensor(sk_digits.images[position]).float() * 255 / 16
    pooled = F.avg_pool2d(img[None, :1].float(), 4)[0, 0]
    corr = torch.corrcoef(torch.stack([pooled.flatten(),
                                       original.flatten()]))[0, 1]
    assert corr > 0.95
    full = torch.stack([dataset[i]['inputs'] for i in range(len(dataset))])
    assert int(full.max()) == 255 and int(full.min()) == 0
    assert dataset.metainfo == dict(classes=tuple('0123456789'))


def test_digits_size_indices_and_errors():
    small = DigitsDataset('train', size=16, indices=10)
    assert len(small) == 10 and tuple(small[0]['inputs'].shape) == (3, 16, 16)
    picked = DigitsDataset('val', indices=[3, 0])
    assert len(picked) == 2
    assert torch.equal(picked[1]['inputs'], DigitsDataset('val')[0]['inputs'])
    assert torch.equal(picked[-1]['inputs'], picked[1]['inputs'])
    with pytest.raises(ValueError, match="split='test'; choose from"):
        DigitsDataset('test')
    with pytest.raises(ValueError, match=r'indices: \[5000\] out of range'):
        DigitsDataset('val', indices=[0, 5000])
    with pytest.raises(ValueError, match='indices=0 must be >= 1'):
        DigitsDataset('val', indices=0)
    with pytest.raises(TypeError, match='indices=.* must be an int'):
        DigitsDataset('val', indices='all')
    with pytest.raises(ValueError, match='size=0 must be a positive int'):
        DigitsDataset('val', size=0)
    with pytest.raises(IndexError, match='index 2 out of range'):
        picked[2]


def test_datasets_build_from_the_registry_in_any_scope():
    dataset = DATASETS.build(dict(type='DigitsDataset', split='val',
                                  indices=4))
    assert isinstance(dataset, DigitsDataset) and len(dataset) == 4
    with DefaultScope.overwrite_default_scope('mmengine'):
        from mmengine.registry import DATASETS as ROOT
        built = ROOT.build(dict(type='mmbackbone.DigitsDataset', split='val',
                                indices=2))
    assert isinstance(built, DigitsDataset)


def test_batches_feed_the_classifier():
    dataset = DigitsDataset('train', indices=8,
                            pipeline=[dict(type='RandomCrop', size=32,
                                           padding=2)])
    batch = pseudo_collate([dataset[i] for i in range(4)])
    preprocessor = MODELS.build(dict(type='ClsDataPreprocessor',
                                     mean=[77.8] * 3, std=[82.5] * 3,
                                     num_classes=10))
    data = preprocessor(batch, training=True)
    assert tuple(data['inputs'].shape) == (4, 3, 32, 32)
    assert data['inputs'].dtype == torch.float32
    assert [int(s.gt_label) for s in data['data_samples']] == \
        [dataset.get_label(i) for i in range(4)]


# ------------------------------------------------------------- transforms
def test_random_crop_shifts_and_is_seeded():
    img = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    crop = RandomCrop(size=8, padding=2)
    torch.manual_seed(0)
    outs = [crop(dict(img=img))['img'] for _ in range(20)]
    assert all(tuple(o.shape) == (3, 8, 8) for o in outs)
    assert any(not torch.equal(o, img) for o in outs)
    torch.manual_seed(0)
    assert torch.equal(crop(dict(img=img))['img'], outs[0])
    with pytest.raises(ValueError, match='larger than the padded image'):
        RandomCrop(size=20, padding=2)(dict(img=img))
    with pytest.raises(ValueError, match='padding=-1 must be an int >= 0'):
        RandomCrop(size=8, padding=-1)
    with pytest.raises(ValueError, match=r'pad_val=300 must be an int in'):
        RandomCrop(size=8, pad_val=300)


def test_flip_and_resize():
    img = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    assert torch.equal(RandomFlip(prob=1.0)(dict(img=img))['img'],
                       img.flip(-1))
    assert torch.equal(RandomFlip(prob=1.0, direction='vertical')(
        dict(img=img))['img'], img.flip(-2))
    assert torch.equal(RandomFlip(prob=0.0)(dict(img=img))['img'], img)
    out = Resize(size=(6, 10))(dict(img=img))
    assert tuple(out['img'].shape) == (2, 6, 10)
    assert out['img_shape'] == (6, 10)
    assert out['img'].dtype == torch.uint8
    with pytest.raises(ValueError, match='prob=2 must be in'):
        RandomFlip(prob=2)
    with pytest.raises(ValueError, match="direction='diagonal'"):
        RandomFlip(direction='diagonal')
    with pytest.raises(ValueError, match=r'size=\(3, 4, 5\) must be'):
        Resize(size=(3, 4, 5))
    with pytest.raises(TypeError, match=r"results\['img'\] must be"):
        Resize(size=4)(dict(img=np.zeros((4, 4, 3))))


def test_pipeline_builds_registered_types_only():
    assert [type(t) for t in build_pipeline(
        [dict(type='Resize', size=8), dict(type='mmbackbone.RandomFlip')])
    ] == [Resize, RandomFlip]
    with pytest.raises(KeyError, match="'RandomCorp' is not registered.*"
                       "RandomCrop"):
        build_pipeline([dict(type='RandomCorp', size=8)])
    with pytest.raises(ValueError, match="dataset transforms come from "
                       "mmbackbone"):
        build_pipeline([dict(type='mmengine.RandomFlip')])
    with pytest.raises(ValueError, match="'os.system' is a dotted path"):
        build_pipeline([dict(type='os.system', command='true')])
    with pytest.raises(TypeError, match='pipeline=.* must be a list'):
        build_pipeline(dict(type='Resize', size=8))
    with pytest.raises(TypeError, match=r'pipeline\[0\]=3 must be'):
        build_pipeline([3])


# ----------------------------------------------------------- image folder
def _make_folder(root, layout):
    for name, files in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, (size, mode) in enumerate(files):
            color = {'L': 128, 'RGBA': (10, 20, 30, 255)}.get(mode,
                                                              (200, 10, 50))
            Image.new(mode, size, color).save(root / name / f'{i}.png')


def test_image_folder_reads_resizes_and_labels(tmp_path):
    _make_folder(tmp_path, {'dog': [((40, 30), 'RGB'), ((9, 9), 'L')],
                            'cat': [((20, 50), 'RGBA')],
                            '.hidden': [((8, 8), 'RGB')]})
    (tmp_path / 'dog' / 'notes.txt').write_text('not an image')
    dataset = ImageFolderDataset(tmp_path, size=(12, 16))
    assert dataset.classes == ('cat', 'dog')
    assert len(dataset) == 3
    assert [dataset.get_label(i) for i in range(3)] == [0, 1, 1]
    item = dataset[0]
    assert tuple(item['inputs'].shape) == (3, 12, 16)
    assert item['inputs'].dtype == torch.uint8
    assert item['inputs'][:, 5, 5].tolist() == [10, 20, 30]  # RGBA -> RGB
    assert dataset[2]['inputs'][:, 0, 0].tolist() == [128] * 3  # L -> RGB
    assert int(dataset[1]['data_samples'].gt_label) == 1
    # explicit classes choose the folders and the label order
    only = ImageFolderDataset(tmp_path, size=8, classes=['dog'])
    assert only.classes == ('dog', ) and len(only) == 2
    assert {only.get_label(i) for i in range(2)} == {0}
    built = DATASETS.build(dict(type='ImageFolderDataset',
                                data_root=str(tmp_path), size=8,
                                pipeline=[dict(type='RandomFlip')]))
    assert len(built) == 3 and built.metainfo['classes'] == ('cat', 'dog')


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        ImageFolderDataset(tmp_path / 'missing')
    with pytest.raises(ValueError, match='has no class subfolders'):
        ImageFolderDataset(tmp_path)
    (tmp_path / 'a').mkdir()
    with pytest.raises(ValueError, match='no images with suffixes'):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"classes \['b'\] have no "
                       r"folder"):
        ImageFolderDataset(tmp_path, classes=['a', 'b'])
    (tmp_path / 'a' / 'broken.jpg').write_bytes(b'not a jpeg')
    dataset = ImageFolderDataset(tmp_path, size=8)
    with pytest.raises(OSError, match='cannot read image .*broken.jpg'):
        dataset[0]


# ---------------------------------------------------------------- metric
def test_accuracy_topk_matches_a_direct_count():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 10, generator=gen).softmax(1)
    labels = torch.randint(0, 10, (50, ), generator=gen)
    metric = Accuracy(topk=(1, 3, 5))
    samples = [ClsDataSample(gt_label=int(y)).set_pred_score(s).to_dict()
               for s, y in zip(scores, labels)]
    metric.process({}, samples[:20])
    metric.process({}, samples[20:])
    result = metric.evaluate(50)
    for k in (1, 3, 5):
        ranks = (scores > scores.gather(1, labels[:, None])).sum(1)
        expected = float((ranks < k).float().mean() * 100)
        assert result[f'accuracy/top{k}'] == pytest.approx(expected)


def test_accuracy_through_mmengine_evaluator_and_labels_only():
    metric = METRICS.build(dict(type='Accuracy', topk=1))
    evaluator = Evaluator(metric)
    samples = [ClsDataSample(gt_label=1).set_pred_label(1),
               ClsDataSample(gt_label=2).set_pred_label(0)]
    evaluator.process(samples)
    assert evaluator.evaluate(2) == {'accuracy/top1': 50.0}
    labels_only = Accuracy(topk=(1, 5))
    labels_only.process({}, [dict(gt_label=torch.tensor([1]),
                                  pred_label=torch.tensor([1]))])
    with pytest.raises(ValueError, match='pred_label only'):
        labels_only.evaluate(1)


def test_accuracy_errors():
    with pytest.raises(ValueError, match=r'topk=\(1, 0\) must be'):
        Accuracy(topk=(1, 0))
    with pytest.raises(KeyError, match='needs gt_label'):
        Accuracy().process({}, [dict(pred_score=torch.rand(3))])
    with pytest.raises(KeyError, match='needs pred_score'):
        Accuracy().process({}, [dict(gt_label=torch.tensor([0]))])


def test_missing_scikit_learn_is_named(monkeypatch):
    from mmbackbone.datasets import digits
    monkeypatch.setitem(sys.modules, 'sklearn.datasets', None)
    with pytest.raises(ImportError, match='DigitsDataset needs scikit-learn'
                       '.*pip install scikit-learn'):
        digits.load_sklearn_digits()
