"""Shared test helpers: checkpoints made from peer models, log capture,
one intra-op thread for small models."""
import contextlib
import logging

import pytest
import torch
from mmengine.logging import MMLogger


@pytest.fixture
def one_thread():
    """Small models: one intra-op thread avoids oversubscribing the cores
    when tests run in parallel (pytest -n) or next to other jobs.

    A test module opts in with ``pytestmark =
    pytest.mark.usefixtures('one_thread')`` after importing it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_state_dict(state_dict, path, fmt=None):
    """Save a state dict as ``.safetensors`` or a pickled ``.pth``/``.pt``/``.bin``."""
    path = str(path)
    if (fmt or path.rsplit('.', 1)[-1]) == 'safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)
    return path


def randomize_norm_stats(model, seed=0):
    """Give BN layers non-trivial running stats and affine params."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * .1)
                module.running_var.copy_(torch.rand(n, generator=gen) + .5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=gen) + .5)
                    module.bias.copy_(torch.randn(n, generator=gen) * .1)
    return model


@contextlib.contextmanager
def captured_log(level=logging.INFO):
    """Collect the records mmengine's current logger emits."""
    logger = MMLogger.get_current_instance()
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Handler(level)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
