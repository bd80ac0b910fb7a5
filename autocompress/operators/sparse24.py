"""2:4 semi-structured sparsity: in every four consecutive inputs of an output, two weights are
zero (NVIDIA Ampere's sparse tensor cores; the pattern torch's ``to_sparse_semi_structured``
stores). Everything about the knob is in this module:

- config: ``layers: {NAME: {sparse24: true}}``; space: ``{knob: sparse24, choices: [0, 1]}``
- model: the two largest-magnitude weights of each group of four are kept (for a conv, groups
  run along the input channels at each kernel position, the channels-last GEMM order); the mask
  is a parametrisation, so fine-tuning trains only the kept weights, and the finished model's
  weights hold the zeros (TorchScript and ONNX exports keep them). Inputs past the last full
  group of four stay dense; a layer with fewer than four inputs per group cannot take it.
- cost: on a profile whose ``sparsity`` states 2:4 support, the layer's GEMM runs
  ``compute_speedup`` times faster on the sparse part (MACs skipped, so a per-MAC energy model
  charges half) and its weights are read compressed: half the values plus ``metadata_bits``
  per kept value. On any other profile a dense engine computes the zeros: no change.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autocompress.operators import Operator, register

__all__ = ["Sparse24", "mask_2_4"]


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """1 for the weights 2:4 sparsity keeps, 0 for the rest (same shape as ``weight``)."""
    w = weight.detach()
    lay = w.permute(0, 2, 3, 1) if w.dim() == 4 else w  # conv: out, kh, kw, in
    n = lay.shape[-1] // 4 * 4
    mask = torch.ones_like(lay)
    if n:
        quads = lay[..., :n].abs().reshape(*lay.shape[:-1], n // 4, 4)
        keep = torch.zeros_like(quads).scatter_(-1, quads.topk(2, dim=-1).indices, 1.0)
        mask[..., :n] = keep.reshape(*lay.shape[:-1], n)
    return (mask.permute(0, 3, 1, 2) if w.dim() == 4 else mask).contiguous()


class _Mask(nn.Module):
    """A fixed mask on a weight (a parametrisation: gradients reach only the kept weights)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return weight * self.mask


class Sparse24(Operator):
    knob, per, plugin, default = "sparse24", ("layer", "all"), True, False
    more_is_smaller = True  # 0 keeps the layer dense, 1 makes it sparse
    column = ("sparsity", "sparsity")
    description = "2:4 semi-structured sparsity (two of every four consecutive input weights are zero)"

    def check(self, values, is_range):
        if is_range or any(v not in (0, 1) for v in values):
            raise ValueError("sparse24 takes choices 0 (dense) and/or 1 (2:4 sparse)")

    def cast(self, value):
        return bool(value >= 0.5)

    def validate(self, value):
        if not isinstance(value, bool):
            raise ValueError(f"sparse24 is true or false, not {value!r}")
        return value

    def applies_to(self, layer):
        return layer.kind in ("conv", "linear") and layer.in_channels * layer.in_per_channel // layer.groups >= 4

    def pays_on(self, target):
        if getattr(getattr(target, "sparsity", None), "pattern", None) == "2:4":
            return None
        return (f"sparse24 left out: {getattr(target, 'name', target)} states no 2:4 sparse units "
                "(a dense engine computes the zeros)")

    def build(self, model, table, layers):
        from torch.nn.utils import parametrize

        from autocompress.graph import compute_layers

        for name, on in layers.items():
            if not on:
                continue
            for module in compute_layers(model, name):  # both factors of a factorised layer
                mask = mask_2_4(module.weight)
                with torch.no_grad():
                    module.weight.mul_(mask)
                module.sparse24_mask = mask  # a plain attribute: the state dict stays as it was
                parametrize.register_parametrization(module, "weight", _Mask(mask))

    def finish(self, model, layers):
        from torch.nn.utils import parametrize

        for module in model.modules():
            mask = getattr(module, "sparse24_mask", None)
            if mask is None:
                continue
            if parametrize.is_parametrized(module, "weight"):  # still ours alone: bake the mask in
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            with torch.no_grad():  # quantisation-aware training removed it: its float weights come back whole
                module.weight.mul_(mask.to(module.weight.dtype))

    def cost_factors(self, values, in_per_group, native_bits, stored_bits, profile):
        one = np.ones(np.shape(values))
        spec = getattr(profile, "sparsity", None)
        if getattr(spec, "pattern", None) != "2:4":
            return one, one
        on = (np.nan_to_num(values) > 0) & np.isin(native_bits, spec.weight_bits)
        share = (in_per_group // 4 * 4) / np.maximum(in_per_group, 1)  # of the GEMM depth in full groups of four
        compute = np.where(on, 1 - share + share / spec.compute_speedup, 1.0)
        stored = 0.5 + spec.metadata_bits / (2.0 * np.maximum(stored_bits, 1))  # half the values, their indices
        weights = np.where(on, 1 - share + share * stored, 1.0)
        return compute, weights

    def cell(self, value):
        return "2:4" if value else None


register(Sparse24())
