import os

import pytest
import torch

# a private cache: tests never reuse (or pollute) a user's trained baselines
os.environ.setdefault("AUTOCOMPRESS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "autocompress"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture(autouse=True)
def shared_ray(request):
    """One local Ray for the whole session: a search started in this process uses it and leaves
    it running (a search starts and stops its own Ray only where none is running), which saves
    every in-process search Ray's start and stop. Tests marked ``own_ray`` get none."""
    import ray

    if request.node.get_closest_marker("own_ray"):
        if ray.is_initialized():
            ray.shutdown()
        yield
        return
    if not ray.is_initialized():
        import logging

        import autocompress.search._tune  # noqa: F401 - its environment settings come first

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    yield


def pytest_sessionfinish(session, exitstatus):
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
