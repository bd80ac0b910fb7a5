"""Simulated (fake) quantisation, consistent with integer arithmetic.

Weights: symmetric, per output channel, b bits -> integers in [-(2^(b-1)-1), 2^(b-1)-1] times one
fp32 scale per channel. Activations (a layer's input): per tensor, calibrated on a few batches;
unsigned when the calibration data never goes negative (after a ReLU), else symmetric.

The scales stay on the modules (``weight_bits`` / ``weight_scale`` attributes on a quantised
layer, :meth:`ActQuant.qparams`), so an exporter writes exactly the integers simulated here.

Quantisation-aware fine-tuning trains through the same grids with a straight-through estimator
(:func:`attach_weight_fake_quant`, and :class:`ActQuant` whenever a gradient is asked for); the
finished model is then quantised for real by :func:`quantize_weights` as without training.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from autocompress.graph import compute_layers
from autocompress.config import FLOAT_BITS


def quantize_weight_(weight: torch.Tensor, bits: int, clip: tuple[float, float] | None = None,
                     ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Round ``weight`` in place to ``bits``-bit symmetric per-output-channel values, after
    clipping it to ``clip`` (min, max) when given; ``ratio``: the per-row clipping ratios (the
    ones quantisation-aware training used), else the least-error ones for these weights."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    q, scale = _weight_grid(flat, bits, clip, ratio)
    weight.data.copy_((q * scale[:, None]).reshape(weight.shape))
    return scale


#: below this many bits a layer's grid is clipped where that lowers the rounding error (its L4
#: norm): at 2 bits (three levels) a max-abs scale rounds nearly every weight to zero, and a
#: CIFAR-10 ResNet-18 with 2-bit stages 3-4 fell to 14% (55% with the least squared error, 84%
#: with the least L4 error, 85% at the best fixed ratio). At 3 bits and more the max-abs grid
#: did as well or better on that network (93.1% against 92.7% with L4, 91.2% with L2)
CLIP_BELOW_BITS = 3
_ERROR_POWER = 4
#: the clipping ratios (of each row's max-abs) tried
_RATIOS = torch.linspace(0.15, 1.0, 35)


def clip_ratios(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row of a (out, -1) weight, the ratio of its max-abs that, as the largest level, gives
    the least rounding error (L4 norm: large weights matter most) at ``bits`` bits (1, i.e.
    max-abs, from ``CLIP_BELOW_BITS`` bits up)."""
    rows = flat.shape[0]
    if bits >= CLIP_BELOW_BITS:
        return torch.ones(rows, dtype=flat.dtype)
    qmax = 2 ** (bits - 1) - 1
    amax = flat.abs().amax(dim=1).clamp_min(1e-12)
    best_err = torch.full((rows,), float("inf"), dtype=flat.dtype)
    best = torch.ones(rows, dtype=flat.dtype)
    with torch.no_grad():
        for r in _RATIOS.tolist():
            scale = (amax * r / qmax)[:, None]
            err = ((torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale - flat).abs() ** _ERROR_POWER).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, r), best)
    return best


def _weight_grid(flat: torch.Tensor, bits: int, clip: tuple[float, float] | None,
                 ratio: torch.Tensor | None = None):
    """(integers, per-row scale) of a (out, -1) weight: the one grid training and export share.
    The scale is ``ratio`` (default: :func:`clip_ratios`) of each row's max-abs over the largest
    level; a ratio commutes with scaling a row, so folding batch norm keeps the integers."""
    qmax = 2 ** (bits - 1) - 1
    if clip is not None:
        flat = flat.clamp(clip[0], clip[1])
    if ratio is None:
        ratio = clip_ratios(flat, bits)
    scale = (flat.abs().amax(dim=1) * ratio).clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax), scale


class WeightFakeQuant(nn.Module):
    """A weight parametrisation: the weight as :func:`quantize_weight_` would round it, with a
    straight-through gradient (zero outside the clipping range, as the clamp passes none)."""

    def __init__(self, bits: int, clip: tuple[float, float] | None = None):
        super().__init__()
        self.bits, self.clip = bits, clip
        # the clipping ratios, searched once on the first weights seen (a search per step would
        # cost more than the step) and kept: the export rounds the trained weights with them
        self.register_buffer("ratio", torch.empty(0))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.reshape(w.shape[0], -1)
        if self.clip is not None:
            flat = flat.clamp(self.clip[0], self.clip[1])
        if self.ratio.numel() != flat.shape[0]:
            self.ratio = clip_ratios(flat.detach().float(), self.bits).to(flat.dtype)
        q, scale = _weight_grid(flat.detach(), self.bits, None, self.ratio)  # the scale is a constant, as at export
        return (flat + (q * scale[:, None] - flat).detach()).reshape(w.shape)


