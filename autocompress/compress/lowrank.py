"""Low-rank factorisation: one layer becomes two thinner ones.

A conv's weight (out, in/groups x kh x kw) is a matrix; its truncated SVD U S V^T at rank r gives
a k x k conv from the inputs to r channels (sqrt(S) V^T, with the layer's stride and padding)
followed by a 1 x 1 conv from r channels to the outputs (U sqrt(S), with the layer's bias): the
channel decomposition of Jaderberg et al. / Zhang et al. A linear layer becomes two linear
layers the same way. At full rank the pair computes the original layer (up to rounding).
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.config import CompressionConfig, factor_rank
from autocompress.graph import compute_layers  # noqa: F401 - where the other operators look for it

__all__ = ["factorize", "factorize_layers", "compute_layers"]


def factorize(layer: nn.Conv2d | nn.Linear, ratio: float) -> nn.Sequential:
    """The two-layer factorisation of ``layer`` keeping ``ratio`` of its full rank."""
    w = layer.weight.detach()
    out = w.shape[0]
    matrix = w.reshape(out, -1).double()
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not factorised")
        kh, kw = layer.kernel_size
        rank = factor_rank(ratio, out, layer.in_channels, kh * kw)
    else:
        rank = factor_rank(ratio, out, layer.in_features, 1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(w.dtype)
    second_w = (u[:, :rank] * root[None, :]).to(w.dtype)
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, out, 1, bias=bias)
        first.weight.data.copy_(first_w.reshape(rank, layer.in_channels, kh, kw))
        second.weight.data.copy_(second_w.reshape(out, rank, 1, 1))
    else:
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, out, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second).to(w.device)


def factorize_layers(model: nn.Module, config: CompressionConfig) -> nn.Module:
    """Replace every layer the config gives a rank with its factorisation, in place."""
    for name, lc in config.layers.items():
        if lc.rank is None:
            continue
        try:
            layer = model.get_submodule(name)
        except AttributeError:  # absent when its block was dropped
            continue
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            model.set_submodule(name, factorize(layer, lc.rank))
    return model
