"""mmpretrain 1.2.0's own backbone tests, run against mmbackbone.

What is here
    ``test_resnet.py``, ``test_vision_transformer.py``, ``test_regnet.py``,
    ``test_cspnet.py`` and ``test_timm_backbone.py`` are mmpretrain v1.2.0's
    ``tests/test_models/test_backbones/`` files of the same names, and
    ``utils.py`` is that directory's helper (``timm_resize_pos_embed``),
    copied verbatim. 39 test functions in all: ResNet 9, CSP family 8,
    RegNet 17 (two tests over 8 archs, plus one), VisionTransformer 3,
    TIMMBackbone 2. They show that a user who swaps ``mmpretrain.models``
    for ``mmbackbone.models`` finds the same classes, arguments, defaults,
    attributes and semantics.

What was changed
    Imports only, and nothing else:

    * ``from mmpretrain.models.backbones import X`` became
      ``from mmbackbone.models import X``;
    * ``from mmpretrain.models.backbones.<family> import Y`` (building blocks
      and helpers such as ``BasicBlock``, ``Bottleneck``, ``ResLayer``,
      ``get_expansion``, ``CSPNet``, ``DarknetBottleneck``) became
      ``from mmbackbone.models.backbones.<family> import Y``: the module
      path mirrors mmpretrain's, so a name mmbackbone does not yet provide
      there makes the file fail to import rather than being stood in for;
    * the files that expect mmpretrain's bare ``AssertionError`` for a bad
      argument import ``AssertionError`` from this module (below).

    Assertions, inputs, sizes and expected values are mmpretrain's, untouched.
    Third-party imports (``mmcv.cnn.ConvModule``, mmengine's ``_BatchNorm``,
    ``timm``) are kept: those tests check that our layers are those types.

The one shim: named errors accepted where mmpretrain asserts
    mmpretrain rejects bad arguments with bare ``assert`` statements;
    mmbackbone raises a named ``ValueError``, ``TypeError`` or ``KeyError``
    that says what was wrong and which values are valid. A test module that
    does ``from .conftest import AssertionError`` gets the class below in
    place of the builtin for that module only, so its unchanged
    ``pytest.raises(AssertionError)`` and
    ``self.assertRaisesRegex(AssertionError, pattern)`` accept any of
    :data:`NAMED_ARGUMENT_ERRORS`. Only the exception *type* is widened: a
    ``match``/regex pattern must still be found in our message. The class
    subclasses the builtin, so the test module's own ``assert`` statements
    (which pytest rewrites to raise the module's ``AssertionError``) still
    raise a real ``AssertionError``.

Downloads, served locally
    Three tests load pretrained weights as mmpretrain has them:
    ``test_resnet`` (``torchvision://resnet50``) and the TIMMBackbone tests
    (``efficientnet_b1`` and ``vit_tiny_patch16_224`` with
    ``pretrained=True``). mmpretrain skips none of them, so neither do we;
    but the tests run offline, so the "downloads" are made here: random
    weights (seeded) of the real architectures, built once per session by
    torchvision and timm, put where the library finds them offline:

    * ``torchvision://resnet50``: the torch hub cache file of its URL
      (:func:`mmbackbone.checkpoint.download.cache_path`), as a download
      leaves it; the first load records its SHA-256 as any first download
      does;
    * timm weights: ``model.safetensors`` in the Hugging Face hub cache
      layout (``models--timm--<name>.<tag>/snapshots/<commit>/`` and
      ``refs/main``) under the repository timm's ``pretrained_cfg`` names
      (``hf_hub_id``).

    An autouse module-scoped fixture points the torch hub directory
    (``TORCH_HOME`` and ``torch.hub``'s own setting) and the Hugging Face
    cache (``HF_HOME``, ``HF_HUB_CACHE``, ``huggingface_hub.constants``) at
    those folders, with ``HF_HUB_OFFLINE`` on, for the modules of this
    directory only, and restores them after each module: the rest of the
    suite, in the same process, sees its own settings.
"""
import builtins
from pathlib import Path
from typing import Dict

import pytest
import torch

#: torchvision models served under ``torchvision://NAME``.
TORCHVISION_WEIGHTS = ('resnet50', )
#: timm models whose default pretrained weights are served.
TIMM_WEIGHTS = ('efficientnet_b1', 'vit_tiny_patch16_224')
#: The commit id the Hugging Face cache entries are filed under.
HF_COMMIT = '0123456789abcdef0123456789abcdef01234567'

