"""Batch-norm folding: what deployment runtimes and integer accelerators do before quantising.

A BatchNorm2d right after a conv is an affine map per output channel, so it merges into the
conv: W' = W * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps). The weights
then quantised are the folded ones, as on the device. This module is the one place that folds:
the ONNX export folds with :func:`fold_conv_bn` and :func:`batchnorm_scale` too.
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.graph import LayerTable, compute_layers

__all__ = ["fold_batchnorms", "fold_conv_bn", "batchnorm_scale"]


def batchnorm_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """g / sqrt(var + eps) per channel, in double precision: what folding multiplies each
    output channel's weights by (the ONNX export moves it into the integer weights' scales)."""
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(bn.running_var).double()
    return gamma * torch.rsqrt(bn.running_var.double() + bn.eps)


def fold_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's (weight, bias) with ``bn`` folded in, float32: torch's ``fuse_conv_bn_weights``
    computed in double precision, so the PyTorch model and its ONNX export fold alike."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    d = torch.float64
    w, b = fuse_conv_bn_weights(weight.detach().to(d), None if bias is None else bias.detach().to(d),
                                bn.running_mean.to(d), bn.running_var.to(d), bn.eps,
                                None if bn.weight is None else bn.weight.detach().to(d),
                                None if bn.bias is None else bn.bias.detach().to(d))
    return w.detach().float(), b.detach().float()


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
        weight, bias = fold_conv_bn(conv.weight, conv.bias, bn)
        conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
        model.set_submodule(layer.batchnorm, nn.Identity())
        folded.append(layer.batchnorm)
    return folded
