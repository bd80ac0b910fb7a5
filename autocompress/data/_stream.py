"""Images read from disk when a batch asks for them, for data sets too large to hold decoded.

:class:`ImageFiles` stands where a float tensor of images would: ``x[i]``, ``x[a:b]`` and
``x[index tensor]`` decode just those images (a few threads: PIL lets go of the GIL while it
decodes), resize and crop them and normalise them, so memory is bounded by the batch, not by the
data set. ``x.take(idx)`` is a subset that is still on disk (the fixed validation subset, the
held-out split). Pickled (what a Ray worker receives) it is the folder, the relative paths and the
transform: each worker reads the images itself, from the same path (shared storage on a cluster).

Images are made the network's size as torchvision's evaluation transform does for ImageNet: the
shorter side resized to ``resize`` (bilinear), then the centre ``crop`` x ``crop``. The result
is deterministic, so the teacher's logits of an image can be cached; training augments batches
with a random crop (padding 4) and a horizontal flip (``DataBundle.augment``).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageFiles", "take", "read_resized"]


def read_resized(path: Path, resize: int | None, crop: int | None) -> np.ndarray:
    """An RGB image as uint8 H x W x 3: its shorter side resized to ``resize``, then its centre
    ``crop`` x ``crop`` (either None: not done)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")  # decodes the whole file: a truncated one fails here
        if resize is not None:
            w, h = im.size
            scale = resize / min(w, h)
            if scale != 1:
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        if crop is not None:
            w, h = im.size
            left, top = (w - crop) // 2, (h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
        return np.asarray(im, dtype=np.uint8)


class ImageFiles:
    """``len(paths)`` images under ``root`` that decode when indexed (see the module)."""

    dtype = torch.float32

    def __init__(self, root: str | Path, paths: list[str], *, resize: int, crop: int,
                 mean: tuple[float, ...], std: tuple[float, ...], threads: int | None = None):
        self.root, self.paths = str(root), list(paths)
        self.resize, self.crop = resize, crop
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.unreadable: list[str] = []  # read but could not be decoded (given as the mean image)
        self._pool: ThreadPoolExecutor | None = None

    # -- what a tensor of images would answer --------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.crop, self.crop))

    def dim(self) -> int:
        return 4

    def __getitem__(self, key) -> torch.Tensor:
        positions = self._positions(key)
        if isinstance(key, int):
            return self._decode(positions)[0]
        return self._decode(positions)

    def take(self, idx) -> "ImageFiles":
        """The images at ``idx`` (indices or a boolean mask), still on disk."""
        return ImageFiles(self.root, [self.paths[i] for i in self._positions(idx)], resize=self.resize,
                          crop=self.crop, mean=self.mean, std=self.std, threads=self.threads)

    def fingerprint_bytes(self) -> bytes:
        """What identifies the data for cache keys: the folder, the files (a sample of their sizes
        and modification times) and the transform, without reading any image."""
        step = max(1, len(self.paths) // 1000)
        stats = []
        for p in self.paths[::step]:
            try:
                st = os.stat(Path(self.root) / p)
                stats.append(f"{p}:{st.st_size}:{int(st.st_mtime)}")
            except OSError:
                stats.append(f"{p}:missing")
        blob = f"{self.root}|{len(self.paths)}|{self.resize}|{self.crop}|{self.mean}|{self.std}|" + "|".join(stats)
        return hashlib.sha256(blob.encode()).digest()

    # -- reading --------------------------------------------------------------------------------
    def _positions(self, key) -> list[int]:
        n = len(self.paths)
        if isinstance(key, int):
            return [key % n if key < 0 else key]
        if isinstance(key, slice):
            return list(range(*key.indices(n)))
        t = torch.as_tensor(key)
        if t.dtype == torch.bool:
            t = torch.nonzero(t).flatten()
        return [int(i) for i in t.reshape(-1).tolist()]

    def _one(self, position: int) -> np.ndarray:
        path = Path(self.root) / self.paths[position]
        try:
            return read_resized(path, self.resize, self.crop)
        except Exception:  # noqa: BLE001 - a file that went bad after the scan: the mean image, counted
            self.unreadable.append(str(path))
            mean = np.array(self.mean, dtype=np.float32) * 255
            return np.broadcast_to(mean.round().astype(np.uint8), (self.crop, self.crop, 3))

    def _decode(self, positions: list[int]) -> torch.Tensor:
        if not positions:
            return torch.empty((0, 3, self.crop, self.crop))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="autocompress-decode")
        arrays = list(self._pool.map(self._one, positions))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # threads do not travel; the receiver starts its own
        return state

    def __repr__(self) -> str:
        return (f"ImageFiles({len(self.paths):,} images under {self.root}, resize {self.resize}, "
                f"crop {self.crop})")


def take(x, idx):
    """``x[idx]`` for a tensor, a subset still on disk for :class:`ImageFiles`."""
    return x.take(idx) if isinstance(x, ImageFiles) else x[idx]
