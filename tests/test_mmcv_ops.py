"""mmbackbone.mmcv_ops: mmcv's compiled ops on PyTorch/torchvision.

Every op runs through mmcv's own python API (``mmcv.ops``) on the CPU and
is compared with a direct PyTorch computation written here from the
kernels' definitions (forward within 1e-4, gradients within 1e-3), and
with the values mmcv's own op tests assert where those exist.
"""
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import mmbackbone.mmcv_ops as mmcv_ops
import mmcv.ops  # noqa: E402  (after the extension is installed)
from mmcv.ops.multi_scale_deform_attn import (
    MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch)

FWD_TOL, GRAD_TOL = 1e-4, 1e-3


def _close(actual, expected, atol):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def _random_boxes(gen, count, size=50.0):
    corner = torch.rand(count, 2, generator=gen) * size
    extent = torch.rand(count, 2, generator=gen) * size / 2 + 1
    return torch.cat([corner, corner + extent], dim=1)


# --------------------------------------------------------------------- NMS
def _iou(a, b, offset):
    w = max(min(a[2], b[2]) - max(a[0], b[0]) + offset, 0.)
    h = max(min(a[3], b[3]) - max(a[1], b[1]) + offset, 0.)
    area = lambda r: (r[2] - r[0] + offset) * (r[3] - r[1] + offset)  # noqa
    return w * h / (area(a) + area(b) - w * h)


def _greedy_nms(boxes, scores, threshold, offset):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(_iou(boxes[i], boxes[j], offset) <= threshold for j in keep):
            keep.append(i)
    return keep


MMCV_BOXES = torch.tensor([[6., 3., 8., 7.], [3., 6., 9., 11.],
                           [3., 7., 10., 12.], [1., 4., 13., 7.]])
MMCV_SCORES = torch.tensor([0.6, 0.9, 0.7, 0.2])


def test_nms_matches_mmcv_expected_values():
    dets, inds = mmcv.ops.nms(MMCV_BOXES, MMCV_SCORES, iou_threshold=0.3)
    assert inds.tolist() == [1, 0, 3]
    _close(dets, [[3., 6., 9., 11., .9], [6., 3., 8., 7., .6],
                  [1., 4., 13., 7., .2]], FWD_TOL)


@pytest.mark.parametrize('offset', [0, 1])
def test_nms_matches_greedy_reference(offset):
    gen = torch.Generator().manual_seed(offset)
    boxes, scores = _random_boxes(gen, 60), torch.rand(60, generator=gen)
    expected = _greedy_nms(boxes.tolist(), scores.tolist(), 0.4, offset)
    dets, inds = mmcv.ops.nms(boxes, scores, 0.4, offset=offset)
    assert inds.tolist() == expected
    _close(dets[:, 4], scores[expected], 0)
    # numpy in, numpy out; score_threshold and max_num filter
    dets_np, inds_np = mmcv.ops.nms(boxes.numpy(), scores.numpy(), 0.4,
                                    offset=offset, score_threshold=0.5,
                                    max_num=5)
    assert isinstance(inds_np, np.ndarray)
    assert inds_np.tolist() == [i for i in expected
                                if scores[i] > 0.5][:5]
    assert mmcv.ops.nms(boxes[:0], scores[:0], 0.4)[1].numel() == 0


@pytest.mark.parametrize('class_agnostic', [False, True])
def test_batched_nms_is_nms_per_class(class_agnostic):
    gen = torch.Generator().manual_seed(3)
    boxes, scores = _random_boxes(gen, 80), torch.rand(80, generator=gen)
    idxs = torch.randint(0, 4, (80,), generator=gen)
    dets, keep = mmcv.ops.batched_nms(
        boxes, scores, idxs, dict(iou_threshold=0.3), class_agnostic)
    if class_agnostic:
        expected = _greedy_nms(boxes.tolist(), scores.tolist(), 0.3, 0)
    else:
        expected = []
        for label in range(4):
            members = torch.nonzero(idxs == label)[:, 0].tolist()
            kept = _greedy_nms(boxes[members].tolist(),
                               scores[members].tolist(), 0.3, 0)
            expected += [members[k] for k in kept]
        expected.sort(key=lambda i: -scores[i])
    assert keep.tolist() == expected
    _close(dets[:, :4], boxes[expected], 0)


