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
