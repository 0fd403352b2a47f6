"""Stand-ins for the extension functions not implemented here.

mmcv's python wrappers check at import that every name they need exists,
so each other name resolves to a function that raises
``NotImplementedError`` naming the op and the models that call it.
"""
NO_MODEL = 'no model in mmdet 3.3 / mmseg 1.2 uses it'

# (ext-name prefixes, the op and who needs it)
NEEDED_BY = (
    (('carafe_', 'carafe_naive_'),
     "CARAFE upsampling (mmcv.ops.CARAFE / CARAFEPack), used by mmdet's "
     "FPN_CARAFE neck and by FCNMaskHead with upsample_cfg "
     "type='carafe'"),
    (('masked_im2col_', 'masked_col2im_'),
     "MaskedConv2d with a mask, used at inference by mmdet's "
     'guided-anchoring heads (GuidedAnchorHead, GARPNHead, GARetinaHead)'),
    (('psamask_',),
     "PSAMask, used by mmseg's PSAHead (PSANet)"),
    (('sync_bn_',),
     "mmcv's SyncBatchNorm (norm_cfg type='MMSyncBN'); PyTorch's "
     "SyncBatchNorm (type='SyncBN') needs no compiled op"),
    (('nms_rotated', 'nms_quadri', 'box_iou_rotated', 'box_iou_quadri',
      'roi_align_rotated_', 'riroi_align_rotated_', 'active_rotated_filter_',
      'rotated_feature_align_', 'convex_iou', 'convex_giou',
      'min_area_polygons', 'points_in_polygons_',
      'diff_iou_rotated_'),
     f'rotated / quadrilateral box ops for oriented detection (mmrotate); '
     f'{NO_MODEL}'),
    (('ball_query_', 'stack_ball_query_', 'furthest_point_sampling_',
      'gather_points_', 'group_points_', 'stack_group_points_', 'knn_',
      'three_nn_', 'three_interpolate_', 'iou3d_', 'roiaware_pool3d_',
      'roipoint_pool3d_', 'points_in_boxes_', 'dynamic_voxelize_',
      'hard_voxelize_', 'dynamic_point_to_voxel_', 'get_indice_pairs_',
      'indice_conv_', 'fused_indice_conv_', 'indice_maxpool_',
      'chamfer_distance_', 'assign_score_withk_'),
     f'point-cloud / 3D ops (mmdet3d); {NO_MODEL}'),
    (('fused_bias_leakyrelu', 'upfirdn2d', 'bias_act', 'filtered_lrelu'),
     f'StyleGAN ops (mmagic); {NO_MODEL}'),
    (('correlation_',), f'Correlation for optical flow (mmflow); {NO_MODEL}'),
    (('pixel_group', 'contour_expand', 'bezier_align_'),
     f'text-detection ops (mmocr PAN / PSENet / ABCNet); {NO_MODEL}'),
    (('deform_roi_pool_',), f'DeformRoIPool; {NO_MODEL}'),
    (('prroi_pool_',), f'PrRoIPool (precise RoI pooling); {NO_MODEL}'),
    (('border_align_',), f'BorderAlign (BorderDet); {NO_MODEL}'),
    (('tin_shift_',), f'TINShift (mmaction2 TIN); {NO_MODEL}'),
)


def needed_by(name: str) -> str:
    """Which op an extension function belongs to and which models need it.

    Example:
        >>> needed_by('psamask_forward')
        "PSAMask, used by mmseg's PSAHead (PSANet)"
    """
    for prefixes, description in NEEDED_BY:
        if name.startswith(prefixes):
            return description
    return NO_MODEL


def unsupported(name: str):
    """A function named ``name`` that raises ``NotImplementedError``.

    Example:
        >>> unsupported('carafe_forward')()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        NotImplementedError: mmcv._ext.carafe_forward is not implemented ...
    """
    def compiled_only(*args, **kwargs):
        raise NotImplementedError(
            f'mmcv._ext.{name} is not implemented on PyTorch/torchvision by '
            f'mmbackbone.mmcv_ops ({needed_by(name)}); a full mmcv build '
            f'(pip install mmcv, not mmcv-lite) provides it')
    compiled_only.__name__ = compiled_only.__qualname__ = name
    return compiled_only