def _soft_nms_reference(boxes, scores, threshold, sigma, min_score, method,
                        offset):
    """The soft-NMS kernel's loop, verbatim in python (float32 numpy)."""
    x = boxes.numpy().astype(np.float32).copy()
    sc = scores.numpy().astype(np.float32).copy()
    area = (x[:, 2] - x[:, 0] + offset) * (x[:, 3] - x[:, 1] + offset)
    inds = list(range(len(sc)))
    dets = []
    n, i = len(sc), 0
    while i < n:
        best = i + int(np.argmax(sc[i:n]))
        for arr in (x, sc, area):
            arr[[i, best]] = arr[[best, i]]
        inds[i], inds[best] = inds[best], inds[i]
        dets.append(list(x[i]) + [sc[i]])
        pos = i + 1
        while pos < n:
            iou = _iou(x[i], x[pos], offset)
            if method == 'linear':
                weight = 1 - iou if iou >= threshold else 1.
            elif method == 'gaussian':
                weight = math.exp(-(iou * iou) / sigma)
            else:
                weight = 0. if iou >= threshold else 1.
            sc[pos] *= weight
            if sc[pos] < min_score:
                for arr in (x, sc, area):
                    arr[pos] = arr[n - 1]
                inds[pos] = inds[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return np.array(dets).reshape(-1, 5), inds[:n]


SOFT_NMS_EXPECTED = {  # mmcv's test values
    'linear': ([1, 0, 2, 3], [0.9, 0.6, 0.29024392, 0.2]),
    'gaussian': ([1, 0, 2, 3], [0.9, 0.59630775, 0.35275510, 0.18650459]),
    'naive': ([1, 0, 3], [0.9, 0.6, 0.2]),
}


@pytest.mark.parametrize('method', sorted(SOFT_NMS_EXPECTED))
def test_soft_nms_matches_mmcv_values_and_kernel_loop(method):
    dets, inds = mmcv.ops.soft_nms(MMCV_BOXES, MMCV_SCORES, 0.3, sigma=0.5,
                                   min_score=0.01, method=method)
    expected_inds, expected_scores = SOFT_NMS_EXPECTED[method]
    assert inds.tolist() == expected_inds
    _close(dets[:, 4], expected_scores, FWD_TOL)
    _close(dets[:, :4], MMCV_BOXES[expected_inds], 0)
    gen = torch.Generator().manual_seed(7)
    for offset in (0, 1):
        boxes, scores = _random_boxes(gen, 40), torch.rand(40, generator=gen)
        dets, inds = mmcv.ops.soft_nms(boxes, scores, 0.3, sigma=0.5,
                                       min_score=0.05, method=method,
                                       offset=offset)
        ref_dets, ref_inds = _soft_nms_reference(boxes, scores, 0.3, 0.5,
                                                 0.05, method, offset)
        assert inds.tolist() == ref_inds
        _close(dets, ref_dets, FWD_TOL)


def test_nms_match_groups_by_suppressor():
    dets = torch.tensor([[49.1, 32.4, 51.0, 35.9, 0.9],
                         [49.3, 32.9, 51.0, 35.3, 0.9],
                         [35.3, 11.5, 39.9, 14.5, 0.4],
                         [35.2, 11.7, 39.7, 15.7, 0.3]])
    groups = mmcv.ops.nms_match(dets, 0.6)
    assert len(groups) == 2 and all(isinstance(g, torch.Tensor)
                                    for g in groups)
    keep = mmcv.ops.nms(dets[:, :4], dets[:, 4], 0.6)[1]
    assert {int(g[0]) for g in groups} == set(keep.tolist())
    assert [g.tolist() for g in groups] == \
        [g.tolist() for g in mmcv.ops.nms_match(dets.numpy(), 0.6)]
    assert mmcv.ops.nms_match(np.zeros((0, 5)), 0.6) == []
    gen = torch.Generator().manual_seed(5)
    boxes, scores = _random_boxes(gen, 30), torch.rand(30, generator=gen)
    groups = mmcv.ops.nms_match(torch.cat([boxes, scores[:, None]], 1), 0.3)
    order = sorted(range(30), key=lambda i: -scores[i])
    suppressed, expected = set(), []
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        group = [i] + [j for j in order[pos + 1:] if j not in suppressed and
                       _iou(boxes[i].tolist(), boxes[j].tolist(), 0) >= 0.3]
        suppressed.update(group)
        expected.append(group)
    assert [g.tolist() for g in groups] == expected


# ---------------------------------------------------------------- RoIAlign
def _roi_bilinear(img, y, x):
    """RoIAlign's bilinear sample of ``img`` (C, H, W) at python floats."""
    height, width = img.shape[-2:]
    if y < -1 or y > height or x < -1 or x > width:
        return img.new_zeros(img.shape[0])
    y, x = max(y, 0.), max(x, 0.)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * img[:, y0, x0] + (1 - ly) * lx *
            img[:, y0, x1] + ly * (1 - lx) * img[:, y1, x0] +
            ly * lx * img[:, y1, x1])


