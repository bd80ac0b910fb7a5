"""Reconstruction without backpropagation (ThiNet / AMC style): refit the layers compression
changed so their outputs match the uncompressed model's.

For every conv (groups 1) or linear layer whose input channels pruning reduced, and for the
second factor of every factorised layer, a ridge-regularised least-squares problem is solved:
the layer's inputs in the compressed model (hooks, on a few hundred training images) against the
uncompressed layer's outputs on the output channels kept. Layers go in forward order within one
forward pass, each solved just before it runs, so every layer sees the inputs the layers before
it, already refitted, give it; batch norms normalise with the batch's own statistics meanwhile,
as they will after re-estimation. Spatial positions are subsampled (``max_rows`` per layer), and
only the normal equations are kept, so memory stays small.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import DataBundle

__all__ = ["reconstruct_layers", "reconstruction_targets"]

_TARGETS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_CHUNK = 32  # images unfolded at a time


def _fittable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
                                                     and not isinstance(m.padding, str))


def _calibration_images(data: DataBundle, images: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(images, len(data.train_y))
    return data.train_x[torch.randperm(len(data.train_y), generator=g)[:n].sort().values]


def _rows(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as (positions, channels)."""
    return out.movedim(1, -1).reshape(-1, out.shape[1]) if out.dim() == 4 else out.reshape(-1, out.shape[-1])


@torch.no_grad()
def reconstruction_targets(original: nn.Module, data: DataBundle, *, images: int = 256,
                           max_rows: int = 8192, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per conv / linear layer of the uncompressed model: (sampled output positions, its outputs
    there, all channels). Cached per process by model object, data fingerprint and settings."""
    key = (data.fingerprint, images, max_rows, seed)
    cached = _TARGETS.setdefault(original, {})
    if key in cached:
        return cached[key]
    x = _calibration_images(data, images, seed)
    names = {m: n for n, m in original.named_modules() if _fittable(m)}
    g = torch.Generator().manual_seed(seed + 1)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod, _inputs, out):
        rows = _rows(out)
        pos = torch.randperm(len(rows), generator=g)[:max_rows].sort().values
        targets[names[mod]] = (pos, rows[pos].clone())

    handles = [m.register_forward_hook(hook) for m in names]
    was_training = original.training
    original.eval()
    try:
        original(x)
    finally:
        for h in handles:
            h.remove()
        original.train(was_training)
    cached[key] = targets
    return targets


def _out_rows(layer: nn.Module, x: torch.Tensor) -> int:
    """How many output rows (images x positions) ``layer`` gives for input ``x``."""
    if isinstance(layer, nn.Linear):
        return x.numel() // x.shape[-1]
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
            zip(x.shape[-2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
    return len(x) * size[0] * size[1]


def _patches(layer: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The layer's input rows at output positions ``pos`` (flat over images and space): im2col
    patches for a conv, the features themselves for a linear layer."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])[pos]
    per_image = None
    out = []
    for start in range(0, len(x), _CHUNK):
        cols = F.unfold(x[start:start + _CHUNK], layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        per_image = cols.shape[-1]
        lo, hi = start * per_image, (start + len(cols)) * per_image
        sel = pos[(pos >= lo) & (pos < hi)] - lo
        out.append(cols.transpose(1, 2).reshape(-1, cols.shape[1])[sel])
    return torch.cat(out)


def _solve(layer: nn.Module, xs: torch.Tensor, ys: torch.Tensor, ridge: float) -> None:
    """Ridge least squares towards the layer's current weights: the fit moves them only as far
    as the data asks, which keeps underdetermined layers (few rows, many inputs) sane. The ridge
    (relative to the mean diagonal) bounds the condition number, so float32 Cholesky suffices."""
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
    x = xs.float()
    if layer.bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        w0 = torch.cat([w0, layer.bias.detach().float()[:, None]], 1)
    gram = x.T @ x
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    gram.diagonal().add_(lam)
    rhs = x.T @ ys.float() + lam * w0.T
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        w = torch.cholesky_solve(rhs, factor).T
    else:  # not positive definite in float32 after all: the slower exact route
        w = torch.linalg.solve(gram.double(), rhs.double()).T.float()
    if layer.bias is not None:
        layer.bias.copy_(w[:, -1].to(layer.bias.dtype))
        w = w[:, :-1]
    layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))


@torch.no_grad()
def reconstruct_layers(compressed: nn.Module, original: nn.Module, data: DataBundle, *,
                       images: int = 256, max_rows: int = 8192, ridge: float = 1e-2,
                       seed: int = 0) -> list[str]:
    """Refit, in place, the layers of ``compressed`` whose inputs pruning reduced and the second
    factors of factorised layers, to the outputs of the same layers of ``original`` on the output
    channels kept (``compressed.kept_out_channels``, set by the pruner); returns the layers'
    names. Batch-norm running statistics end up as the calibration images' (re-estimate them)."""
    targets = reconstruction_targets(original, data, images=images, max_rows=max_rows, seed=seed)
    before = dict(original.named_modules())
    kept = getattr(compressed, "kept_out_channels", {})
    jobs: dict[nn.Module, str] = {}
    for name, mod in compressed.named_modules():
        old = before.get(name)
        if not _fittable(old) or name not in targets:
            continue
        if _fittable(mod) and mod.weight.shape[1] != old.weight.shape[1]:
            jobs[mod] = name  # inputs reduced
        elif isinstance(mod, nn.Sequential) and len(mod) == 2 and all(_fittable(m) for m in mod):
            jobs[mod[1]] = name  # a factorised layer: its second factor maps to the outputs
    if not jobs:
        return []
    done: list[str] = []

    def pre_hook(mod, inputs):
        name = jobs[mod]
        pos, ys = targets[name]
        x = inputs[0]
        if _out_rows(mod, x) <= int(pos.max()):
            return None  # fewer output positions than the uncompressed layer had: leave it
        idx = kept.get(name)
        ys_kept = ys if idx is None else ys[:, idx]
        if ys_kept.shape[1] != mod.weight.shape[0]:
            return None
        _solve(mod, _patches(mod, x, pos), ys_kept, ridge)
        done.append(name)
        return None

    bns = [m for m in compressed.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = compressed.training
    compressed.eval()
    for m in bns:  # normalise with the batch's statistics, as re-estimation will
        m.reset_running_stats()
        m.momentum = None
        m.train()
    handles = [m.register_forward_pre_hook(pre_hook) for m in jobs]
    try:
        compressed(_calibration_images(data, images, seed))
    finally:
        for h in handles:
            h.remove()
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        compressed.train(was_training)
    return done
