"""Simulated (fake) quantisation, consistent with integer arithmetic.

Weights: symmetric, per output channel, b bits -> integers in [-(2^(b-1)-1), 2^(b-1)-1] times one
fp32 scale per channel. Activations (a layer's input): per tensor, calibrated on a few batches;
unsigned when the calibration data never goes negative (after a ReLU), else symmetric.

The scales stay on the modules (``weight_bits`` / ``weight_scale`` attributes on a quantised
layer, :meth:`ActQuant.qparams`), so an exporter writes exactly the integers simulated here.
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.config import FLOAT_BITS


def quantize_weight_(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``weight`` in place to ``bits``-bit symmetric per-output-channel values."""
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax)
    weight.data.copy_((q * scale[:, None]).reshape(weight.shape))
    return scale


def weight_integers(module: nn.Module) -> torch.Tensor:
    """The integers of a layer :func:`quantize_weights` quantised (weight / its scale, exact)."""
    scale = module.weight_scale
    w = module.weight.detach()
    return torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1))))


class ActQuant(nn.Module):
    """Fake-quantises a tensor per tensor; ``observe`` mode records its range first."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.observing = True
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    @property
    def signed(self) -> bool:
        return not bool(self.lo >= 0)

    def qparams(self) -> tuple[torch.Tensor, int, int]:
        """(scale, qmin, qmax) of the calibrated range; the zero point is always 0."""
        if not self.signed:  # unsigned
            qmax = 2 ** self.bits - 1
            return self.hi.clamp_min(1e-12) / qmax, 0, qmax
        qmax = 2 ** (self.bits - 1) - 1
        return torch.maximum(self.hi.abs(), self.lo.abs()).clamp_min(1e-12) / qmax, -qmax, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        scale, qmin, qmax = self.qparams()
        return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def quantize_weights(model: nn.Module, wbits: dict[str, int]) -> None:
    modules = dict(model.named_modules())
    for name, bits in wbits.items():
        if bits < FLOAT_BITS:
            layer = modules[name]
            # plain attributes, not buffers: the state dict (and TorchScript export) stay as they were
            layer.weight_scale = quantize_weight_(layer.weight, bits)
            layer.weight_bits = bits


def attach_activation_quantizers(model: nn.Module, abits: dict[str, int]) -> list[ActQuant]:
    """Put an ActQuant on the input of every layer with abits < 32; they start observing."""
    modules = dict(model.named_modules())
    quantizers = []
    for name, bits in abits.items():
        if bits >= FLOAT_BITS:
            continue
        q = ActQuant(bits)
        layer = modules[name]
        layer.add_module("input_quant", q)
        layer.register_forward_pre_hook(lambda mod, args: (mod.input_quant(args[0]),) + tuple(args[1:]))
        quantizers.append(q)
    return quantizers