def _roi_align_reference(feature, rois, size, scale, ratio, mode, aligned):
    out = []
    for roi in rois.tolist():
        shift = 0.5 if aligned else 0.
        x1, y1, x2, y2 = (v * scale - shift for v in roi[1:])
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.), max(h, 1.)
        bin_h, bin_w = h / size[0], w / size[1]
        gh = ratio if ratio > 0 else math.ceil(h / size[0])
        gw = ratio if ratio > 0 else math.ceil(w / size[1])
        img = feature[int(roi[0])]
        rows = []
        for ph in range(size[0]):
            cols = []
            for pw in range(size[1]):
                samples = [_roi_bilinear(
                    img, y1 + ph * bin_h + (iy + .5) * bin_h / gh,
                    x1 + pw * bin_w + (ix + .5) * bin_w / gw)
                    for iy in range(gh) for ix in range(gw)]
                stacked = torch.stack(samples)
                cols.append(stacked.max(0)[0] if mode == 'max' else
                            stacked.sum(0) / max(gh * gw, 1))
            rows.append(torch.stack(cols, -1))
        out.append(torch.stack(rows, -2))
    return torch.stack(out)


ROI_ALIGN_CASES = [  # mmcv's test: input, rois, output, grad (avg, aligned)
    ([[[[1., 2.], [3., 4.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1.0, 1.25], [1.5, 1.75]]]],
     [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.],
        [11., 12., 15., 16.]]]], [[0., 0., 0., 3., 3.]],
     [[[[1.9375, 4.75], [7.5625, 10.375]]]],
     [[[[0.47265625, 0.42968750, 0.42968750, 0.04296875],
        [0.42968750, 0.39062500, 0.39062500, 0.03906250],
        [0.42968750, 0.39062500, 0.39062500, 0.03906250],
        [0.04296875, 0.03906250, 0.03906250, 0.00390625]]]]),
]


@pytest.mark.parametrize('case', range(len(ROI_ALIGN_CASES)))
def test_roi_align_matches_mmcv_expected_values(case):
    feature, rois, output, grad = ROI_ALIGN_CASES[case]
    x = torch.tensor(feature, requires_grad=True)
    out = mmcv.ops.roi_align(x, torch.tensor(rois), (2, 2), 1.0, 2, 'avg',
                             True)
    out.backward(torch.ones_like(out))
    _close(out, output, FWD_TOL)
    _close(x.grad, grad, FWD_TOL)


def _roi_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    feature = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0., 1.3, 0.7, 14.2, 10.9], [1., -2., -1., 5., 4.],
                         [1., 3.1, 2.2, 3.4, 2.4], [0., 10., 6., 30., 20.]],
                        dtype=torch.float64)
    return feature, rois


@pytest.mark.parametrize('mode', ['avg', 'max'])
@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('ratio', [0, 2])
def test_roi_align_matches_direct_reference(mode, aligned, ratio):
    feature, rois = _roi_inputs(0)
    layer = mmcv.ops.RoIAlign((3, 2), 0.5, ratio, mode, aligned)
    x = feature.clone().requires_grad_()
    out = layer(x, rois)
    ref_x = feature.clone().requires_grad_()
    ref = _roi_align_reference(ref_x, rois, (3, 2), 0.5, ratio, mode,
                               aligned)
    _close(out, ref, FWD_TOL)
    grad_out = torch.rand(out.shape, generator=torch.Generator()
                          .manual_seed(1), dtype=out.dtype)
    out.backward(grad_out)
    ref.backward(grad_out)
    _close(x.grad, ref_x.grad, GRAD_TOL)
    # float32 gives the float64 result
    _close(layer(feature.float(), rois.float()), ref.detach(), FWD_TOL)


def test_roi_align_gradcheck():
    feature, rois = _roi_inputs(2)
    for mode in ('avg', 'max'):
        layer = mmcv.ops.RoIAlign((2, 2), 0.5, 2, mode, True)
        assert gradcheck(layer, (feature.requires_grad_(), rois), eps=1e-5,
                         atol=GRAD_TOL)


