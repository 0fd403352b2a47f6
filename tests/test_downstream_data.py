"""The embedded digits detection / segmentation sets and their mmdet /
mmseg datasets (mmbackbone.datasets.downstream_*)."""
import concurrent.futures
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmbackbone.datasets import downstream_data as dd
from mmbackbone.datasets.digits import load_sklearn_digits, split_positions

SMALL = dict(num_train=8, num_val=5, seed=3)


@pytest.fixture(scope='module')
def det_root(tmp_path_factory):
    return dd.write_digits_detection(
        tmp_path_factory.mktemp('det') / 'digits_det', **SMALL)


@pytest.fixture(scope='module')
def seg_root(tmp_path_factory):
    return dd.write_digits_segmentation(
        tmp_path_factory.mktemp('seg') / 'digits_seg', **SMALL)


def load_coco(root: Path, split: str) -> dict:
    return json.loads(
        (root / 'annotations' / f'instances_{split}.json').read_text())


def file_bytes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_layout_and_counts(det_root, seg_root):
    for split in dd.SPLITS:
        num = SMALL[f'num_{split}']
        assert len(list((det_root / split).glob('*.png'))) == num
        assert len(load_coco(det_root, split)['images']) == num
        for folder in ('img_dir', 'ann_dir'):
            assert len(list((seg_root / folder / split).glob('*.png'))) \
                == num
    image = Image.open(det_root / 'val' / '000001.png')
    assert (image.mode, image.size) == ('RGB', (128, 128))
    label_map = Image.open(seg_root / 'ann_dir' / 'val' / '000001.png')
    assert (label_map.mode, label_map.size) == ('L', (128, 128))


def test_same_parameters_give_identical_bytes(det_root, tmp_path):
    again = dd.write_digits_detection(tmp_path / 'again', **SMALL)
    assert file_bytes(again) == file_bytes(det_root)
    marker = dd.read_marker(again)
    assert marker['sha256'] == dd.content_hash(det_root)
    other_seed = dd.write_digits_detection(
        tmp_path / 'other', **dict(SMALL, seed=4))
    assert dd.content_hash(other_seed) != marker['sha256']


def test_boxes_tight_inside_disjoint_and_masks_match(det_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    for split in dd.SPLITS:
        coco = COCO(str(det_root / 'annotations' /
                        f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] \
            == list(dd.DIGIT_CLASSES)
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(anns) <= 4
            masks = []
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
                assert 20 * 0.3 <= max(w, h) <= 48 and ann['iscrowd'] == 0
                mask = coco.annToMask(ann).astype(bool)
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(
                    mask.any(0))
                assert [cols[0], rows[0], cols[-1] - cols[0] + 1,
                        rows[-1] - rows[0] + 1] == ann['bbox']  # tight
                assert mask.sum() == ann['area']
                encoded = mask_utils.encode(np.asfortranarray(
                    mask.astype(np.uint8)))
                assert encoded['counts'].decode() == \
                    ann['segmentation']['counts']
                masks.append(mask)
            assert np.stack(masks).sum(0).max() == 1  # no overlap
            boxes = [a['bbox'] for a in anns]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or
                            a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1])


@pytest.mark.parametrize('mask', [
    np.zeros((3, 4)), np.ones((5, 2)), np.eye(6),
    np.random.default_rng(0).random((40, 37)) > 0.5])
def test_rle_encode_matches_pycocotools(mask):
    from pycocotools import mask as mask_utils
    expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert dd.rle_encode(mask) == dict(size=list(mask.shape),
                                       counts=expected['counts'].decode())


def test_digits_come_from_their_split_with_their_labels():
    params = dd._params('detection', 128, 40, 40, 0, (20, 48), 4)
    labels = load_sklearn_digits().target
    sources = {}
    for split in dd.SPLITS:
        instances = [inst for _, insts in dd.generate_canvases(split, params)
                     for inst in insts]
        assert all(inst.label == labels[inst.source] for inst in instances)
        sources[split] = {inst.source for inst in instances}
        assert sources[split] <= set(split_positions()[split])
    assert not sources['train'] & sources['val']
    assert len(sources['train']) > 50


def test_segmentation_labels_are_the_detection_masks(det_root, seg_root):
    for split in dd.SPLITS:
        coco = load_coco(det_root, split)
        for image in coco['images']:
            name = image['file_name']
            assert (det_root / split / name).read_bytes() == \
                (seg_root / 'img_dir' / split / name).read_bytes()
            labels = np.asarray(Image.open(seg_root / 'ann_dir' / split /
                                           name))
            expected = np.zeros_like(labels)
            for ann in coco['annotations']:
                if ann['image_id'] == image['id']:
                    from pycocotools import mask as mask_utils
                    mask = mask_utils.decode(ann['segmentation']).astype(bool)
                    expected[mask] = ann['category_id']  # digit k -> k + 1
            np.testing.assert_array_equal(labels, expected)
            assert labels.max() <= 10


def test_other_parameters_are_an_error_naming_root_and_parameters(det_root):
    with pytest.raises(ValueError, match=r'num_val.: 6') as info:
        dd.write_digits_detection(det_root, **dict(SMALL, num_val=6))
    assert str(det_root) in str(info.value)
    with pytest.raises(ValueError, match="'kind': 'segmentation'"):
        dd.write_digits_segmentation(det_root, **SMALL)


