import os

import pytest
import torch

# a private cache: tests never reuse (or pollute) a user's trained baselines
os.environ.setdefault("AUTOCOMPRESS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "autocompress"))
# two threads on an idle 2-core machine; OMP_NUM_THREADS=1 on a loaded one, where two threads of
# each torch op spin-wait for each other (the fast suite ran ~10x slower so next to a benchmark)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    from autocompress.data import resolve_data
    return resolve_data("digits")


@pytest.fixture(scope="session")
def trained_tiny(digits):
    """A width-1/8 ResNet-18 trained briefly on digits: small enough for every test."""
    from autocompress.compress.recover import train
    from tests.tiny_models import tiny_resnet

    torch.manual_seed(0)
    model = tiny_resnet()
    train(model, digits, steps=120, lr=0.05, batch_size=64, seed=0)
    return model.eval()


def _start_shared_ray() -> None:
    """One local Ray for the rest of the session: a search started in this process uses it and
    leaves it running (a search starts and stops its own Ray only where none is running), which
    saves every in-process search Ray's start and stop."""
    import ray

    if ray.is_initialized():
        return
    import logging

    import autocompress.search._tune  # noqa: F401 - its environment settings come first

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Ray only for the tests that need it: those marked ``ray`` (an in-process search) get the
    session's shared local Ray, started here, before any of their fixtures, so that a
    module-scoped search fixture finds it; tests marked ``own_ray`` get none (they connect to
    their own). Every other test runs without starting Ray; one started earlier stays up."""
    import sys

    if item.get_closest_marker("own_ray"):
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    elif item.get_closest_marker("ray"):
        _start_shared_ray()


def pytest_sessionfinish(session, exitstatus):
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
