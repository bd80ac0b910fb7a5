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
from autocompress.compress.quantize import (ActQuant, WeightFakeQuant, attach_activation_quantizers,
                                            attach_weight_fake_quant, calibrate_activations, own_parametrized_classes,
                                            quantize_weights, remove_weight_fake_quant)
from autocompress.compress.reconstruct import reconstruct_layers
from autocompress.compress.recover import recalibrate_batchnorm, train
from autocompress.config import FLOAT_BITS, CompressionConfig
from autocompress.data import DataBundle
from autocompress.graph import LayerTable

__all__ = ["Recovery", "Candidate", "apply", "drop_blocks", "fold_batchnorms", "prune_channels", "factorize", "factorize_layers",
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


def plugin_layers(config: CompressionConfig) -> list[tuple]:
    """(operator, {layer: value}) for every plug-in operator the config sets on some layer."""
    from autocompress import operators

    out = []
    for op in operators.plugins():
        layers = {name: lc.value(op.knob) for name, lc in config.layers.items()
                  if not operators.is_identity(op, lc.value(op.knob))}
        if layers:
            out.append((op, layers))
    return out


def apply(model: nn.Module, table: LayerTable, config: CompressionConfig, *,
          data: DataBundle | None = None, recovery: Recovery = Recovery(), seed: int = 0,
          progress=None) -> nn.Module:
    """Return a compressed copy of ``model``: made shallower, pruned, factorised, recovered,
    then quantised.

    Order: drop blocks -> prune channels (width included) -> factorise -> reconstruct the
    changed layers by least squares (``reconstruct``) -> plug-in operators (``build``, e.g. 2:4
    masks) -> re-estimate BN -> then, without quantisation-aware fine-tuning: fine-tune with distillation (float) -> fold
    BN into the convs (when the config says so) -> quantise weights -> re-estimate the BNs left
    -> calibrate activation ranges; with it (``qat`` and fine-tuning steps and some bits below
    32): attach weight fake-quantisation and calibrated activation quantisers -> fine-tune
    through them (BN kept) -> re-estimate BN -> fold BN -> quantise the trained float weights
    for real -> re-calibrate activation ranges, so the integers are what they would be without it.
    Deterministic for a given model, config, data and seed.
    """
    candidate = Candidate(model, table, config, data=data, recovery=recovery, seed=seed)
    candidate.train(recovery.finetune_steps, progress=progress)
    return candidate.finished(copy_=False)


class Candidate:
    """A compressed model in the middle of its recovery: the structure is changed and refit and,
    for quantisation-aware training, the fake quantisers are attached. :meth:`train` continues
    its fine-tuning (it may be called again: successive halving trains survivors further) and
    :meth:`finished` gives the model :func:`apply` returns, leaving this one trainable."""

    def __init__(self, model: nn.Module, table: LayerTable, config: CompressionConfig, *,
                 data: DataBundle | None = None, recovery: Recovery = Recovery(), seed: int = 0):
        torch.manual_seed(seed)
        self.teacher, self.table, self.config, self.data, self.recovery, self.seed = \
            model, table, config, data, recovery, seed
        self.steps_done = 0
        compressed = copy.deepcopy(model).eval()
        example = torch.zeros((1, *table.input_shape))
        drop_blocks(compressed, table, config)
        prune_channels(compressed, table, config, example)
        factorize_layers(compressed, config)
        structure = (config.arch.drop or config.arch.width < 1
                     or any(lc.prune > 0 or lc.rank is not None for lc in config.layers.values()))
        # the refit normalises with batch statistics itself, so BN is re-estimated after it only
        if data is not None and structure and recovery.reconstruct:
            reconstruct_layers(compressed, model, data, images=recovery.reconstruct_images, seed=seed)
        self.plugins = plugin_layers(config)
        for op, layers in self.plugins:
            op.build(compressed, table, layers)
        changed = structure or bool(self.plugins)
        if data is not None and changed and recovery.bn_batches:
            self._bn(compressed)
        self.wbits = {n: config.layer(n).wbits for n in table.names if config.layer(n).wbits}
        self.abits = {n: config.layer(n).abits for n in table.names if config.layer(n).abits}
        quantised = any(b < FLOAT_BITS for b in (*self.wbits.values(), *self.abits.values()))
        self.qat = data is not None and recovery.finetune_steps > 0 and recovery.qat and quantised
        if self.qat:
            # BN stays while training (a folded network has none, and at the usual learning rate its
            # fine-tuning diverges: 50% pruning fell to chance in 2 steps). Folding afterwards keeps
            # the grid: symmetric per-output-channel rounding commutes with scaling a channel by
            # BN's gamma / sigma, so the folded weights round to the trained ones, folded.
            attach_weight_fake_quant(compressed, self.wbits, config.clip)
            quantizers = attach_activation_quantizers(compressed, self.abits, config.clip)
            if quantizers:  # ranges as the finished model would calibrate them, fixed while training
                calibrate_activations(compressed, quantizers, data.train_x, data.train_y,
                                      batches_=recovery.calibration_batches, batch_size=recovery.batch_size)
        self.model = compressed

    def _bn(self, model_: nn.Module) -> None:
        recalibrate_batchnorm(model_, self.data, batches_=self.recovery.bn_batches,
                              batch_size=self.recovery.batch_size, seed=self.seed)

    def train(self, steps: int, *, lr: float | None = None, teacher_cache: bool | None = None,
              progress=None) -> None:
        """``steps`` more steps of fine-tuning with distillation (one learning-rate cycle)."""
        if self.data is None or steps <= 0:
            return
        r = self.recovery
        # a later call sees other batches: the seed moves on with the steps already taken
        train(self.model, self.data, steps=steps, lr=r.lr if lr is None else lr, batch_size=r.batch_size,
              teacher=self.teacher, seed=self.seed + self.steps_done, bf16=r.bf16,
              teacher_cache=r.teacher_cache if teacher_cache is None else teacher_cache,
              teacher_pool=r.teacher_pool, progress=progress)
        self.steps_done += steps

    @property
    def training_images(self) -> int:
        return self.steps_done * self.recovery.batch_size

    def finished(self, copy_: bool = True) -> nn.Module:
        """The finished model: BN re-estimated and folded, weights quantised for real,
        activation ranges calibrated. ``copy_`` False finishes this candidate's own model
        (cheaper; it cannot be trained further then)."""
        from torch.nn.utils import parametrize

        compressed = self.model
        if copy_:
            compressed = copy.deepcopy(self.model)
            own_parametrized_classes(compressed)
        config, data, recovery, wbits = self.config, self.data, self.recovery, self.wbits
        quantizers = [m for m in compressed.modules() if isinstance(m, ActQuant)]
        if self.qat:
            if recovery.bn_batches and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                           for m in compressed.modules()):
                self._bn(compressed)  # the statistics of the quantised weights, which folding bakes in
            remove_weight_fake_quant([m for m in compressed.modules() if parametrize.is_parametrized(m, "weight")
                                      and any(isinstance(f, WeightFakeQuant) for f in m.parametrizations.weight)])
        for op, layers in self.plugins:  # plain weights again, before folding and quantisation
            op.finish(compressed, layers)
        if config.fold_batchnorm:
            fold_batchnorms(compressed, self.table)
        weight_sqnr = quantize_weights(compressed, wbits, config.clip)
        bn_left = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in compressed.modules())
        if data is not None and recovery.bn_batches and bn_left and any(b < FLOAT_BITS for b in wbits.values()):
            for q in quantizers:  # observing passes activations through: BN sees what it does without QAT
                q.reset()
            self._bn(compressed)
        if not self.qat:
            quantizers = attach_activation_quantizers(compressed, self.abits, config.clip)
        if quantizers:
            if data is None:
                raise ValueError("activation quantisation needs calibration data")
            calibrate_activations(compressed, quantizers, data.train_x, data.train_y,
                                  batches_=recovery.calibration_batches, batch_size=recovery.batch_size)
        compressed.weight_sqnr_db = weight_sqnr  # per layer, for Metrics (a plain attribute, not state)
        return compressed.eval()
