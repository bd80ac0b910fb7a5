"""Batch-norm folding: what deployment runtimes and integer accelerators do before quantising.

A BatchNorm2d right after a conv is an affine map per output channel, so it merges into the
conv: W' = W * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps). The weights
then quantised are the folded ones, as on the device.
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.graph import compute_layers
from autocompress.graph import LayerTable

__all__ = ["fold_batchnorms"]


@torch.no_grad()
def fold_batchnorms(model: nn.Module, table: LayerTable) -> list[str]:
    """Fold every batch norm the table pairs with a conv into it, in place (the batch norm becomes
    the identity); returns the folded batch norms' names."""
    modules = dict(model.named_modules())
    folded = []
    for layer in table.layers:
        bn = modules.get(layer.batchnorm) if layer.batchnorm else None
        convs = compute_layers(model, layer.name)
        if not isinstance(bn, nn.BatchNorm2d) or not convs:  # dropped with its block
            continue
        conv = convs[-1]  # the second factor of a factorised layer
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = bn.bias + (bias - bn.running_mean) * scale
        conv.bias = nn.Parameter(new_bias)
        model.set_submodule(layer.batchnorm, nn.Identity())
        folded.append(layer.batchnorm)
    return folded
