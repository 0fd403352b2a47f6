"""TIMMBackbone: any timm model behind the mmbackbone contract.

The timm model lives in ``self.timm_model``, so state-dict keys are
``timm_model.<key of the timm model>`` as in mmpretrain 1.2's wrapper.
With ``features_only=True`` that model is timm's own feature extractor
(``timm.create_model(..., features_only=True)``): its keys are timm's keys,
except where timm flattens a top-level ``nn.Sequential`` (``stages.0`` ->
``stages_0``) or wraps the model (``model.`` for ViT-style getters).
Checkpoints with plain timm keys are converted on load.

timm is imported when the class is built, never when mmbackbone is.
"""
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest, normalize_frozen_stages
from .base_backbone import BaseBackbone, FreezablePart

#: Wrappers timm puts around a model in features mode.
_WRAPPER_PREFIXES = ('model.', 'body.')

#: Arguments that belong to TIMMBackbone itself, not to ``timm_kwargs``.
_OWN_ARGUMENTS = {'features_only': 'features_only',
                  'in_chans': 'in_channels', 'out_indices': 'out_indices',
                  'checkpoint_path': 'checkpoint_path'}


def import_timm():
    """Import timm, or fail with the install command."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise ImportError('TIMMBackbone needs timm: pip install timm') from err
    return timm


def check_model_name(timm, model_name) -> None:
    """Raise ``KeyError`` naming close timm names for an unknown name."""
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f'model_name={model_name!r} must be a timm model '
                        f"name such as 'resnet18'")
    if timm.is_model(model_name):
        return
    base = model_name.split('.', 1)[0]
    hint = closest(base, timm.list_models()) or (
        " See timm.list_models('*pattern*') for the names.")
    raise KeyError(f'model_name={model_name!r} is not a timm model.{hint}')


#: Seconds the one connection attempt before a timm download may take.
CONNECT_TIMEOUT = 5.0


@dataclass
class TimmWeights:
    """Where timm gets a model's pretrained weights, and where they are
    cached (what :func:`timm_weights_source` reads from timm's config)."""

    model_name: str  #: as given to TIMMBackbone
    name: str  #: timm's full weights name, ``'resnet18.a1_in1k'``
    urls: List[str]  #: download URLs, in the order timm tries them
    cache: Path  #: the cache folder (HF hub cache, or torch hub's)
    cached: Optional[Path]  #: the cached file, if there is one
    custom_load: bool  #: a model-specific format (``.npz``, ...)
    repo_file: Optional[Tuple[str, str]] = None  #: HF (repo id, file)

    def where_to_put_it(self) -> str:
        if self.repo_file is None:
            target = self.cache / Path(urllib.parse.urlsplit(
                self.urls[0]).path).name
            return f'place it at {target}'
        repo, filename = self.repo_file
        return (f'put it in the Hugging Face cache {self.cache} (`hf '
                f'download {repo} {filename} --cache-dir {self.cache}`)')


def _hf_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now."""
    from huggingface_hub import constants
    value = (os.environ.get('HF_HUB_OFFLINE')
             or os.environ.get('TRANSFORMERS_OFFLINE') or '')
    return bool(constants.HF_HUB_OFFLINE) or \
        value.strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT
                ) -> Optional[str]:
    """Why ``url``'s server cannot be reached, or None when it can.

    One TCP connection attempt (to the proxy, where the environment sets
    one for the URL), so that an offline machine fails in at most
    ``timeout`` seconds instead of going through a client's retries.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ''
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if '://' in proxy
                                        else 'http://' + proxy)
        host, port = proxied.hostname or '', proxied.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f'cannot connect to {host}:{port}: {type(err).__name__}: {err}'


