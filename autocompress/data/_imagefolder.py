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


#: more unreadable images than this share of a split (and more than one) is an error, not a skip
MAX_UNREADABLE = 0.01
#: unreadable images named in the note (the rest are counted)
NAMED_UNREADABLE = 3


def _scan(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, cls in enumerate(classes):
        found = []
        for root, _, files in os.walk(split_dir / cls):
            found += [(Path(root) / f, label) for f in sorted(files)
                      if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not found and (split_dir / cls).is_dir():
            raise UserError(f"class folder {split_dir / cls} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove it or add its images")
        items += found
    return items


def _read(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")  # decodes the whole file: a truncated one fails here
        if size is not None and im.size != size:
            im = im.resize(size, Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _decode(items: list[tuple[Path, int]], size: tuple[int, int] | None, split: Path, log=None
            ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decoded images and labels; an image that cannot be read (truncated, corrupt, not an
    image) is skipped and its path returned, unless too many are (then a UserError). ``log``
    gets a line every ``PROGRESS_SECONDS``."""
    import time

    from PIL import Image

    arrays, labels, bad = [], [], []
    t0 = last = time.monotonic()
    for i, (path, label) in enumerate(items):
        if log is not None and time.monotonic() - last > PROGRESS_SECONDS:
            last = time.monotonic()
            log(f"  decoding {split}: {i:,} of {len(items):,} images ({last - t0:.0f} s)")
        try:
            a = _read(path, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(str(path))
            continue
        if size is None:
            size = (a.shape[1], a.shape[0])
        arrays.append(a)
        labels.append(label)
    if len(bad) > 1 and len(bad) > MAX_UNREADABLE * len(items) or not arrays:
        raise UserError(f"{len(bad)} of the {len(items)} images in {split} cannot be read (more than "
                        f"{MAX_UNREADABLE:.0%}), e.g. {', '.join(bad[:NAMED_UNREADABLE])}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), bad


PROGRESS_SECONDS = 5.0


def load_imagefolder(path: str, *, normalize: str = "auto", log=None) -> DataBundle:
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
        if log is not None:
            log(f"decoding {len(train_items) + len(val_items):,} images of {root} (once: they are cached "
                f"in {cache.parent})")
        tx, ty, bad = _decode(train_items, None, train_dir, log)
        vx, vy, vbad = _decode(val_items, tuple(tx.shape[-1:-3:-1]), val_dir, log)
        blob = {"tx": tx, "ty": ty, "vx": vx, "vy": vy, "skipped": bad + vbad}
        atomic_save(blob, cache)
    skipped = list(blob.get("skipped", []))
    for split, labels in ((train_dir, blob["ty"]), (val_dir, blob["vy"])):
        present = set(labels.unique().tolist())
        for label, cls in enumerate(classes):  # every image of a class unreadable: as if empty
            if label not in present and (split / cls).is_dir():
                raise UserError(f"class folder {split / cls} holds no readable image")

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
                             f"{val_dir.name} images, {how}"]
                      + ([f"skipped {len(skipped)} unreadable image(s) (corrupt or truncated): "
                          f"{', '.join(skipped[:NAMED_UNREADABLE])}"
                          + (f" and {len(skipped) - NAMED_UNREADABLE} more" if len(skipped) > NAMED_UNREADABLE else "")]
                         if skipped else []))