# ------------------------------------------------------------------ RoIPool
def _roi_pool_reference(feature, rois, size, scale):
    out = []
    height, width = feature.shape[-2:]
    for roi in rois.tolist():
        img = feature[int(roi[0])]
        x1, y1 = roi[1] * scale, roi[2] * scale
        x2, y2 = (roi[3] + 1) * scale, (roi[4] + 1) * scale
        bin_h, bin_w = (y2 - y1) / size[0], (x2 - x1) / size[1]
        bins = torch.zeros(img.shape[0], *size, dtype=img.dtype)
        values = []
        for ph in range(size[0]):
            for pw in range(size[1]):
                ys = min(max(math.floor(ph * bin_h + y1), 0), height)
                ye = min(max(math.ceil((ph + 1) * bin_h + y1), 0), height)
                xs = min(max(math.floor(pw * bin_w + x1), 0), width)
                xe = min(max(math.ceil((pw + 1) * bin_w + x1), 0), width)
                if ye <= ys or xe <= xs:
                    values.append(img.new_zeros(img.shape[0]))
                else:
                    values.append(img[:, ys:ye, xs:xe].flatten(1).max(1)[0])
        out.append(torch.stack(values, -1).view_as(bins))
    return torch.stack(out)


ROI_POOL_CASES = [  # mmcv's test: input, rois, output, grad
    ([[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]],
     [[[[1., 1.], [1., 1.]], [[1., 1.], [1., 1.]]]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.],
        [11., 12., 15., 16.]]]], [[0., 0., 0., 3., 3.]],
     [[[[4., 8.], [12., 16.]]]],
     [[[[0., 0., 0., 0.], [0., 1., 0., 1.], [0., 0., 0., 0.],
        [0., 1., 0., 1.]]]]),
]


@pytest.mark.parametrize('case', range(len(ROI_POOL_CASES)))
def test_roi_pool_matches_mmcv_expected_values(case):
    feature, rois, output, grad = ROI_POOL_CASES[case]
    x = torch.tensor(feature, requires_grad=True)
    out = mmcv.ops.roi_pool(x, torch.tensor(rois), (2, 2), 1.0)
    out.backward(torch.ones_like(out))
    _close(out, output, 0)
    _close(x.grad, grad, 0)


def test_roi_pool_matches_direct_reference_with_fractional_rois():
    feature, rois = _roi_inputs(3)
    x = feature.clone().requires_grad_()
    out = mmcv.ops.RoIPool((3, 2), 0.5)(x, rois)
    ref_x = feature.clone().requires_grad_()
    ref = _roi_pool_reference(ref_x, rois, (3, 2), 0.5)
    _close(out, ref, FWD_TOL)
    grad_out = torch.rand(out.shape, dtype=out.dtype,
                          generator=torch.Generator().manual_seed(4))
    out.backward(grad_out)
    ref.backward(grad_out)
    _close(x.grad, ref_x.grad, GRAD_TOL)
    assert gradcheck(mmcv.ops.RoIPool((2, 2), 0.5),
                     (feature.requires_grad_(), rois), atol=GRAD_TOL)


# ---------------------------------------------------------------- focal loss
FOCAL_INPUTS = [([[1., 0], [0, 1.]], [0, 1]),
                ([[1., 0, -1.], [0, 1., 2.]], [2, 1]),
                ([[1e-6, 2e-6, 3e-6], [4e-6, 5e-5, 6e-4],
                  [7e-3, 8e-2, 9e-1]], [1, 2, 0])]
SIGMOID_EXPECTED = [  # mmcv's test values (mean reduction)
    (0.13562961, [[-0.00657264, 0.11185755], [0.11185755, -0.00657264]]),
    (1.10251057, [[0.28808805, 0.11185755, -0.09602935],
                  [0.11185755, -0.00657264, 0.40376765]]),
    (0.42287254, [[0.07457182, -0.02485716, 0.07457201],
                  [0.07457211, 0.07457669, -0.02483728],
                  [-0.02462499, 0.08277918, 0.18050370]])]
SOFTMAX_EXPECTED = [
    (0.00566451, [[-0.00657264, 0.00657264], [0.00657264, -0.00657264]]),
    (0.34956908, [[0.10165970, 0.03739851, -0.13905823],
                  [0.01227554, -0.10298023, 0.09070466]]),
    (0.15754992, [[0.02590877, -0.05181759, 0.02590882],
                  [0.02589641, 0.02589760, -0.05179400],
                  [-0.07307514, 0.02234372, 0.05073142]])]