def _safe_alternatives(filename: str) -> List[str]:
    """The safetensors files timm tries before ``filename`` on the hub."""
    if filename.endswith('.safetensors'):
        return []
    if filename == 'pytorch_model.bin':
        return ['model.safetensors']
    if filename == 'open_clip_pytorch_model.bin':
        return ['open_clip_model.safetensors']
    return [filename[:-4] + '.safetensors'] if filename.endswith('.bin') \
        else []


def timm_weights_source(model_name: str, kwargs: dict
                        ) -> Optional[TimmWeights]:
    """Resolve ``timm.create_model(model_name, pretrained=True, **kwargs)``'s
    weights source the way timm does, without touching the network.

    Returns None where timm loads from a local file or a state dict given
    in ``pretrained_cfg``/``pretrained_cfg_overlay`` (nothing to download).

    Raises:
        ValueError: timm has no pretrained weights for the model.
    """
    import torch.hub
    from timm.models import resolve_pretrained_cfg, split_model_name_tag
    from timm.models._builder import _resolve_pretrained_source
    arch, tag = split_model_name_tag(model_name)
    cfg = resolve_pretrained_cfg(
        arch, pretrained_cfg=kwargs.get('pretrained_cfg') or tag or None,
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')
    ).to_dict()
    name = cfg.get('architecture') or arch
    name += f".{cfg['tag']}" if cfg.get('tag') else ''
    load_from, location = _resolve_pretrained_source(cfg)
    if load_from in ('file', 'state_dict', 'local-dir'):
        return None
    custom_load = bool(cfg.get('custom_load'))
    cache_dir = kwargs.get('cache_dir')
    if load_from == 'url':
        cache = Path(cache_dir or Path(torch.hub.get_dir()) / 'checkpoints')
        target = cache / Path(urllib.parse.urlsplit(location).path).name
        return TimmWeights(model_name, name, [location], cache,
                           target if target.is_file() else None, custom_load)
    if load_from != 'hf-hub':
        raise ValueError(
            f'pretrained=True: timm has no pretrained weights for '
            f'{model_name!r}; pick a tagged name from timm.list_pretrained('
            f"'{arch}*') or give a weights file as checkpoint_path")
    from huggingface_hub import constants, try_to_load_from_cache
    repo, filename = (location if isinstance(location, (tuple, list))
                      else (location, 'pytorch_model.bin'))
    repo, _, revision = repo.partition('@')
    revision = revision or None
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    files = _safe_alternatives(filename) + [filename]
    cached = None
    for file in files:
        found = try_to_load_from_cache(repo, file, cache_dir=str(cache),
                                       revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            cached = Path(found)
            break
    urls = [f'{constants.ENDPOINT}/{repo}/resolve/{revision or "main"}/'
            f'{file}' for file in files]
    return TimmWeights(model_name, name, urls, cache, cached, custom_load,
                       (repo, files[0]))


def weights_not_found(source: TimmWeights, reason: str) -> FileNotFoundError:
    """The error for timm weights that are neither cached nor reachable."""
    return FileNotFoundError(
        f'TIMMBackbone({source.model_name!r}, pretrained=True): timm weights '
        f'{source.name!r} are not in the cache {source.cache} and cannot be '
        f'downloaded ({reason}). On a machine with network access download '
        f'{source.urls[0]}, then pass the file as checkpoint_path=... or '
        f'{source.where_to_put_it()}')


def timm_key_candidates(key: str) -> List[str]:
    """Where a plain timm key may live inside a features-mode model."""
    flat = key.replace('.', '_', 1)
    return [key, flat] + [prefix + key for prefix in _WRAPPER_PREFIXES]


@contextmanager
def _capture_timm_load_log() -> Iterator[List[str]]:
    """Collect what timm's builder logs while it loads weights.

    timm loads ``features_only`` weights non-strictly and only logs the
    missing keys; the messages are checked by :class:`TIMMBackbone`.
    """
    logger = logging.getLogger('timm.models._builder')
    messages: List[str] = []

    class _Collect(logging.Handler):

        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _logged_keys(messages: Sequence[str], kind: str) -> List[str]:
    keys: List[str] = []
    for message in messages:
        match = re.search(kind + r' keys \((.*)\) (?:discovered|found)',
                          message, re.S)
        if match and match.group(1):
            keys.extend(k.strip() for k in match.group(1).split(','))
    return keys


def _drop_state_dict_copies(model: nn.Module) -> None:
    """Remove the state dicts timm keeps in ``pretrained_cfg``.

    timm (1.0) stores the resolved ``pretrained_cfg`` on the model and on
    its features wrapper, each a deep copy including a ``state_dict``
    given in ``pretrained_cfg_overlay``: every weight would stay in memory
    twice more for the model's lifetime.
    """
    for module in model.modules():
        for name in ('pretrained_cfg', 'default_cfg'):
            cfg = getattr(module, name, None)
            if isinstance(cfg, dict):
                cfg.pop('state_dict', None)


@MODELS.register_module()
class TIMMBackbone(BaseBackbone):
    """Any `timm <https://github.com/huggingface/pytorch-image-models>`_
    model as a backbone.

    With ``features_only=True`` (the default) the outputs are the feature
    levels timm reports in ``feature_info`` (for CNNs the stem and each
    stage; for ViT-style models each block, as NCHW maps through timm's
    ``forward_intermediates``). ``out_indices`` index into those levels
    (negative ones count from the last); by default the levels timm
    itself returns. ``out_channels``/``out_strides`` come from
    ``feature_info``. NHWC outputs (Swin and friends) are permuted to NCHW.

    With ``features_only=False`` the output is the model's pooled
    pre-logits vector ``forward_head(forward_features(x), pre_logits=True)``
    as a one-tuple, with stride ``None``.

    Weights, three ways:

    - ``checkpoint_path``: a local file (or URL) of timm keys, read by
      mmbackbone's reader (the format from the bytes, never the suffix),
      then loaded by timm's own loader (``pretrained=True`` with
      ``pretrained_cfg_overlay=dict(state_dict=...)``), so the model's filter
      (e.g. ViT ``pos_embed`` resizing), input-channel adaptation and the
      classifier drop apply, and it works with ``features_only=True``
      (plain ``timm.create_model(checkpoint_path=...)`` does not). It
      loads whether ``pretrained`` is True or False. The file is read
      with ``weights_only=True``; a key of the features model that the
      file lacks is an error.
    - ``pretrained=True`` without a path: timm's weights, from the cache
      (the Hugging Face hub cache, or torch hub's for URL weights) without
      any network access when they are there, else timm's download. With
      nothing cached and no network (or ``HF_HUB_OFFLINE=1``), one
      connection attempt of at most 5 s, then a ``FileNotFoundError``
      naming the weights, the URL to download and where to put the file.
    - ``init_cfg=dict(type='Pretrained', checkpoint=...)``: mmbackbone's
      loader, at ``init_weights()``; files of ``timm_model.*`` keys
      (ours, mmpretrain's) and of plain timm keys both load.

    Args:
        model_name (str): a timm model name (``timm.list_models()``), with
            an optional pretrained tag (``'resnet18.a1_in1k'``).
        features_only (bool): feature maps (True) or the pooled vector.
            Default: True.
        pretrained (bool): load timm's pretrained weights. Default: False.
        checkpoint_path (str): a weights file to load through timm.
        in_channels (int): input channels (timm's ``in_chans``). Default: 3.
        out_indices (Sequence[int] | int, optional): feature levels to
            output; default timm's own default for the model.
        frozen_stages (int | str): ``k`` freezes everything that feeds
            feature level ``k`` (the modules up to and including that
            level's module, in module order, and the model's own
            parameters such as ``cls_token``); ``'all'`` everything.
            With ``features_only=False`` it counts the same levels.
            Default: -1.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        init_cfg (dict | list, optional): mmengine init config.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``,
            ``drop_path_rate``, ...).

    Example:
        >>> import torch
        >>> from mmbackbone.models import TIMMBackbone
        >>> model = TIMMBackbone('resnet18', out_indices=(1, -1)).eval()
        >>> model.out_channels, model.out_strides
        ((64, 512), (4, 32))
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 64, 16, 16)
        (1, 512, 2, 2)
    """

    zoo_configs = {
        'resnet18': dict(model_name='resnet18'),
        'mobilenetv3_small_050': dict(model_name='mobilenetv3_small_050'),
        'efficientnet_b0': dict(model_name='efficientnet_b0'),
        'convnext_atto': dict(model_name='convnext_atto'),
        'vit_tiny_patch16_224': dict(model_name='vit_tiny_patch16_224',
                                     img_size=64),
        'resnet18-pooled': dict(model_name='resnet18', features_only=False),
    }

    def __init__(self,
                 model_name: str,
                 features_only: bool = True,
                 pretrained: bool = False,
                 checkpoint_path: str = '',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int], None] = None,
                 frozen_stages: Union[int, str] = -1,
                 norm_eval: bool = False,
                 init_cfg: Union[dict, List[dict], None] = None,
                 **timm_kwargs):
        timm = import_timm()
        super().__init__(init_cfg)
        for name, value in (('features_only', features_only),
                            ('pretrained', pretrained)):
            if not isinstance(value, bool):
                hint = (' (give a weights file as checkpoint_path)'
                        if name == 'pretrained' else '')
                raise TypeError(f'{name}={value!r} must be True or False'
                                f'{hint}')
        if isinstance(checkpoint_path, os.PathLike):
            checkpoint_path = os.fspath(checkpoint_path)
        if not isinstance(checkpoint_path, str):
            raise TypeError(f'checkpoint_path={checkpoint_path!r} must be a '
                            f"file path or '' (no file)")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) \
                or in_channels < 1:
            raise ValueError(f'in_channels={in_channels!r} must be a '
                             f'positive int')
        for key, own in _OWN_ARGUMENTS.items():
            if key in timm_kwargs:
                raise TypeError(f'{key}={timm_kwargs[key]!r} is not passed '
                                f'through to timm; use the TIMMBackbone '
                                f'argument {own!r}')
        check_model_name(timm, model_name)
        self.model_name = model_name
        self.features_only = features_only
        self.in_channels = in_channels
        self.checkpoint_path = checkpoint_path
        kwargs = dict(timm_kwargs, in_chans=in_channels)

        if features_only:
            levels, default = self._probe_levels(timm, kwargs)
            self._setup_outputs([f['num_chs'] for f in levels],
                                [f['reduction'] for f in levels],
                                default if out_indices is None
                                else out_indices, frozen_stages, norm_eval)
            built = tuple(sorted(set(self.out_indices)))
            kwargs.update(features_only=True, out_indices=built)
            self._timm_positions = tuple(built.index(i)
                                         for i in self.out_indices)
        else:
            kwargs.setdefault('num_classes', 0)
        self.timm_model = self._create(timm, pretrained, checkpoint_path,
                                       kwargs)
        # timm initialised (or loaded) the weights; mmengine must not call
        # the timm model's own init_weights() again.
        self.timm_model.is_init = True

        if features_only:
            levels = list(self.timm_model.feature_info.info)
            fmt = getattr(self.timm_model, 'output_fmt', 'NCHW')
            self._nhwc = str(getattr(fmt, 'value', fmt)) == 'NHWC'
        else:
            if getattr(self.timm_model, 'num_classes', 0):
                self.timm_model.reset_classifier(0)
            width = (getattr(self.timm_model, 'head_hidden_size', None)
                     or self.timm_model.num_features)
            self._setup_outputs([width], [None],
                                (0, ) if out_indices is None else out_indices,
                                -1, norm_eval)
            levels = list(getattr(self.timm_model, 'feature_info', None)
                          or [])
            if not levels and frozen_stages not in (-1, 'all'):
                raise ValueError(
                    f'frozen_stages={frozen_stages!r}: timm model '
                    f'{model_name!r} reports no feature_info levels; use -1 '
                    f"or 'all'")
            normalize_frozen_stages(frozen_stages, len(levels))
            self.frozen_stages = frozen_stages
            self._nhwc = False
        self._level_paths = self._resolve_level_paths(
            [f['module'] for f in levels])
        self._freeze_stages()

    # ------------------------------------------------------------ building
    def _probe_levels(self, timm, kwargs: dict
                      ) -> Tuple[List[dict], Tuple[int, ...]]:
        """Every feature level timm offers and timm's default out_indices.

        Read from a features model built on the meta device (no memory,
        no weights), so the real one can be built once, with just the
        levels needed.
        """
        errors = []
        for device in ('meta', 'cpu'):
            try:
                with warnings.catch_warnings(), torch.device(device):
                    warnings.simplefilter('ignore')
                    probe = timm.create_model(self.model_name,
                                              features_only=True,
                                              pretrained=False, **kwargs)
                break
            except TypeError as err:
                raise TypeError(f'timm model {self.model_name!r} rejected '
                                f'the arguments {sorted(kwargs)}: {err}'
                                ) from err
            except Exception as err:  # timm raises asserts, RuntimeErrors
                errors.append(f'{type(err).__name__}: {err}')
        else:
            raise ValueError(
                f'timm model {self.model_name!r} cannot build with '
                f'features_only=True ({errors[-1]}); use features_only=False '
                f'for its pooled features')
        info = probe.feature_info
        levels = [dict(f) for f in info.info]
        default = tuple(int(i) % len(levels) for i in info.out_indices)
        return levels, default

    def _create(self, timm, pretrained: bool, checkpoint_path: str,
                kwargs: dict) -> nn.Module:
        """``timm.create_model``, loading weights through timm's loader."""
        if not checkpoint_path:
            if not pretrained:
                return timm.create_model(self.model_name, pretrained=False,
                                         **kwargs)
            return self._create_pretrained(timm, kwargs)
        from mmbackbone.checkpoint import resolve_checkpoint
        return self._create_from_file(timm, resolve_checkpoint(
            checkpoint_path), kwargs, f'checkpoint_path={checkpoint_path!r}')

    def _create_pretrained(self, timm, kwargs: dict) -> nn.Module:
        """``pretrained=True``: the cached file, else timm's download after
        one quick check that its server can be reached."""
        try:
            source = timm_weights_source(self.model_name, kwargs)
        except ImportError:  # another timm layout: let timm do it all
            source = None
        if source is not None and source.cached is not None:
            return self._create_from_file(
                timm, source.cached, kwargs, f'cached timm weights '
                f'{source.name!r} ({source.cached})', source.custom_load)
        if source is not None:
            hf = source.repo_file is not None
            reason = ('HF_HUB_OFFLINE is set' if hf and _hf_offline()
                      else unreachable(source.urls[0]))
            if reason:
                raise weights_not_found(source, reason)
        try:
            with _capture_timm_load_log() as messages:
                model = timm.create_model(self.model_name, pretrained=True,
                                          **kwargs)
        except OSError as err:  # hub and urllib errors are OSErrors
            if source is None:
                raise
            raise weights_not_found(source, f'{type(err).__name__}: '
                                    f'{str(err)[:300]}') from err
        self._check_timm_load(model, messages, 'timm pretrained weights')
        return model

    def _create_from_file(self, timm, path: Path, kwargs: dict, what: str,
                          custom_load: bool = False) -> nn.Module:
        """Build the model and load ``path`` through timm's loader.

        The file is read once, by :func:`~mmbackbone.checkpoint
        .read_state_dict` (format from the bytes, limits checked), and timm
        gets the tensors read (``pretrained_cfg_overlay=dict(state_dict=
        ...)``), never the path: timm picks its reader by the file's suffix,
        so a ``.pth`` named ``.safetensors`` would reach safetensors' reader
        and fail with its own error, and a file changed after our read
        would load unchecked. timm's model-specific formats
        (``custom_load``, numpy ``.npz`` read without pickle) keep timm's
        reader.
        """
        from mmbackbone.checkpoint import CheckpointError, read_state_dict
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {},
                       file=str(path))
        if custom_load:  # timm's model-specific reader (numpy, no pickle)
            overlay['custom_load'] = True
        else:
            # state_dict outranks every other source in timm's resolution
            # unless source names the hub or a folder: cleared
            overlay.update(state_dict=dict(read_state_dict(path)),
                           source=None, custom_load=False)
        try:
            with _capture_timm_load_log() as messages:
                model = timm.create_model(self.model_name, pretrained=True,
                                          pretrained_cfg_overlay=overlay,
                                          **kwargs)
        except TypeError as err:
            if 'unexpected keyword argument' in str(err):
                raise  # a timm argument, not the file
            raise self._load_error(what, path, err) from err
        except CheckpointError:
            raise
        except Exception as err:  # timm's filters raise anything
            raise self._load_error(what, path, err) from err
        finally:
            overlay.pop('state_dict', None)
        _drop_state_dict_copies(model)
        self._check_timm_load(model, messages, f'checkpoint {path}')
        return model

    def _load_error(self, what: str, path: Path, err: Exception):
        from mmbackbone.checkpoint import CheckpointError
        text = str(err)[:600].rstrip('.') or type(err).__name__
        return CheckpointError(
            f'{what}: timm could not load {path} into {self.model_name!r}: '
            f'{type(err).__name__}: {text}. checkpoint_path takes plain '
            f'timm keys; for a file of timm_model.* keys use '
            f"init_cfg=dict(type='Pretrained', checkpoint=...)")

    def _check_timm_load(self, model: nn.Module, messages: List[str],
                         source: str) -> None:
        """Fail on weights the built model needs but the file lacks."""
        target = set(model.state_dict())
        missing = [k for k in _logged_keys(messages, 'Missing')
                   if any(c in target for c in timm_key_candidates(k))]
        if missing:
            from mmbackbone.checkpoint import CheckpointError
            raise CheckpointError(
                f'{source}: {len(missing)} tensor(s) of {self.model_name!r} '
                f'are not in the file (e.g. {missing[:5]}); it is for another '
                f'architecture or config')
        unexpected = _logged_keys(messages, 'Unexpected')
        summary = (f'Loaded {source} into TIMMBackbone({self.model_name!r}) '
                   f'through timm')
        if unexpected:
            summary += (f'; {len(unexpected)} unexpected keys ignored: '
                        f'{unexpected[:8]}')
        print_log(summary, logger='current',
                  level=logging.WARNING if unexpected else logging.INFO)

    def _resolve_level_paths(self, names: Sequence[str]
                             ) -> List[Optional[str]]:
        """Module path of each feature level in ``self.timm_model``
        (``None`` for levels timm pruned because no output needs them)."""
        modules = dict(self.timm_model.named_modules())
        paths = []
        for name in names:
            found = [c for c in timm_key_candidates(name) if c in modules]
            paths.append(found[0] if found else None)
        return paths

    @property
    def num_levels(self) -> int:
        """How many feature levels the timm model reports."""
        return len(self._level_paths)

    # ------------------------------------------------------------ freezing
    def stage_parts(self) -> List[List[FreezablePart]]:
        """Parts feeding each feature level, in the model's module order.

        Entry ``i`` holds the modules after level ``i - 1``'s module up to
        and including level ``i``'s; the model's direct parameters
        (``cls_token``, ``pos_embed``) go with entry 0. Modules after the
        last level (final norm, head) are in no entry.
        """
        count = self.num_levels
        parts: List[List[FreezablePart]] = [[] for _ in range(count + 1)]
        targets = {path: i for i, path in enumerate(self._level_paths)
                   if path is not None}
        ancestors = {path.rsplit('.', n)[0] for path in targets
                     for n in range(1, path.count('.') + 1)}
        current = 0

        def visit(module: nn.Module, prefix: str) -> None:
            nonlocal current
            parts[min(current, count)].extend(
                module.parameters(recurse=False))
            for name, child in module.named_children():
                path = prefix + name
                if path in targets:
                    index = max(targets[path], current)
                    parts[min(index, count)].append(child)
                    current = index + 1
                elif path in ancestors:
                    visit(child, path + '.')
                else:
                    parts[min(current, count)].append(child)

        visit(self.timm_model, '')
        return parts[:count]

    # ------------------------------------------------------------- loading
    def classifier_names(self) -> Tuple[str, ...]:
        """timm names of the classifier (dropped when loading timm keys)."""
        cfg = dict(getattr(self.timm_model, 'pretrained_cfg', None) or {})
        names = cfg.get('classifier')
        if names is None and cfg.get('architecture'):
            from timm.models import get_pretrained_cfg
            full = cfg['architecture'] + (f".{cfg['tag']}" if cfg.get('tag')
                                          else '')
            found = get_pretrained_cfg(full)
            names = getattr(found, 'classifier', None)
        if not names:
            return ()
        return (names, ) if isinstance(names, str) else tuple(names)

    def adapt_state_dict(self, state_dict: Dict[str, Tensor]):
        """Also resize ViT-style ``pos_embed`` to the model's grid."""
        state_dict, notes = super().adapt_state_dict(state_dict)
        target = self.state_dict()
        for key in [k for k in state_dict if k.endswith('pos_embed')]:
            if key not in target or state_dict[key].ndim != 3 or \
                    state_dict[key].shape == target[key].shape:
                continue
            owner = self.get_submodule(key.rpartition('.')[0])
            grid = getattr(getattr(owner, 'patch_embed', None), 'grid_size',
                           None)
            if grid is None:
                continue
            from timm.layers import resample_abs_pos_embed
            prefix = (0 if getattr(owner, 'no_embed_class', False) else
                      getattr(owner, 'num_prefix_tokens', 1))
            old = state_dict[key]
            state_dict = dict(state_dict)
            state_dict[key] = resample_abs_pos_embed(
                old, new_size=list(grid), num_prefix_tokens=prefix)
            notes.append(f'{key}: {tuple(old.shape)} -> '
                         f'{tuple(state_dict[key].shape)}')
        return state_dict, notes

    # ------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if not self.features_only:
            feats = self.timm_model.forward_features(x)
            return (self.timm_model.forward_head(feats, pre_logits=True), )
        feats = self.timm_model(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        outs = [feats[i] for i in self._timm_positions]
        if self._nhwc:
            outs = [out.permute(0, 3, 1, 2) for out in outs]
        return tuple(outs)


@register_converter('timm', 'TIMMBackbone')
def timm_backbone_from_timm(state_dict, model):
    """Plain timm keys -> ``timm_model.*`` keys of the built model.

    Follows timm's features-mode renames (``stages.0`` -> ``stages_0``,
    ``model.`` / ``body.`` wrappers) and drops the classifier; keys the
    model does not have are kept (and reported as unexpected).
    """
    if any(k.startswith('timm_model.') for k in state_dict):
        raise KeyError('already TIMMBackbone keys')
    target = model.state_dict()
    classifier = tuple(name + '.' for name in model.classifier_names())
    converted = {}
    for key, value in state_dict.items():
        found = [c for c in timm_key_candidates(key)
                 if 'timm_model.' + c in target]
        if found:
            converted['timm_model.' + found[0]] = value
        elif not (classifier and key.startswith(classifier)):
            converted['timm_model.' + key] = value
    return converted
