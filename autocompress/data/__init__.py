"""Data sets: ``digits`` (default), ``imagefolder:PATH``, user data.

Everything becomes a :class:`DataBundle`: normalised float train / val / test images plus what
the rest of the pipeline needs to know (classes, input shape, a fingerprint for caches). Images
are tensors in memory, or, for a folder too large to hold decoded, :class:`ImageFiles` that read
and decode each batch from disk (the pipeline indexes both alike: ``x[idx]`` is a batch).

Three splits, so that no figure is reported on the images it was chosen on: the search decides
on ``val`` (class-balanced, held out from the training data: no candidate is fine-tuned on it),
and finished models are reported on ``test``, which no search ever sees.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from autocompress._errors import UserError, unknown_name
from autocompress.data._stream import ImageFiles, take  # noqa: F401 - ImageFiles: the streamed type

__all__ = ["DataBundle", "ImageFiles", "resolve_data", "from_torch", "DATASETS"]


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
    test_x: torch.Tensor | None = None  # the split final figures are reported on; None: none given
    test_y: torch.Tensor | None = None
    # the whole validation split where ``val`` is a fixed subset of it (the search screens on the
    # subset; the finishing race decides on all of it, where a point is worth the images)
    all_val_x: torch.Tensor | None = None
    all_val_y: torch.Tensor | None = None

    @property
    def whole_val(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole validation split: (images, labels)."""
        if self.all_val_y is None:
            return self.val_x, self.val_y
        return self.all_val_x, self.all_val_y

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def fingerprint(self) -> str:
        """Stable hash of the contents, for cache keys (baseline training)."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y, *self._test):
            if not isinstance(t, torch.Tensor):  # images still on disk: their files and transform
                h.update(t.fingerprint_bytes())
                continue
            # a strided sample keeps this fast on large sets while still changing with the data
            flat = t.reshape(-1)
            step = max(1, flat.numel() // 1_000_000)
            h.update(flat[::step].contiguous().numpy().tobytes())
            h.update(str(tuple(t.shape)).encode())
        return h.hexdigest()[:16]

    @property
    def _test(self) -> tuple[torch.Tensor, ...]:
        return () if self.test_y is None else (self.test_x, self.test_y)

    def subset_val(self, n: int | None, seed: int = 0) -> "DataBundle":
        """A copy whose validation set is a fixed class-balanced subset of ``n`` samples."""
        if not n or n >= len(self.val_y):
            return self
        idx = balanced_indices(self.val_y, n, seed)
        whole_x, whole_y = self.whole_val
        return replace(self, val_x=take(self.val_x, idx), val_y=self.val_y[idx], all_val_x=whole_x, all_val_y=whole_y,
                       notes=self.notes + [f"validation on a fixed class-balanced subset of {n} samples"])

    def without_test(self) -> "DataBundle":
        """The same bundle without its test split and with only the validation subset: what a
        search's workers get (they use nothing else)."""
        return replace(self, test_x=None, test_y=None, all_val_x=None, all_val_y=None)

    def carve_validation(self, n: int, seed: int = 0) -> "DataBundle":
        """Hold ``n`` class-balanced training samples out as the validation split; the current
        validation split becomes the test split."""
        if n <= 0:
            return self
        if n >= len(self.train_y):
            raise UserError(f"--val-split {n} must be below the {len(self.train_y)} training samples")
        idx = balanced_indices(self.train_y, n, seed)
        keep = torch.ones(len(self.train_y), dtype=torch.bool)
        keep[idx] = False
        return replace(self, train_x=take(self.train_x, keep), train_y=self.train_y[keep],
                       val_x=take(self.train_x, idx), val_y=self.train_y[idx], test_x=self.val_x, test_y=self.val_y,
                       notes=self.notes + [f"validation: {n} class-balanced images held out from the training "
                                           f"data (the search decides on them); test: the {len(self.val_y)} "
                                           f"images of the held-out split (final figures only)"])


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices, as equal a number per class as the classes allow, fixed by ``seed``
    (sorted, so the subset keeps the data's order)."""
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    per_class = [members[torch.randperm(len(members), generator=g)] for members in per_class]
    quota = [0] * len(per_class)
    left = n
    while left > 0:  # round-robin over the classes that still have samples
        progressed = False
        for i, members in enumerate(per_class):
            if left and quota[i] < len(members):
                quota[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return torch.cat([members[:q] for members, q in zip(per_class, quota)]).sort().values


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for xb, idx in _prefetched(x, [order[i:i + batch_size] for i in range(0, n, batch_size)]):
        yield xb, y[idx]


def chunks(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``x`` in consecutive batches (read ahead by one where the images are on disk)."""
    for xb, _ in _prefetched(x, [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]):
        yield xb


def _prefetched(x, keys: list) -> Iterator[tuple[torch.Tensor, object]]:
    """(x[key], key) for each key; images on disk are read one batch ahead, in a thread, while the
    caller computes on the current one."""
    if isinstance(x, torch.Tensor) or len(keys) < 2:
        for k in keys:
            yield x[k], k
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="autocompress-prefetch") as pool:
        ahead = pool.submit(x.__getitem__, keys[0])
        for i, k in enumerate(keys):
            current = ahead.result()
            if i + 1 < len(keys):
                ahead = pool.submit(x.__getitem__, keys[i + 1])
            yield current, k


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


#: the validation split a search decides on when none is asked for: 20% of the training data,
#: at most this many images (a paired drop on 5,000 images has a standard error of ~0.1-0.2 points)
DEFAULT_VAL_SPLIT = 5000


DATASETS = {"digits": _digits}


def default_val_split(train_samples: int) -> int:
    return min(DEFAULT_VAL_SPLIT, train_samples // 5)


def resolve_data(spec: str, *, normalize: str = "auto", val_split: int | None = None, log=None) -> DataBundle:
    """``digits`` or ``imagefolder:PATH`` (also ``cifar10:PATH``, the same layout), with a
    validation split of ``val_split`` class-balanced training samples (None: 20% of the training
    data, at most 5,000; 0: none, the search then decides on the test split and says so).
    ``log`` gets progress lines while images are decoded (the first time only: then cached)."""
    if spec in DATASETS:
        bundle = DATASETS[spec]()
    else:
        kind, sep, path = spec.partition(":")
        if not (sep and kind in ("imagefolder", "cifar10")):
            raise unknown_name("data set", spec, list(DATASETS) + ["imagefolder:PATH"])
        from autocompress.data._imagefolder import load_imagefolder
        bundle = load_imagefolder(path, normalize=normalize, log=log)
    return split_validation(bundle, val_split)


def split_validation(bundle: DataBundle, val_split: int | None) -> DataBundle:
    if val_split is None:
        val_split = default_val_split(len(bundle.train_y))
    if not isinstance(val_split, int) or val_split < 0:
        raise UserError(f"--val-split must be a whole number of samples (0 or more), not {val_split!r}")
    if val_split == 0:
        return replace(bundle, notes=bundle.notes + [
            "no validation split (--val-split 0): the search decides on the held-out split, so its "
            "accuracies are not an unseen test figure"])
    return bundle.carve_validation(val_split)


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


def from_torch(train, val, test=None, *, num_classes: int | None = None, name: str = "user data",
               augment: bool = False) -> DataBundle:
    """Wrap user Datasets / DataLoaders (already transformed and normalised) as a bundle: the
    search decides on ``val``; ``test`` (optional) is kept for the finished model's figures."""
    tx, ty = _materialise(train)
    vx, vy = _materialise(val)
    if len(ty) == 0 or len(vy) == 0:
        raise UserError("training and validation data must not be empty")
    sx = sy = None
    if test is not None:
        sx, sy = _materialise(test)
        if len(sy) == 0:
            raise UserError("test data must not be empty")
    k = num_classes or int(max(ty.max(), vy.max())) + 1
    return DataBundle(name, tx, ty, vx, vy, k, augment=augment, test_x=sx, test_y=sy)
