"""``SafeLoadRunner``: mmengine's Runner, reading checkpoints through us.

mmengine's ``Runner.load_or_resume`` (called by ``train``, ``val`` and
``test``) reads every checkpoint through two methods, ``resume`` and
``load_checkpoint``; overriding those two in a registered subclass covers
every route by which the Runner loads weights, without patching mmengine
for the rest of the process (``import mmbackbone`` changes nothing outside
the package). tools/train.py and tools/test.py build it through
:func:`build_runner`; configs may name it as ``runner_type='SafeLoadRunner'``
(``mmbackbone.registry.RUNNERS`` imports this module lazily).

``SafeLoadRunner.resume`` is an adapted copy of mmengine 0.10.7's
``Runner.resume`` (:mod:`mmbackbone.engine.upstream` checks the installed
version when this module is imported).

Example:
    >>> from mmengine.config import Config
    >>> cfg = use_safe_load_runner(Config(dict()))
    >>> cfg.runner_type
    'SafeLoadRunner'
"""
import copy
import pickle
from collections.abc import Mapping
from typing import Any, Sequence, Tuple

from mmengine.device import get_device
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmbackbone.checkpoint.io import CheckpointError
from mmbackbone.registry import RUNNERS

from .resume import read_training_checkpoint
from .state_checks import (CheckpointMismatchError, check_optimizer_state,
                           load_model_state, model_state_from)
from .upstream import check_mmengine_version

check_mmengine_version(__name__)

RUNNER_NAMES = ('SafeLoadRunner', 'mmbackbone.SafeLoadRunner')


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


#: run timestamps this process has used (see SafeLoadRunner.setup_env)
_TIMESTAMPS_USED = set()


def _valid_meta(meta: Any) -> bool:
    return isinstance(meta, Mapping) and all(
        isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)
        and meta.get(k) >= 0 for k in ('epoch', 'iter'))