def test_foreign_folder_and_bad_values_are_errors(tmp_path):
    (tmp_path / 'foreign').mkdir()
    (tmp_path / 'foreign' / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='holds no digits set'):
        dd.write_digits_detection(tmp_path / 'foreign', num_train=1,
                                  num_val=1)
    for bad, match in ((dict(num_train=0), 'num_train=0'),
                       (dict(image_size=12), 'image_size=12'),
                       (dict(seed=-1), 'seed=-1'),
                       (dict(digit_size=(30, 200)), r'digit_size=\(30, 200\)'),
                       (dict(max_digits=True), 'max_digits=True')):
        with pytest.raises(ValueError, match=match):
            dd.write_digits_detection(tmp_path / 'new', **bad)
    assert not (tmp_path / 'new').exists()


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / 'empty').mkdir()
    root = dd.write_digits_segmentation(tmp_path / 'empty', num_train=1,
                                        num_val=1)
    assert dd.read_marker(root)['counts']['val']['images'] == 1


def _write_small(root: str) -> str:
    return str(dd.write_digits_detection(root, num_train=6, num_val=3))


def test_concurrent_writers_agree(tmp_path, monkeypatch):
    root = tmp_path / 'shared'
    context = multiprocessing.get_context('fork')
    with concurrent.futures.ProcessPoolExecutor(2, context) as pool:
        results = list(pool.map(_write_small, [str(root)] * 2))
    assert results == [str(root)] * 2
    assert dd.read_marker(root)['sha256'] == dd.content_hash(root)
    # a writer that loses the rename race keeps the winner's set
    expected = dd.content_hash(root)
    free_once = iter([None])
    real_existing = dd._existing_set
    monkeypatch.setattr(dd, '_existing_set',
                        lambda *a: next(free_once, real_existing(*a)))
    assert _write_small(str(root)) == str(root)
    assert dd.content_hash(root) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shared']


def test_command_line(tmp_path, capsys):
    assert dd.main(['seg', str(tmp_path / 'cli'), '--num-train', '2',
                    '--num-val', '1']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / 'cli')
    assert out[2].startswith('val: 1 images, ')
    with pytest.raises(SystemExit) as info:
        dd.main(['det', str(tmp_path / 'cli')])
    assert info.value.code == 2
    assert "'kind': 'segmentation'" in capsys.readouterr().err


def test_mmdet_dataset_pipeline_and_scoped_lookup(det_root):
    from mmdet.registry import DATASETS as MMDET_DATASETS
    from mmengine.registry import DefaultScope

    from mmbackbone.datasets.downstream_mmdet import DigitsCocoDataset
    assert MMDET_DATASETS.get('mmbackbone.DigitsCocoDataset') \
        is DigitsCocoDataset
    coco = load_coco(det_root, 'val')
    cfg = dict(type='mmbackbone.DigitsCocoDataset', data_root=str(det_root),
               ann_file='annotations/instances_val.json',
               data_prefix=dict(img='val/'), test_mode=True, **SMALL,
               pipeline=[dict(type='LoadImageFromFile'),
                         dict(type='LoadAnnotations', with_bbox=True,
                              with_mask=True),
                         dict(type='PackDetInputs')])
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = MMDET_DATASETS.build(cfg)
        assert len(dataset) == SMALL['num_val']
        assert dataset.metainfo['classes'] == dd.DIGIT_CLASSES
        for index, image in enumerate(coco['images']):
            item = dataset[index]
            anns = [a for a in coco['annotations']
                    if a['image_id'] == image['id']]
            gt = item['data_samples'].gt_instances
            assert tuple(item['inputs'].shape) == (3, 128, 128)
            assert len(gt) == len(anns)
            assert gt.labels.tolist() == [a['category_id'] - 1 for a in anns]
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in
                    (a['bbox'] for a in anns)]
            assert gt.bboxes.tensor.tolist() == xyxy
            assert gt.masks.masks.sum((1, 2)).tolist() == \
                [a['area'] for a in anns]
        with pytest.raises(ValueError, match='num_val'):
            MMDET_DATASETS.build(dict(cfg, num_val=2))


def test_mmseg_dataset_pipeline_and_scoped_lookup(seg_root):
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS as MMSEG_DATASETS

    from mmbackbone.datasets.downstream_mmseg import DigitsSegDataset
    assert MMSEG_DATASETS.get('mmbackbone.DigitsSegDataset') \
        is DigitsSegDataset
    cfg = dict(type='mmbackbone.DigitsSegDataset', data_root=str(seg_root),
               data_prefix=dict(img_path='img_dir/val',
                                seg_map_path='ann_dir/val'), **SMALL,
               pipeline=[dict(type='LoadImageFromFile'),
                         dict(type='LoadAnnotations'),
                         dict(type='PackSegInputs')])
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = MMSEG_DATASETS.build(cfg)
        assert len(dataset) == SMALL['num_val']
        assert dataset.metainfo['classes'] == dd.SEG_CLASSES
        for index in range(len(dataset)):
            item = dataset[index]
            seg = item['data_samples'].gt_sem_seg.data
            name = Path(item['data_samples'].img_path).name
            expected = np.asarray(Image.open(seg_root / 'ann_dir' / 'val' /
                                             name))
            np.testing.assert_array_equal(seg[0].numpy(), expected)
            assert 0 < int(seg.max()) <= 10


def test_import_mmbackbone_stays_free_of_mmdet_and_mmseg():
    code = ('import json, sys, mmbackbone, mmbackbone.datasets\n'
            'import mmbackbone.datasets.downstream_data\n'
            'from mmbackbone.registry import DATASETS\n'
            "DATASETS.get('DigitsDataset')\n"
            "print(json.dumps([m for m in ('mmdet', 'mmseg', 'pycocotools',"
            " 'mmbackbone.datasets.downstream_mmdet',"
            " 'mmbackbone.datasets.downstream_mmseg') if m in sys.modules]))")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
