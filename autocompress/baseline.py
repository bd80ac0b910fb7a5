"""The uncompressed model: the user's weights, or a brief training run that is cached.

With no weights the tool trains the model on the data (and says so); the result is cached
under ~/.cache/autocompress/baselines, keyed by the model, the data and the training settings,
so the next run with the same inputs reuses it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from autocompress.compress.recover import train
from autocompress.data import DataBundle
from autocompress.utils import atomic_save, cache_dir


@dataclass(frozen=True)
class BaselineTraining:
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 64
    seed: int = 0
    bf16: bool | None = None  # None: where the CPU has native bf16


def _key(model_desc: str, model: nn.Module, data: DataBundle, settings: BaselineTraining) -> str:
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    blob = json.dumps({"model": model_desc, "shapes": shapes, "data": data.fingerprint,
                       "settings": asdict(settings), "torch": torch.__version__}, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_or_trained(model: nn.Module, model_desc: str, data: DataBundle,
                      settings: BaselineTraining = BaselineTraining(), *, log=print,
                      progress=None) -> tuple[nn.Module, str]:
    """Load the cached baseline or train one; returns the model and a line saying which.
    ``progress(step, steps, loss)`` hears from every training step."""
    path = cache_dir("baselines") / f"{_key(model_desc, model, data, settings)}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), f"baseline: reused the model trained earlier ({path})"
    steps = settings.epochs * -(-len(data.train_y) // settings.batch_size)
    log(f"No --weights given: training {model_desc} on {data.name} for {settings.epochs} epochs "
        f"({steps} steps) as the baseline; it is cached for the next run.")
    torch.manual_seed(settings.seed)
    train(model, data, steps=steps, lr=settings.lr, batch_size=settings.batch_size,
          seed=settings.seed, bf16=settings.bf16, progress=progress)
    atomic_save(model.state_dict(), path)
    return model.eval(), f"baseline: trained for {settings.epochs} epochs on {data.name} (cached at {path})"