@RUNNERS.register_module()
class SafeLoadRunner(Runner):
    """mmengine's ``Runner`` that checks what it loads.

    ``load_checkpoint`` (``load_from``, tools/test.py) and ``resume``
    (``--resume``) read with
    :func:`~mmbackbone.engine.resume.read_training_checkpoint` and load the
    model with :func:`~mmbackbone.engine.resume.load_model_state` (strict
    by default); ``resume`` checks the optimizer state with
    :func:`~mmbackbone.engine.resume.check_optimizer_state` before loading
    it. Everything else is mmengine's.

    ``resume`` follows mmengine 0.10.7's ``Runner.resume`` except that it
    never builds a config from the file: mmengine parses
    ``meta['config']`` as a Python config, which runs it, and mmengine
    itself never writes that key (it writes ``meta['cfg']``), so only a
    crafted file has it.
    """

    def setup_env(self, env_cfg: dict) -> None:
        """mmengine's ``setup_env``, with a timestamp unique in the process.

        mmengine names a run's log dir, logger, message hub and visualizer
        by its start time in whole seconds, and returns the *existing*
        instance of that name: two runs started in one second in one
        process (a notebook, a resumed run followed by another) would
        write to the first one's log and share its scalar history. A
        repeated timestamp gets a ``_2``, ``_3``... suffix (every rank
        runs the same sequence of runners, so the ranks agree).
        """
        super().setup_env(env_cfg)
        stamp, count = self._timestamp, 1
        while self._timestamp in _TIMESTAMPS_USED:
            count += 1
            self._timestamp = f'{stamp}_{count}'
        _TIMESTAMPS_USED.add(self._timestamp)

    def load_checkpoint(self, filename: str, map_location: Any = 'cpu',
                        strict: bool = True,
                        revise_keys: Sequence[Tuple[str, str]] = (
                            (r'^module\.', ''), )) -> dict:
        """Read ``filename`` safely and load its model state (strictly).

        Raises:
            FileNotFoundError, CheckpointError: naming the file.
        """
        what = '--resume' if self._resume else 'load_from'
        checkpoint = read_training_checkpoint(
            filename, map_location=map_location, what=what)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        state = model_state_from(checkpoint, filename, revise_keys)
        load_model_state(_unwrap(self.model), state, filename, strict=strict)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location: Any = 'default') -> None:
        """Resume model, optimizer, schedulers and counters, all checked."""
        if map_location == 'default':
            map_location = get_device()
        checkpoint = self.load_checkpoint(filename, map_location=map_location)
        meta = checkpoint.get('meta')
        if not _valid_meta(meta) or not checkpoint.get('message_hub'):
            raise CheckpointError(
                f'--resume: checkpoint {filename} is not a training '
                f'checkpoint (no meta epoch/iter or message_hub): it holds '
                f'weights only. Start from it with load_from instead of '
                f'--resume')
        resume_optimizer = resume_optimizer and 'optimizer' in checkpoint
        if resume_optimizer:
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
            check_optimizer_state(self.optim_wrapper,
                                  checkpoint['optimizer'], filename)
        self.train_loop._epoch = meta['epoch']
        self.train_loop._iter = meta['iter']

        resumed_seed = meta.get('seed', None)
        current_seed = self._randomness_cfg.get('seed')
        if resumed_seed is not None and resumed_seed != current_seed:
            if current_seed is not None:
                self.logger.warning(
                    f'The value of random seed in the checkpoint '
                    f'"{resumed_seed}" is different from the value in '
                    f'`randomness` config "{current_seed}"')
            self._randomness_cfg.update(seed=resumed_seed)
            self.set_randomness(**self._randomness_cfg)

        resumed_meta = meta.get('dataset_meta', None)
        dataset_meta = getattr(self.train_dataloader.dataset, 'metainfo',
                               None)
        if pickle.dumps(resumed_meta) != pickle.dumps(dataset_meta):
            self.logger.warning(
                'The dataset metainfo from the resumed checkpoint is '
                'different from the current training dataset, please check '
                'the correctness of the checkpoint or the training dataset.')

        self.message_hub.load_state_dict(checkpoint['message_hub'])
        if resume_optimizer:
            self.optim_wrapper.load_state_dict(checkpoint['optimizer'])

        if resume_param_scheduler and self.param_schedulers is None:
            self.logger.warning(
                '`resume_param_scheduler` is True but `self.param_schedulers` '
                'is None, so skip resuming parameter schedulers')
            resume_param_scheduler = False
        if 'param_schedulers' in checkpoint and resume_param_scheduler:
            self.param_schedulers = self.build_param_scheduler(
                self.param_schedulers)
            self._load_schedulers(checkpoint['param_schedulers'], filename)
        self._has_loaded = True
        self.logger.info(f'resumed epoch: {self.epoch}, iter: {self.iter}')

    def _load_schedulers(self, saved: Any, filename: str) -> None:
        hint = 'resume with the same param_scheduler config'
        built = self.param_schedulers
        if isinstance(built, dict):
            if not isinstance(saved, Mapping) or set(saved) != set(built):
                names = sorted(saved) if isinstance(saved, Mapping) else saved
                raise CheckpointMismatchError(
                    f'checkpoint {filename}: parameter schedulers {names!r} '
                    f'differ from the built ones {sorted(built)}; {hint}')
            pairs = [(name, built[name], saved[name]) for name in built]
        else:
            pairs = [('', built, saved)]
        for name, group, states in pairs:
            if not isinstance(states, list) or len(states) != len(group):
                count = len(states) if isinstance(states, list) else '?'
                label = f' for {name!r}' if name else ''
                raise CheckpointMismatchError(
                    f'checkpoint {filename}: {count} saved parameter '
                    f'schedulers{label}, {len(group)} built; {hint}')
            for scheduler, state in zip(group, states):
                if not isinstance(state, Mapping):
                    raise CheckpointMismatchError(
                        f'checkpoint {filename}: a parameter scheduler state '
                        f'is a {type(state).__name__}, not a dict; {hint}')
                scheduler.load_state_dict(copy.copy(dict(state)))


def use_safe_load_runner(cfg):
    """Set ``cfg.runner_type`` to :class:`SafeLoadRunner` (in place).

    A config naming another runner is refused unless it subclasses
    ``SafeLoadRunner``: mmengine's own loads checkpoints unchecked.

    Raises:
        ValueError: naming ``cfg.runner_type``.
    """
    given = cfg.get('runner_type')
    if given is None or given in RUNNER_NAMES:
        cfg.runner_type = 'SafeLoadRunner'
        return cfg
    found = RUNNERS.get(given) if isinstance(given, str) else None
    if not (isinstance(found, type) and issubclass(found, SafeLoadRunner)):
        raise ValueError(
            f'cfg.runner_type={given!r}: the tools run SafeLoadRunner, which '
            f'checks checkpoints before loading them; remove runner_type or '
            f'name a subclass of mmbackbone.engine.runner.SafeLoadRunner')
    return cfg


def build_runner(cfg) -> SafeLoadRunner:
    """The runner of ``cfg``: :class:`SafeLoadRunner` or a subclass."""
    use_safe_load_runner(cfg)
    name = cfg.runner_type
    runner_cls = SafeLoadRunner if name in RUNNER_NAMES else RUNNERS.get(name)
    return runner_cls.from_cfg(cfg)