@pytest.mark.parametrize('case', range(len(FOCAL_INPUTS)))
def test_focal_losses_match_mmcv_expected_values(case):
    x, y = FOCAL_INPUTS[case]
    for loss_fn, expected in ((mmcv.ops.sigmoid_focal_loss, SIGMOID_EXPECTED),
                              (mmcv.ops.softmax_focal_loss,
                               SOFTMAX_EXPECTED)):
        logits = torch.tensor(x, requires_grad=True)
        loss = loss_fn(logits, torch.tensor(y), 2.0, 0.25, None, 'mean')
        loss.backward()
        _close(loss, expected[case][0], FWD_TOL)
        _close(logits.grad, expected[case][1], FWD_TOL)


def _sigmoid_focal_reference(logits, target, gamma, alpha, weight):
    prob = logits.sigmoid()
    onehot = torch.nn.functional.one_hot(target, logits.size(1) + 1)[:, :-1]
    onehot = onehot.to(logits.dtype)
    loss = -alpha * (1 - prob) ** gamma * torch.log(prob) * onehot - \
        (1 - alpha) * prob ** gamma * torch.log(1 - prob) * (1 - onehot)
    if weight is not None:
        padded = torch.cat([weight, weight.new_ones(1)])
        loss = loss * padded[target][:, None]
    return loss


def _softmax_focal_reference(logits, target, gamma, alpha, weight):
    prob = logits.softmax(1).gather(1, target[:, None])[:, 0]
    loss = -alpha * (1 - prob) ** gamma * torch.log(prob)
    return loss if weight is None else loss * weight[target]


@pytest.mark.parametrize('kind', ['sigmoid', 'softmax'])
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
@pytest.mark.parametrize('weighted', [False, True])
def test_focal_losses_match_direct_reference(kind, reduction, weighted):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=gen, dtype=torch.float64) * 3
    # the sigmoid loss takes num_classes (5) as background
    target = torch.randint(0, 6 if kind == 'sigmoid' else 5, (12,),
                           generator=gen)
    weight = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5 \
        if weighted else None
    op = getattr(mmcv.ops, f'{kind}_focal_loss')
    reference = {'sigmoid': _sigmoid_focal_reference,
                 'softmax': _softmax_focal_reference}[kind]
    x = logits.clone().requires_grad_()
    loss = op(x, target, 1.5, 0.3, weight, reduction)
    ref_x = logits.clone().requires_grad_()
    ref = reference(ref_x, target, 1.5, 0.3, weight)
    ref = {'none': ref, 'mean': ref.sum() / 12, 'sum': ref.sum()}[reduction]
    _close(loss, ref, FWD_TOL)
    if kind == 'softmax' and reduction == 'none':
        return  # mmcv's backward cannot broadcast a per-sample grad_output
    grad = torch.rand(loss.shape, generator=gen, dtype=loss.dtype)
    loss.backward(grad)
    ref.backward(grad)
    _close(x.grad, ref_x.grad, GRAD_TOL)


# ------------------------------------------------------ deformable conv v1/v2
def _deform_bilinear(img, h, w):
    """Deformable conv's bilinear sample (zero outside) of ``img`` (C, H, W)
    at tensors ``h``, ``w``; differentiable in all three."""
    height, width = img.shape[-2:]
    inside = (h > -1) & (w > -1) & (h < height) & (w < width)
    h0, w0 = h.detach().floor(), w.detach().floor()
    lh, lw = h - h0, w - w0
    value = 0
    for dy, wy in ((0, 1 - lh), (1, lh)):
        for dx, wx in ((0, 1 - lw), (1, lw)):
            y, x = h0 + dy, w0 + dx
            ok = inside & (y >= 0) & (y < height) & (x >= 0) & (x < width)
            corner = img[:, y.clamp(0, height - 1).long(),
                         x.clamp(0, width - 1).long()]
            value = value + corner * (wy * wx * ok)
    return value


