"""Compression operators and :func:`apply`, which composes them in a fixed order."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from autocompress.compress.arch import drop_blocks
from autocompress.compress.fold import fold_batchnorms
from autocompress.compress.lowrank import factorize, factorize_layers
from autocompress.compress.prune import prune_channels
from autocompress.compress.quantize import attach_activation_quantizers, quantize_weights
from autocompress.compress.recover import recalibrate_batchnorm, train
from autocompress.config import FLOAT_BITS, CompressionConfig
from autocompress.data import DataBundle, batches
from autocompress.graph import LayerTable

__all__ = ["Recovery", "apply", "drop_blocks", "fold_batchnorms", "prune_channels", "factorize", "factorize_layers",
           "quantize_weights"]


@dataclass(frozen=True)
class Recovery:
    """What is done after compression to win accuracy back (the user's budget)."""

    bn_batches: int = 20  # batch-norm re-estimation; 0 turns it off
    finetune_steps: int = 0  # SGD steps with distillation from the uncompressed model
    lr: float = 0.01
    batch_size: int = 128
    calibration_batches: int = 4  # for activation ranges
    bf16: bool | None = None  # None: where the CPU has native bf16


def apply(model: nn.Module, table: LayerTable, config: CompressionConfig, *,
          data: DataBundle | None = None, recovery: Recovery = Recovery(), seed: int = 0,
          progress=None) -> nn.Module:
    """Return a compressed copy of ``model``: made shallower, pruned, factorised, recovered,
    then quantised.

    Order: drop blocks -> prune channels (width included) -> factorise -> re-estimate BN ->
    fine-tune with distillation (float) -> fold BN into the convs (when the config says so) ->
    quantise weights -> re-estimate the BNs left -> calibrate activation ranges.
    Deterministic for a given model, config, data and seed.
    """
    torch.manual_seed(seed)
    compressed = copy.deepcopy(model).eval()
    example = torch.zeros((1, *table.input_shape))
    drop_blocks(compressed, table, config)
    prune_channels(compressed, table, config, example)
    factorize_layers(compressed, config)
    changed = (config.arch.drop or config.arch.width < 1
               or any(lc.prune > 0 or lc.rank is not None for lc in config.layers.values()))
    if data is not None and changed and recovery.bn_batches:
        recalibrate_batchnorm(compressed, data, batches_=recovery.bn_batches,
                              batch_size=recovery.batch_size, seed=seed)
    if data is not None and recovery.finetune_steps > 0:
        train(compressed, data, steps=recovery.finetune_steps, lr=recovery.lr,
              batch_size=recovery.batch_size, teacher=model, seed=seed, bf16=recovery.bf16, progress=progress)
    if config.fold_batchnorm:
        fold_batchnorms(compressed, table)
    wbits = {n: config.layer(n).wbits for n in table.names if config.layer(n).wbits}
    weight_sqnr = quantize_weights(compressed, wbits, config.clip)
    bn_left = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in compressed.modules())
    if data is not None and recovery.bn_batches and bn_left and any(b < FLOAT_BITS for b in wbits.values()):
        recalibrate_batchnorm(compressed, data, batches_=recovery.bn_batches,
                              batch_size=recovery.batch_size, seed=seed)
    abits = {n: config.layer(n).abits for n in table.names if config.layer(n).abits}
    quantizers = attach_activation_quantizers(compressed, abits, config.clip)
    if quantizers:
        if data is None:
            raise ValueError("activation quantisation needs calibration data")
        with torch.no_grad():
            for i, (xb, _) in enumerate(batches(data.train_x, data.train_y, recovery.batch_size)):
                if i >= recovery.calibration_batches:
                    break
                compressed(xb)
        for q in quantizers:
            q.observing = False
    compressed.weight_sqnr_db = weight_sqnr  # per layer, for Metrics (a plain attribute, not state)
    return compressed.eval()
