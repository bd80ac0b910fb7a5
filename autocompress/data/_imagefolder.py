"""``imagefolder:PATH``: train/ and test/ (or val/) folders of class folders, decoded once.

Decoding tens of thousands of JPEGs takes a while, so the decoded uint8 tensors are cached
under ~/.cache/autocompress/data keyed by the folder's path, file count and newest mtime.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from autocompress._errors import UserError
from autocompress.data import DataBundle
from autocompress.utils import atomic_save, cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
#: per-channel statistics that published checkpoints were trained with
PRESETS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _scan(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, cls in enumerate(classes):
        for root, _, files in os.walk(split_dir / cls):
            items += [(Path(root) / f, label) for f in sorted(files)
                      if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return items


def _decode(items: list[tuple[Path, int]], size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    arrays = []
    for path, _ in items:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is None:
                size = im.size
            if im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arrays.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


def load_imagefolder(path: str, *, normalize: str = "auto") -> DataBundle:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {path!r} does not exist")
    train_dir = root / "train"
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or val_dir is None:
        raise UserError(f"{path!r} must hold train/ and val/ (or test/) folders of class folders")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{train_dir} holds no class folders")
    train_items, val_items = _scan(train_dir, classes), _scan(val_dir, classes)
    if not train_items or not val_items:
        empty = train_dir if not train_items else val_dir
        raise UserError(f"{empty} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    stamp = max(os.path.getmtime(p) for p, _ in train_items[:: max(1, len(train_items) // 500)])
    key = hashlib.sha256(f"{root.resolve()}|{len(train_items)}|{len(val_items)}|{stamp}".encode())
    cache = cache_dir("data") / f"imagefolder-{key.hexdigest()[:16]}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
    else:
        tx, ty = _decode(train_items, None)
        vx, vy = _decode(val_items, tuple(tx.shape[-1:-3:-1]))
        blob = {"tx": tx, "ty": ty, "vx": vx, "vy": vy}
        atomic_save(blob, cache)

    tx = blob["tx"].float().div_(255)
    vx = blob["vx"].float().div_(255)
    if normalize in PRESETS:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in PRESETS[normalize])
        how = f"normalised with the {normalize} preset"
    elif normalize == "auto":
        mean = tx.mean(dim=(0, 2, 3), keepdim=True)
        std = tx.std(dim=(0, 2, 3), keepdim=True)
        how = "normalised with the training set's per-channel mean and std"
    else:
        raise UserError(f"unknown normalisation {normalize!r}; valid: auto, {', '.join(PRESETS)}")
    tx = (tx - mean) / std
    vx = (vx - mean) / std
    name = f"imagefolder:{path}"
    return DataBundle(name, tx, blob["ty"], vx, blob["vy"], len(classes), augment=True,
                      notes=[f"{len(classes)} classes, {len(blob['ty'])} train / {len(blob['vy'])} "
                             f"{val_dir.name} images, {how}"])
