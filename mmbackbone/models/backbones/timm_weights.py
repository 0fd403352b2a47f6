"""How :class:`TIMMBackbone` gets a timm model's weights.

:func:`create_timm_model` builds the timm model and loads, in this order,
a given weights file, timm's cached pretrained weights, or timm's download
after one quick reachability check. Files are read by mmbackbone's reader
and the tensors handed to timm's own loader; a load that misses a tensor
of the model is an error. Nothing here touches the network until a
download is due, and timm / huggingface_hub are imported only when used.

:class:`TIMMBackbone` takes weights three ways:

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
"""
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from torch import nn

#: Wrappers timm puts around a model in features mode.
WRAPPER_PREFIXES = ('model.', 'body.')


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
    # custom_load names the format of the URL's file (an .npz); the hub
    # holds ordinary state dicts (timm reads them so), except 'hf'
    custom_load = cfg.get('custom_load') or False
    cache_dir = kwargs.get('cache_dir')
    if load_from == 'url':
        cache = Path(cache_dir or Path(torch.hub.get_dir()) / 'checkpoints')
        target = cache / Path(urllib.parse.urlsplit(location).path).name
        return TimmWeights(model_name, name, [location], cache,
                           target if target.is_file() else None,
                           bool(custom_load))
    if load_from != 'hf-hub':
        raise ValueError(
            f'pretrained=True: timm has no pretrained weights for '
            f'{model_name!r}; pick a tagged name from timm.list_pretrained('
            f"'{arch}*') or give a weights file as checkpoint_path")
    if custom_load == 'hf':  # timm's model-specific hub reader
        return None
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
    return TimmWeights(model_name, name, urls, cache, cached, False,
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
    return [key, flat] + [prefix + key for prefix in WRAPPER_PREFIXES]


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



def create_timm_model(timm, model_name: str, pretrained: bool,
                      checkpoint_path: str, kwargs: dict) -> nn.Module:
    """``timm.create_model``, loading weights through timm's loader."""
    if not checkpoint_path:
        if not pretrained:
            return timm.create_model(model_name, pretrained=False,
                                     **kwargs)
        return _create_pretrained(timm, model_name, kwargs)
    from mmbackbone.checkpoint import resolve_checkpoint
    return _create_from_file(timm, model_name, resolve_checkpoint(
        checkpoint_path), kwargs, f'checkpoint_path={checkpoint_path!r}')

def _create_pretrained(timm, model_name: str, kwargs: dict) -> nn.Module:
    """``pretrained=True``: the cached file, else timm's download after
    one quick check that its server can be reached."""
    try:
        source = timm_weights_source(model_name, kwargs)
    except ImportError:  # another timm layout: let timm do it all
        source = None
    if source is not None and source.cached is not None:
        return _create_from_file(
            timm, model_name, source.cached, kwargs, f'cached timm weights '
            f'{source.name!r} ({source.cached})', source.custom_load)
    if source is not None:
        hf = source.repo_file is not None
        reason = ('HF_HUB_OFFLINE is set' if hf and _hf_offline()
                  else unreachable(source.urls[0]))
        if reason:
            raise weights_not_found(source, reason)
    try:
        with _capture_timm_load_log() as messages:
            model = timm.create_model(model_name, pretrained=True,
                                      **kwargs)
    except OSError as err:  # hub and urllib errors are OSErrors
        if source is None:
            raise
        raise weights_not_found(source, f'{type(err).__name__}: '
                                f'{str(err)[:300]}') from err
    _check_timm_load(model_name, model, messages, 'timm pretrained weights')
    return model

def _create_from_file(timm, model_name: str, path: Path, kwargs: dict,
                      what: str, custom_load: bool = False) -> nn.Module:
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
            model = timm.create_model(model_name, pretrained=True,
                                      pretrained_cfg_overlay=overlay,
                                      **kwargs)
    except TypeError as err:
        if 'unexpected keyword argument' in str(err):
            raise  # a timm argument, not the file
        raise _load_error(model_name, what, path, err) from err
    except CheckpointError:
        raise
    except Exception as err:  # timm's filters raise anything
        raise _load_error(model_name, what, path, err) from err
    finally:
        overlay.pop('state_dict', None)
    _drop_state_dict_copies(model)
    _check_timm_load(model_name, model, messages, f'checkpoint {path}')
    return model

def _load_error(model_name: str, what: str, path: Path, err: Exception):
    from mmbackbone.checkpoint import CheckpointError
    text = str(err)[:600].rstrip('.') or type(err).__name__
    return CheckpointError(
        f'{what}: timm could not load {path} into {model_name!r}: '
        f'{type(err).__name__}: {text}. checkpoint_path takes plain '
        f'timm keys; for a file of timm_model.* keys use '
        f"init_cfg=dict(type='Pretrained', checkpoint=...)")

def _check_timm_load(model_name: str, model: nn.Module,
                     messages: List[str], source: str) -> None:
    """Fail on weights the built model needs but the file lacks."""
    target = set(model.state_dict())
    missing = [k for k in _logged_keys(messages, 'Missing')
               if any(c in target for c in timm_key_candidates(k))]
    if missing:
        from mmbackbone.checkpoint import CheckpointError
        raise CheckpointError(
            f'{source}: {len(missing)} tensor(s) of {model_name!r} '
            f'are not in the file (e.g. {missing[:5]}); it is for another '
            f'architecture or config')
    unexpected = _logged_keys(messages, 'Unexpected')
    summary = (f'Loaded {source} into TIMMBackbone({model_name!r}) '
               f'through timm')
    if unexpected:
        summary += (f'; {len(unexpected)} unexpected keys ignored: '
                    f'{unexpected[:8]}')
    print_log(summary, logger='current',
              level=logging.WARNING if unexpected else logging.INFO)
