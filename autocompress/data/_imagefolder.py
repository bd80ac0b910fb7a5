"""``imagefolder:PATH``: train/ and test/ (or val/) folders of class folders.

Small images (CIFAR-size, 64 px or less) keep their size; larger ones (ImageNet-style) are made
224 x 224 as torchvision's evaluation transform does (shorter side to 256, centre crop 224).
A data set whose decoded images fit in ``STREAM_ABOVE_BYTES`` is decoded once and held in memory
(the uint8 tensors are cached under ~/.cache/autocompress/data keyed by the folder's path, file
count and newest mtime); a larger one streams from disk (:class:`~autocompress.data._stream.ImageFiles`):
memory is bounded by the batch, and Ray workers read the files themselves. ``AUTOCOMPRESS_STREAM=1``
(or ``0``) forces streaming (or holding in memory).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from autocompress._errors import UserError
from autocompress.data import DataBundle
from autocompress.data._stream import ImageFiles, read_resized
from autocompress.utils import atomic_save, cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
#: per-channel statistics that published checkpoints were trained with
PRESETS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


#: decoded uint8 bytes (all splits) above which a folder streams from disk instead of being held
STREAM_ABOVE_BYTES = 1 << 30
#: images with a shorter side above this get the ImageNet evaluation transform (resize, centre crop)
SMALL_IMAGE_MAX = 64
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
#: training images decoded to estimate the per-channel mean and std of a streamed set (normalize auto)
STATS_SAMPLE = 256

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


def _read(path: Path, size: tuple[int, int] | None, large: bool = False) -> np.ndarray:
    from PIL import Image

    if large:
        return read_resized(path, IMAGENET_RESIZE, IMAGENET_CROP)
    with Image.open(path) as im:
        im = im.convert("RGB")  # decodes the whole file: a truncated one fails here
        if size is not None and im.size != size:
            im = im.resize(size, Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _first_size(items: list[tuple[Path, int]]) -> tuple[int, int]:
    """(width, height) of the first image whose header reads (nothing decoded)."""
    from PIL import Image

    for path, _ in items[:50]:
        try:
            with Image.open(path) as im:
                return im.size
        except Exception:  # noqa: BLE001 - an unreadable one: look at the next
            continue
    raise UserError(f"none of the first images under {items[0][0].parent.parent} can be read")


def _streams(n_images: int, side: int) -> bool:
    forced = os.environ.get("AUTOCOMPRESS_STREAM", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return n_images * 3 * side * side > STREAM_ABOVE_BYTES


def _decode(items: list[tuple[Path, int]], size: tuple[int, int] | None, split: Path, log=None,
            large: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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
            a = _read(path, size, large)
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

    w, h = _first_size(train_items)
    large = min(w, h) > SMALL_IMAGE_MAX
    side = IMAGENET_CROP if large else max(w, h)
    if _streams(len(train_items) + len(val_items), side):
        return _streamed(path, root, classes, train_items, val_items, val_dir, large, (w, h), normalize, log)
    stamp = max(os.path.getmtime(p) for p, _ in train_items[:: max(1, len(train_items) // 500)])
    transform = f"|{IMAGENET_RESIZE}/{IMAGENET_CROP}" if large else ""
    key = hashlib.sha256(f"{root.resolve()}|{len(train_items)}|{len(val_items)}|{stamp}{transform}".encode())
    cache = cache_dir("data") / f"imagefolder-{key.hexdigest()[:16]}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
    else:
        if log is not None:
            log(f"decoding {len(train_items) + len(val_items):,} images of {root} (once: they are cached "
                f"in {cache.parent})")
        tx, ty, bad = _decode(train_items, None, train_dir, log, large)
        vx, vy, vbad = _decode(val_items, tuple(tx.shape[-1:-3:-1]), val_dir, log, large)
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
    mean, std, how = _normalisation(normalize, tx)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (mean, std))
    tx = (tx - mean) / std
    vx = (vx - mean) / std
    name = f"imagefolder:{path}"
    resized = [f"images made {IMAGENET_CROP}x{IMAGENET_CROP} (shorter side {IMAGENET_RESIZE}, centre crop)"] \
        if large else []
    return DataBundle(name, tx, blob["ty"], vx, blob["vy"], len(classes), augment=True,
                      notes=[f"{len(classes)} classes, {len(blob['ty'])} train / {len(blob['vy'])} "
                             f"{val_dir.name} images, {how}, decoded once and held in memory"] + resized
                      + ([f"skipped {len(skipped)} unreadable image(s) (corrupt or truncated): "
                          f"{', '.join(skipped[:NAMED_UNREADABLE])}"
                          + (f" and {len(skipped) - NAMED_UNREADABLE} more" if len(skipped) > NAMED_UNREADABLE else "")]
                         if skipped else []))


def _normalisation(normalize: str, sample: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, how it was chosen) for ``normalize``; ``auto``: the per-channel statistics of
    ``sample`` (training images in [0, 1])."""
    if normalize in PRESETS:
        mean, std = PRESETS[normalize]
        return mean, std, f"normalised with the {normalize} preset"
    if normalize == "auto":
        mean = sample.mean(dim=(0, 2, 3)).tolist()
        std = sample.std(dim=(0, 2, 3)).tolist()
        return tuple(mean), tuple(std), "normalised with the training set's per-channel mean and std"
    raise UserError(f"unknown normalisation {normalize!r}; valid: auto, {', '.join(PRESETS)}")


def _streamed(path: str, root: Path, classes: list[str], train_items, val_items, val_dir: Path, large: bool,
              size: tuple[int, int], normalize: str, log) -> DataBundle:
    """The folder as :class:`ImageFiles`: nothing decoded but a sample for the statistics."""
    resize, crop = (IMAGENET_RESIZE, IMAGENET_CROP) if large else (None, None)
    if not large and size[0] != size[1]:
        raise UserError(f"streamed small images must be square; {root} holds {size[0]}x{size[1]} "
                        f"(resize them, or set AUTOCOMPRESS_STREAM=0)")
    side = crop or size[0]

    def files(items):
        return ImageFiles(root, [str(p.relative_to(root)) for p, _ in items], resize=resize, crop=side,
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    tx, vx = files(train_items), files(val_items)  # in [0, 1] until the statistics are set
    sample = torch.zeros(0)
    if normalize == "auto":  # a fixed sample of the training images
        g = torch.Generator().manual_seed(0)
        sample = tx[torch.randperm(len(train_items), generator=g)[:STATS_SAMPLE]]
    mean, std, how = _normalisation(normalize, sample)
    if normalize == "auto":
        how += f" (estimated on {len(sample)} of them)"
    for x in (tx, vx):
        x.mean, x.std = mean, std
    ty = torch.tensor([label for _, label in train_items], dtype=torch.int64)
    vy = torch.tensor([label for _, label in val_items], dtype=torch.int64)
    if log is not None:
        log(f"streaming {len(train_items) + len(val_items):,} images of {root} from disk (too many to hold decoded)")
    notes = [f"{len(classes)} classes, {len(ty)} train / {len(vy)} {val_dir.name} images, {how}, streamed from "
             f"disk (read and decoded per batch; an image that fails to decode is given as the mean image and "
             f"counted)"]
    if large:
        notes.append(f"images made {IMAGENET_CROP}x{IMAGENET_CROP} (shorter side {IMAGENET_RESIZE}, centre crop)")
    return DataBundle(f"imagefolder:{path}", tx, ty, vx, vy, len(classes), augment=True, notes=notes)