def _deform_conv_reference(x, offset, weight, mask=None, bias=None,
                           stride=1, padding=0, dilation=1, groups=1,
                           deform_groups=1):
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    base_y = (torch.arange(out_h) * stride - padding).to(x.dtype)[:, None]
    base_x = (torch.arange(out_w) * stride - padding).to(x.dtype)[None, :]
    per_group = channels // deform_groups
    columns = []
    for n in range(batch):
        taps = []
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            pieces = []
            for g in range(deform_groups):
                dy = offset[n, g * 2 * kh * kw + 2 * k]
                dx = offset[n, g * 2 * kh * kw + 2 * k + 1]
                sample = _deform_bilinear(
                    x[n, g * per_group:(g + 1) * per_group],
                    base_y + i * dilation + dy, base_x + j * dilation + dx)
                if mask is not None:
                    sample = sample * mask[n, g * kh * kw + k]
                pieces.append(sample)
            taps.append(torch.cat(pieces))  # (C, out_h, out_w)
        columns.append(torch.stack(taps, 1))  # (C, K, out_h, out_w)
    columns = torch.stack(columns).view(batch, groups, channels // groups,
                                        kh * kw, out_h, out_w)
    kernel = weight.view(groups, out_channels // groups, -1, kh * kw)
    out = torch.einsum('ngckhw,gock->ngohw', columns, kernel).reshape(
        batch, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def test_deform_conv_matches_mmcv_expected_values():
    model = mmcv.ops.DeformConv2dPack(1, 1, 2, stride=1, padding=0,
                                      im2col_step=2).double()
    with torch.no_grad():
        model.conv_offset.weight.copy_(torch.tensor(
            [[.1, .4, .6, .1], [.3, .2, .1, .3], [.5, .5, .2, .8],
             [.8, .3, .9, .1], [.3, .1, .2, .5], [.3, .7, .5, .3],
             [.6, .2, .5, .3], [.4, .1, .8, .4]]).view(8, 1, 2, 2))
        model.conv_offset.bias.copy_(torch.tensor(
            [.7, .1, .8, .5, .6, .5, .4, .7]))
        model.weight.copy_(torch.tensor([.4, .2, .1, .9]).view(1, 1, 2, 2))
    x = torch.tensor([[[[1., 2., 3.], [0., 1., 2.], [3., 5., 2.]]]],
                     dtype=torch.float64).repeat(4, 1, 1, 1)
    x.requires_grad_()
    out = model(x)
    out.backward(torch.ones_like(out))
    # mmcv publishes these to 2-3 decimals
    _close(out[0], [[[1.650, 0.], [0., 0.]]], 1e-3)
    _close(x.grad[0], [[[-0.666, 0.204, 0.], [0.030, -0.416, 0.012],
                        [0., 0.252, 0.129]]], 1e-3)
    _close(model.weight.grad / 4, [[[[3.62, 0.], [0.40, 0.18]]]], 1e-3)
    _close(model.conv_offset.bias.grad / 4,
           [1.44, -0.72, 0., 0., -0.10, -0.08, -0.54, -0.54], 1e-3)


def _deform_inputs(seed, modulated):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    # stride 2, padding 2, dilation 2 -> 4 x 3 outputs; 2 deform groups
    offset = torch.randn(2, 2 * 2 * 9, 4, 3, generator=gen,
                         dtype=torch.float64) * 1.5
    mask = torch.rand(2, 2 * 9, 4, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    return (x, offset, weight) + ((mask, bias) if modulated else ())


@pytest.mark.parametrize('modulated', [False, True])
@pytest.mark.parametrize('whole_pixel', [False, True])
def test_deform_conv_matches_direct_reference(modulated, whole_pixel):
    tensors = _deform_inputs(0, modulated)
    if whole_pixel:  # samples on pixel centres, some exactly at -1
        tensors = (tensors[0], tensors[1].round()) + tensors[2:]
    leaves = [t.clone().requires_grad_() for t in tensors]
    ref_leaves = [t.clone().requires_grad_() for t in tensors]
    conv = dict(stride=2, padding=2, dilation=2, groups=2)
    if modulated:
        x, offset, weight, mask, bias = leaves
        out = mmcv.ops.modulated_deform_conv2d(
            x, offset, mask, weight, bias, 2, 2, 2, 2, 2)
        rx, roffset, rweight, rmask, rbias = ref_leaves
        ref = _deform_conv_reference(rx, roffset, rweight, rmask, rbias,
                                     deform_groups=2, **conv)
    else:
        x, offset, weight = leaves
        out = mmcv.ops.deform_conv2d(x, offset, weight, 2, 2, 2, 2, 2, False,
                                     1)
        rx, roffset, rweight = ref_leaves
        ref = _deform_conv_reference(rx, roffset, rweight, deform_groups=2,
                                     **conv)
    _close(out, ref, FWD_TOL)
    grad = torch.rand(out.shape, dtype=out.dtype,
                      generator=torch.Generator().manual_seed(9))
    out.backward(grad)
    ref.backward(grad)
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        _close(leaf.grad, ref_leaf.grad, GRAD_TOL)


def test_deform_conv_modules_equal_conv2d_at_zero_offset():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    v1 = mmcv.ops.DeformConv2d(4, 6, 3, padding=1, groups=2, deform_groups=2)
    v2 = mmcv.ops.ModulatedDeformConv2d(4, 6, 3, padding=1, deform_groups=2)
    zeros = x.new_zeros(2, 36, 8, 8)
    _close(v1(x, zeros), torch.nn.functional.conv2d(x, v1.weight, None, 1, 1,
                                                    1, 2), FWD_TOL)
    ones = x.new_ones(2, 18, 8, 8)
    _close(v2(x, zeros, ones), torch.nn.functional.conv2d(
        x, v2.weight, v2.bias, 1, 1), FWD_TOL)
    with pytest.raises(AssertionError, match='divisible by im2col_step'):
        mmcv.ops.deform_conv2d(x.repeat(3, 1, 1, 1)[:3], zeros[:1].repeat(
            3, 1, 1, 1), v1.weight, 1, 1, 1, 2, 2, False, 2)


def test_modulated_deform_conv_matches_mmcv_expected_values():
    dcn = mmcv.ops.ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2),
                                             stride=1, padding=1,
                                             deform_groups=1, bias=False)
    dcn.weight.data.fill_(1.)
    x = torch.tensor([[[[1., 2., 3.]] * 3]], requires_grad=True)
    out = dcn(x)
    out.sum().backward()
    _close(out, [[[[0.5, 1.5, 2.5, 1.5], [1., 3., 5., 3.], [1., 3., 5., 3.],
                   [0.5, 1.5, 2.5, 1.5]]]], FWD_TOL)
    _close(x.grad, torch.full((1, 1, 3, 3), 2.), GRAD_TOL)
    _close(dcn.weight.grad, torch.full((1, 1, 2, 2), 9.), GRAD_TOL)
    _close(dcn.conv_offset.bias.grad, [-3.0, -1.5, -3.0, -1.5, -3.0, -1.5,
                                       -3.0, -1.5, 4.5, 4.5, 4.5, 4.5],
           GRAD_TOL)
    _close(dcn.conv_offset.weight.grad[:, 0], [
        [[-7.0, -4.0], [0.0, 0.0]], [[-9.0, 7.5], [-6.0, 5.0]],
        [[-4.0, -7.0], [0.0, 0.0]], [[-7.5, -9.0], [-5.0, -6.0]],
        [[-7.0, -4.0], [-7.0, -4.0]], [[-6.0, 5.0], [-9.0, 7.5]],
        [[-4.0, -7.0], [-4.0, -7.0]], [[-5.0, -6.0], [-7.5, -9.0]],
        [[10.5, 6.0], [7.0, 4.0]], [[6.0, 10.5], [4.0, 7.0]],
        [[7.0, 4.0], [10.5, 6.0]], [[4.0, 7.0], [6.0, 10.5]]], GRAD_TOL)


# --------------------------------------------------- deformable attention
def _msda_inputs(seed, channels=3):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 4], [3, 2]])
    start = torch.tensor([0, 24])
    value = torch.rand(2, 30, 2, channels, generator=gen,
                       dtype=torch.float64)
    # some locations fall outside [0, 1]: zero padding is exercised
    where = torch.rand(2, 5, 2, 2, 3, 2, generator=gen,
                       dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 5, 2, 2, 3, generator=gen, dtype=torch.float64)
    return value, shapes, start, where, weights / weights.sum((-1, -2),
                                                             keepdim=True)