def attach_weight_fake_quant(model: nn.Module, wbits: dict[str, int],
                             clip: tuple[float, float] | None = None) -> list[nn.Module]:
    """Make every layer with wbits < 32 compute with its fake-quantised weight (a
    parametrisation, so the optimiser still updates the float weight); returns the layers."""
    from torch.nn.utils import parametrize

    layers = []
    for name, bits in wbits.items():
        if bits >= FLOAT_BITS:
            continue
        for layer in compute_layers(model, name):
            parametrize.register_parametrization(layer, "weight", WeightFakeQuant(bits, clip))
            layers.append(layer)
    return layers


def remove_weight_fake_quant(layers: list[nn.Module]) -> None:
    """Undo :func:`attach_weight_fake_quant`: the layers get their trained float weights back."""
    from torch.nn.utils import parametrize

    for layer in layers:
        fq = [f for f in layer.parametrizations.weight if isinstance(f, WeightFakeQuant)]
        if fq and fq[0].ratio.numel():  # quantize_weights rounds on the grid the training saw
            layer.weight_clip_ratio = fq[0].ratio.detach().clone()
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def own_parametrized_classes(model: nn.Module) -> None:
    """Give every parametrised module of ``model`` a class of its own. A deep copy of a
    parametrised module shares its class with the original, and removing the parametrisation
    deletes the property from that class: the original would lose its ``weight``."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m):
            cls = m.__class__
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def weight_integers(module: nn.Module) -> torch.Tensor:
    """The integers of a layer :func:`quantize_weights` quantised (weight / its scale, exact)."""
    scale = module.weight_scale
    w = module.weight.detach()
    return torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1))))


class ActQuant(nn.Module):
    """Fake-quantises a tensor per tensor; ``observe`` mode records its range first."""

    def __init__(self, bits: int, clip: tuple[float, float] | None = None):
        super().__init__()
        self.bits = bits
        self.clip = clip
        self.observing = True
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def reset(self) -> None:
        """Forget the range and observe again."""
        self.lo.fill_(float("inf"))
        self.hi.fill_(float("-inf"))
        self.observing = True

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
            if self.clip is not None:  # the range is the observed one, within the clipping range
                self.lo, self.hi = self.lo.clamp(self.clip[0], self.clip[1]), self.hi.clamp(self.clip[0], self.clip[1])
            return x
        scale, qmin, qmax = self.qparams()
        if x.requires_grad and torch.is_grad_enabled():  # training: straight through within the range
            xc = torch.clamp(x, qmin * scale, qmax * scale)
            return xc + (torch.clamp(torch.round(xc / scale), qmin, qmax) * scale - xc).detach()
        return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def quantize_weights(model: nn.Module, wbits: dict[str, int],
                     clip: tuple[float, float] | None = None) -> dict[str, float]:
    """Quantise the layers' weights in place; returns each layer's weight SQNR in dB (its
    float weights against the quantised ones, both factors of a factorised layer together)."""
    sqnr = {}
    for name, bits in wbits.items():
        layers = compute_layers(model, name)  # both factors of a factorised layer
        if bits >= FLOAT_BITS or not layers:
            continue
        signal = noise = 0.0
        for layer in layers:
            before = layer.weight.detach().clone()
            # plain attributes, not buffers: the state dict (and TorchScript export) stay as they were
            ratio = getattr(layer, "weight_clip_ratio", None)
            if ratio is not None and ratio.numel() != layer.weight.shape[0]:
                ratio = None
            layer.weight_scale = quantize_weight_(layer.weight, bits, clip, ratio)
            layer.weight_bits = bits
            signal += float((before ** 2).sum())
            noise += float(((before - layer.weight.detach()) ** 2).sum())
        sqnr[name] = 999.0 if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    return sqnr


def attach_activation_quantizers(model: nn.Module, abits: dict[str, int],
                                 clip: tuple[float, float] | None = None) -> list[ActQuant]:
    """Put an ActQuant on the input of every layer with abits < 32; they start observing."""
    quantizers = []
    for name, bits in abits.items():
        if bits >= FLOAT_BITS:
            continue
        for layer in compute_layers(model, name):  # a factorised layer's middle is quantised too
            q = ActQuant(bits, clip)
            layer.add_module("input_quant", q)
            layer.register_forward_pre_hook(lambda mod, args: (mod.input_quant(args[0]),) + tuple(args[1:]))
            quantizers.append(q)
    return quantizers


@torch.no_grad()
def calibrate_activations(model: nn.Module, quantizers: list[ActQuant], x: torch.Tensor, y: torch.Tensor,
                          *, batches_: int, batch_size: int) -> None:
    """Observe the quantisers' ranges on the first ``batches_`` batches of ``x``, then fix them."""
    from autocompress.data import batches

    for q in quantizers:
        q.reset()
    model.eval()
    for i, (xb, _) in enumerate(batches(x, y, batch_size)):
        if i >= batches_:
            break
        model(xb)
    for q in quantizers:
        q.observing = False
