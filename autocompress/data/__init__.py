"""Data sets, held in memory as tensors: ``digits`` (default), ``imagefolder:PATH``, user data.

Everything becomes a :class:`DataBundle`: normalised float train / val tensors plus what the
rest of the pipeline needs to know (classes, input shape, a fingerprint for caches).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from autocompress._errors import UserError, unknown_name

__all__ = ["DataBundle", "resolve_data", "from_torch", "DATASETS"]


@dataclass
class DataBundle:
    name: str
    train_x: torch.Tensor  # float32, normalised, N x C x H x W (or N x F)
    train_y: torch.Tensor  # int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    augment: bool = False  # random crop + flip when training (natural images, not digits)
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def fingerprint(self) -> str:
        """Stable hash of the contents, for cache keys (baseline training)."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y):
            # a strided sample keeps this fast on large sets while still changing with the data
            flat = t.reshape(-1)
            step = max(1, flat.numel() // 1_000_000)
            h.update(flat[::step].contiguous().numpy().tobytes())
            h.update(str(tuple(t.shape)).encode())
        return h.hexdigest()[:16]

    def subset_val(self, n: int | None, seed: int = 0) -> "DataBundle":
        """A copy whose validation set is a fixed random subset of ``n`` samples."""
        if not n or n >= len(self.val_y):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.val_y), generator=g)[:n].sort().values
        return DataBundle(self.name, self.train_x, self.train_y, self.val_x[idx], self.val_y[idx],
                          self.num_classes, self.augment,
                          self.notes + [f"validation on a fixed subset of {n} samples"])


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def _digits(seed: int = 0) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, va = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=d.target)
    tr, va = torch.tensor(tr), torch.tensor(va)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return DataBundle("digits", x[tr], y[tr], x[va], y[va], 10,
                      notes=["scikit-learn digits: 8x8 grey images as 3 channels, 80/20 split (seed 0)"])


DATASETS = {"digits": _digits}


def resolve_data(spec: str, *, normalize: str = "auto") -> DataBundle:
    """``digits`` or ``imagefolder:PATH`` (also ``cifar10:PATH``, the same layout)."""
    if spec in DATASETS:
        return DATASETS[spec]()
    kind, sep, path = spec.partition(":")
    if sep and kind in ("imagefolder", "cifar10"):
        from autocompress.data._imagefolder import load_imagefolder
        return load_imagefolder(path, normalize=normalize)
    raise unknown_name("data set", spec, list(DATASETS) + ["imagefolder:PATH"])


def _materialise(data) -> tuple[torch.Tensor, torch.Tensor]:
    """A torch Dataset of (x, y) or a DataLoader of batches, as two tensors."""
    from torch.utils.data import DataLoader, Dataset

    xs, ys = [], []
    if isinstance(data, DataLoader):
        for xb, yb in data:
            xs.append(torch.as_tensor(xb))
            ys.append(torch.as_tensor(yb).reshape(-1))
        return torch.cat(xs).float(), torch.cat(ys).long()
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        for i in range(len(data)):
            xb, yb = data[i]
            xs.append(torch.as_tensor(xb))
            ys.append(int(yb))
        return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.int64)
    raise UserError(f"data must be a torch Dataset or DataLoader, not {type(data).__name__}")


def from_torch(train, val, *, num_classes: int | None = None, name: str = "user data",
               augment: bool = False) -> DataBundle:
    """Wrap user Datasets / DataLoaders (already transformed and normalised) as a bundle."""
    tx, ty = _materialise(train)
    vx, vy = _materialise(val)
    if len(ty) == 0 or len(vy) == 0:
        raise UserError("training and validation data must not be empty")
    k = num_classes or int(max(ty.max(), vy.max())) + 1
    return DataBundle(name, tx, ty, vx, vy, k, augment=augment)