def test_ms_deform_attn_matches_mmcv_pytorch_path():
    value, shapes, start, where, weights = _msda_inputs(0)
    leaves = [t.clone().requires_grad_() for t in (value, where, weights)]
    out = MultiScaleDeformableAttnFunction.apply(
        leaves[0], shapes, start, leaves[1], leaves[2], 2)
    ref_leaves = [t.clone().requires_grad_() for t in (value, where, weights)]
    ref = multi_scale_deformable_attn_pytorch(ref_leaves[0], shapes,
                                              ref_leaves[1], ref_leaves[2])
    _close(out, ref, FWD_TOL)
    grad = torch.rand(out.shape, dtype=out.dtype,
                      generator=torch.Generator().manual_seed(2))
    out.backward(grad)
    ref.backward(grad)
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        _close(leaf.grad, ref_leaf.grad, GRAD_TOL)
    assert gradcheck(MultiScaleDeformableAttnFunction.apply,
                     (value.requires_grad_(), shapes, start,
                      where.requires_grad_(), weights.requires_grad_(), 2),
                     atol=GRAD_TOL)


def test_multi_scale_deformable_attention_module_is_available():
    from mmengine.registry import MODELS
    assert MODELS.get('MultiScaleDeformableAttention') is \
        mmcv.ops.MultiScaleDeformableAttention
    torch.manual_seed(0)
    msda = mmcv.ops.MultiScaleDeformableAttention(embed_dims=4, num_levels=2,
                                                  num_heads=2)
    query = torch.rand(5, 1, 4)
    out = msda(query, value=torch.rand(5, 1, 4),
               reference_points=torch.rand(1, 5, 2, 2),
               spatial_shapes=torch.tensor([[2, 2], [1, 1]]),
               level_start_index=torch.tensor([0, 4]))
    assert out.shape == (5, 1, 4) and torch.isfinite(out).all()