#: Errors mmbackbone raises for a bad argument where mmpretrain asserts.
NAMED_ARGUMENT_ERRORS = (builtins.AssertionError, ValueError, TypeError,
                         KeyError)


class _AcceptsNamedArgumentErrors(type):
    """Metaclass: instance and subclass checks accept every named error."""

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, NAMED_ARGUMENT_ERRORS)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, NAMED_ARGUMENT_ERRORS)


class AssertionError(builtins.AssertionError,  # noqa: A001
                     metaclass=_AcceptsNamedArgumentErrors):
    """``AssertionError`` for the ported modules: also matches named errors.

    ``pytest.raises`` checks with ``isinstance`` and unittest's
    ``assertRaises`` with ``issubclass``; both accept
    ``AssertionError``, ``ValueError``, ``TypeError`` and ``KeyError``.
    """


# ------------------------------------------------------ offline downloads
def _random_state_dict(build, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The state dict of ``build()``, initialised from ``seed`` (the global
    RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.contiguous() for k, v in build().state_dict().items()}


def _put_torchvision_weights(name: str) -> Path:
    """Save random ``name`` weights where ``torchvision://name`` is cached
    (call with the torch hub directory patched)."""
    import torchvision
    from mmengine.runner.checkpoint import get_torchvision_models

    from mmbackbone.checkpoint.download import cache_path
    path = cache_path(get_torchvision_models()[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    builder = getattr(torchvision.models, name)
    torch.save(_random_state_dict(lambda: builder(weights=None)), path)
    return path


def _put_timm_weights(name: str, hf_cache: Path) -> Path:
    """Save random ``name`` weights as timm's default pretrained tag's
    Hugging Face repository file, in the hub cache layout."""
    import timm
    from safetensors.torch import save_file
    cfg = timm.models.get_pretrained_cfg(name)
    if not cfg.hf_hub_id or '@' in cfg.hf_hub_id:
        raise ValueError(f'timm serves {name!r} from {cfg.hf_hub_id!r}; '
                         f'only a plain Hugging Face repository id is laid '
                         f'out here')
    filename = cfg.hf_hub_filename or 'model.safetensors'
    folder = hf_cache / ('models--' + cfg.hf_hub_id.replace('/', '--'))
    (folder / 'refs').mkdir(parents=True, exist_ok=True)
    (folder / 'refs' / 'main').write_text(HF_COMMIT)
    snapshot = folder / 'snapshots' / HF_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    state_dict = _random_state_dict(
        lambda: timm.create_model(name, pretrained=False))
    save_file(state_dict, str(snapshot / filename))
    return snapshot / filename


def _point_caches_at(patch: pytest.MonkeyPatch, root: Path) -> None:
    """Route the torch hub and Hugging Face caches to folders under root,
    offline."""
    from huggingface_hub import constants
    torch_home, hf_home = root / 'torch', root / 'huggingface'
    hf_cache = hf_home / 'hub'
    patch.setenv('TORCH_HOME', str(torch_home))
    patch.setattr(torch.hub, '_hub_dir', str(torch_home / 'hub'))
    patch.setenv('HF_HOME', str(hf_home))
    patch.setenv('HF_HUB_CACHE', str(hf_cache))
    patch.setenv('HF_HUB_OFFLINE', '1')
    patch.setattr(constants, 'HF_HOME', str(hf_home))
    patch.setattr(constants, 'HF_HUB_CACHE', str(hf_cache))
    if hasattr(constants, 'HUGGINGFACE_HUB_CACHE'):
        patch.setattr(constants, 'HUGGINGFACE_HUB_CACHE', str(hf_cache))
    patch.setattr(constants, 'HF_HUB_OFFLINE', True)


@pytest.fixture(scope='session')
def offline_weights_root(tmp_path_factory) -> Path:
    """A folder holding the torch hub and Hugging Face caches with the
    weights the ported tests download (random, seeded), built once."""
    root = tmp_path_factory.mktemp('mmpretrain_compat_downloads')
    with pytest.MonkeyPatch.context() as patch:
        _point_caches_at(patch, root)
        for name in TORCHVISION_WEIGHTS:
            _put_torchvision_weights(name)
        for name in TIMM_WEIGHTS:
            _put_timm_weights(name, root / 'huggingface' / 'hub')
    return root


@pytest.fixture(scope='module', autouse=True)
def offline_downloads(offline_weights_root):
    """Serve the ported tests' downloads from :func:`offline_weights_root`
    while one module of this directory runs; restore the settings after."""
    with pytest.MonkeyPatch.context() as patch:
        _point_caches_at(patch, offline_weights_root)
        yield offline_weights_root
