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
from autocompress.compress.quantize import (attach_activation_quantizers, attach_weight_fake_quant,
                                            calibrate_activations, quantize_weights, remove_weight_fake_quant)
from autocompress.compress.reconstruct import reconstruct_layers
from autocompress.compress.recover import recalibrate_batchnorm, train
from autocompress.config import FLOAT_BITS, CompressionConfig
from autocompress.data import DataBundle
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
    qat: bool = True  # fine-tune through the candidate's own bits (False: fine-tune in float, then quantise)
    teacher_cache: bool = True  # distil from teacher logits cached once per process, not a live teacher
    teacher_pool: int = 4096  # training images whose teacher logits are cached (with their flips)
    reconstruct: bool = True  # refit pruned / factorised layers by least squares (no backprop)
    reconstruct_images: int = 256  # training images the refit sees


def apply(model: nn.Module, table: LayerTable, config: CompressionConfig, *,
          data: DataBundle | None = None, recovery: Recovery = Recovery(), seed: int = 0,
          progress=None) -> nn.Module:
    """Return a compressed copy of ``model``: made shallower, pruned, factorised, recovered,
    then quantised.

    Order: drop blocks -> prune channels (width included) -> factorise -> re-estimate BN ->
    reconstruct the changed layers by least squares and re-estimate BN again (``reconstruct``)
    -> then, without quantisation-aware fine-tuning: fine-tune with distillation (float) -> fold
    BN into the convs (when the config says so) -> quantise weights -> re-estimate the BNs left
    -> calibrate activation ranges; with it (``qat`` and fine-tuning steps and some bits below
    32): attach weight fake-quantisation and calibrated activation quantisers -> fine-tune
    through them (BN kept) -> re-estimate BN -> fold BN -> quantise the trained float weights
    for real -> re-calibrate activation ranges, so the integers are what they would be without it.
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

    def bn(model_: nn.Module) -> None:
        recalibrate_batchnorm(model_, data, batches_=recovery.bn_batches, batch_size=recovery.batch_size, seed=seed)

    refit = data is not None and changed and recovery.reconstruct
    # the refit normalises with batch statistics itself, so BN is re-estimated after it only
    if refit:
        reconstruct_layers(compressed, model, data, images=recovery.reconstruct_images, seed=seed)
    if data is not None and changed and recovery.bn_batches:
        bn(compressed)
    wbits = {n: config.layer(n).wbits for n in table.names if config.layer(n).wbits}
    abits = {n: config.layer(n).abits for n in table.names if config.layer(n).abits}
    quantised = any(b < FLOAT_BITS for b in (*wbits.values(), *abits.values()))
    qat = data is not None and recovery.finetune_steps > 0 and recovery.qat and quantised
    fit = dict(steps=recovery.finetune_steps, lr=recovery.lr, batch_size=recovery.batch_size, teacher=model,
               seed=seed, bf16=recovery.bf16, teacher_cache=recovery.teacher_cache,
               teacher_pool=recovery.teacher_pool, progress=progress)
    if data is not None and recovery.finetune_steps > 0 and not qat:
        train(compressed, data, **fit)
    quantizers = []
    if qat:
        # BN stays while training (a folded network has none, and at the usual learning rate its
        # fine-tuning diverges: 50% pruning fell to chance in 2 steps). Folding afterwards keeps
        # the grid: symmetric per-output-channel rounding commutes with scaling a channel by
        # BN's gamma / sigma, so the folded weights round to the trained ones, folded.
        fake = attach_weight_fake_quant(compressed, wbits, config.clip)
        quantizers = attach_activation_quantizers(compressed, abits, config.clip)
        if quantizers:  # ranges as the finished model would calibrate them, fixed while training
            calibrate_activations(compressed, quantizers, data.train_x, data.train_y,
                                  batches_=recovery.calibration_batches, batch_size=recovery.batch_size)
        train(compressed, data, **fit)
        if recovery.bn_batches and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in compressed.modules()):
            bn(compressed)  # the statistics of the quantised weights, which folding bakes in
        remove_weight_fake_quant(fake)
    if config.fold_batchnorm:
        fold_batchnorms(compressed, table)
    weight_sqnr = quantize_weights(compressed, wbits, config.clip)
    bn_left = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in compressed.modules())
    if data is not None and recovery.bn_batches and bn_left and any(b < FLOAT_BITS for b in wbits.values()):
        for q in quantizers:  # observing passes activations through: BN sees what it does without QAT
            q.reset()
        bn(compressed)
    if not qat:
        quantizers = attach_activation_quantizers(compressed, abits, config.clip)
    if quantizers:
        if data is None:
            raise ValueError("activation quantisation needs calibration data")
        calibrate_activations(compressed, quantizers, data.train_x, data.train_y,
                              batches_=recovery.calibration_batches, batch_size=recovery.batch_size)
    compressed.weight_sqnr_db = weight_sqnr  # per layer, for Metrics (a plain attribute, not state)
    return compressed.eval()