# -------------------------------------------------------------- the module
def test_install_is_idempotent_and_not_full_mmcv():
    from mmengine.utils.dl_utils import mmcv_full_available
    ext = mmcv_ops.install()
    assert mmcv_ops.install() is ext is sys.modules['mmcv._ext']
    assert getattr(ext, '__mmbackbone_mmcv_ops__', False)
    assert not mmcv_full_available()
    assert set(mmcv_ops.PROVIDED_OPS) <= set(vars(ext))
    for name in ('nms', 'softnms', 'roi_align_forward', 'roi_pool_backward',
                 'sigmoid_focal_loss_forward', 'deform_conv_forward',
                 'modulated_deform_conv_backward', 'ms_deform_attn_forward'):
        assert name in mmcv_ops.PROVIDED_OPS


@pytest.mark.parametrize('call, op, model', [
    (lambda: mmcv.ops.PSAMask('collect', (3, 3))(torch.rand(1, 9, 4, 4)),
     'psamask_forward', 'PSANet'),
    (lambda: mmcv.ops.carafe(torch.rand(1, 2, 4, 4), torch.rand(1, 9, 8, 8),
                             3, 1, 2), 'carafe_forward', 'FPN_CARAFE'),
    (lambda: mmcv.ops.MaskedConv2d(2, 2, 3, padding=1)(
        torch.rand(1, 2, 4, 4), torch.ones(1, 4, 4)),
     'masked_im2col_forward', 'GuidedAnchorHead'),
    (lambda: mmcv.ops.box_iou_rotated(torch.rand(2, 5), torch.rand(2, 5)),
     'box_iou_rotated', 'no model in mmdet 3.3 / mmseg 1.2 uses it'),
])
def test_unsupported_op_names_op_and_model(call, op, model):
    with pytest.raises(NotImplementedError) as error:
        call()
    message = str(error.value)
    assert op in message and model in message and 'full mmcv' in message


def _run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_mmbackbone_does_not_install():
    loaded = _run_python('''
        import json, sys, mmbackbone
        print(json.dumps([m for m in ('mmbackbone.mmcv_ops', 'mmcv.ops',
                                      'mmcv._ext') if m in sys.modules]))''')
    assert loaded == []


def test_custom_imports_after_train_script_imports_register_attention(
        tmp_path):
    """mmdet's tools/train.py imports, then mmcv.cnn's transformer module
    (imported early by other packages), then the config's custom_imports:
    MultiScaleDeformableAttention must still end up registered."""
    config = tmp_path / 'cfg.py'
    config.write_text("custom_imports = dict(imports=['mmbackbone', "
                      "'mmbackbone.mmcv_ops'], allow_failed_imports=False)\n")
    found = _run_python(f'''
        import json, warnings
        warnings.simplefilter('ignore')
        from mmengine.config import Config, DictAction
        from mmengine.registry import RUNNERS
        from mmengine.runner import Runner
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        import mmcv.cnn.bricks.transformer as transformer
        before = hasattr(transformer, 'MultiScaleDeformableAttention')
        Config.fromfile({str(config)!r})
        import mmdet.models
        from mmdet.registry import MODELS
        from mmengine.utils.dl_utils import mmcv_full_available
        print(json.dumps(dict(
            before=before,
            after=hasattr(transformer, 'MultiScaleDeformableAttention'),
            registered=MODELS.get('MultiScaleDeformableAttention')
            is not None, full=mmcv_full_available())))''')
    assert found == dict(before=False, after=True, registered=True,
                         full=False)
