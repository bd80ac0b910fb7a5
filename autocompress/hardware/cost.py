"""Analytic cost model: latency and energy of a config on a HardwareProfile.

Every conv / linear layer is a GEMM (im2col): M = output positions x batch, K = input channels
per group x kernel area, N = output channels per group, once per group. A factorised layer is
two GEMMs (K x rank, then rank x N) with its rank-wide middle written and read back; a layer of
a dropped block costs nothing.

* systolic_array (weight stationary, the formulation SCALE-Sim uses): the array holds a
  rows x cols weight tile; folds = groups x ceil(K / rows) x ceil(N / cols); each fold streams
  M input rows plus rows + cols - 2 cycles of fill and drain, and loading the next tile
  (weight_load_cycles) hides behind the stream when double buffered.
* roofline: MACs / (peak x rate).

Compute runs at the native precision that fits the layer's bits (fewer bits never compute
faster on a device without them); weights are stored at their own width only where the
profile says storage is packed. Memory time = bytes / bandwidth per level; a layer takes
max(compute, memory) + overhead, or compute + memory + overhead where the profile says memory
does not overlap compute (``memory_overlap: false``). Energy follows the profile's ``energy_model``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autocompress.config import FLOAT_BITS, CompressionConfig, ResolvedConfig, resolve, resolve_many
from autocompress.graph import LayerTable
from autocompress.hardware.profile import HardwareProfile

__all__ = ["Cost", "CostModel"]


@dataclass(frozen=True)
class Cost:
    latency_s: float
    energy_j: float
    origin: str  # "modeled:<profile>"
    layers: dict[str, np.ndarray] | None = None  # per-layer breakdown when asked for

    def frame(self, names: list[str]):
        import pandas as pd

        return pd.DataFrame({"layer": names, **(self.layers or {})})


class CostModel:
    """Costs configs of one LayerTable on one profile; build once, call many times."""

    def __init__(self, table: LayerTable, profile: HardwareProfile):
        self.table, self.profile = table, profile
        p = profile
        self.batch = p.batch_size
        self.spatial = np.array([layer.spatial for layer in table.layers], dtype=np.float64)
        self.kernel = np.array([layer.kernel[0] * layer.kernel[1] for layer in table.layers], dtype=np.int64)
        self.in_elems_per_ch = np.array([np.prod(layer.in_shape) / layer.in_channels for layer in table.layers])
        self.out_elems_per_ch = np.array([np.prod(layer.out_shape) / layer.out_channels for layer in table.layers])
        self.has_float = any(pr.weights >= FLOAT_BITS for pr in p.precisions)
        ref = p.reference_precision
        self.ref_bits = (ref.weights, ref.activations)
        # native precision lookup for every (w, a) pair of bits 1..32
        bits = range(33)
        self._rate = np.ones((33, 33))
        self._e_mac = np.zeros((33, 33))
        self._w_native = np.zeros((33, 33))
        self._a_native = np.zeros((33, 33))
        for w in bits:
            for a in bits:
                nat = p.native(max(w, 1), max(a, 1))
                self._rate[w, a] = nat.relative_rate
                self._e_mac[w, a] = nat.energy_per_mac_pj or 0.0
                self._w_native[w, a] = nat.weights
                self._a_native[w, a] = nat.activations
        # weights live in the first level that holds them all (on-chip parameter memory), else
        # in the next one that takes weights (DRAM); chosen per config, by its weight bytes
        self.weight_levels = [(i, m.size_bytes) for i, m in enumerate(p.memory) if "weights" in m.holds]
        self.act_level = next(i for i, m in enumerate(p.memory) if "activations" in m.holds)
        off = [i for i, m in enumerate(p.memory) if m.off_chip]
        self.spill_level = off[0] if off else self.weight_levels[-1][0]
        self.act_on_chip = not p.memory[self.act_level].off_chip
        self.act_size = p.memory[self.act_level].size_bytes
        self.bandwidth = [m.bandwidth_bytes_per_s for m in p.memory]
        self.e_byte = [m.energy_pj_per_byte * 1e-12 for m in p.memory]
        self.overhead_s = p.layer_overhead_cycles / p.clock_hz
        self.peak = p.peak_macs_per_cycle
        fab = p.fabric
        self.systolic = fab.kind == "systolic_array"
        if self.systolic:
            self.rows, self.cols = fab.rows, fab.cols
            load = fab.weight_load_cycles or 0
            m_rows = self.spatial * self.batch
            # per fold: stream the M input rows (the next tile's load hides behind it when double
            # buffered), then fill and drain; SCALE-Sim's WS fold without double buffering
            self.stream = np.maximum(m_rows, load) if fab.double_buffered_weights else m_rows + load
            self.fill_drain = self.rows + self.cols - 2

    def reference(self) -> CompressionConfig:
        """The uncompressed model as it runs on the device (its reference precision)."""
        config = CompressionConfig(fold_batchnorm=self.profile.folds_batchnorm)
        return config.with_default_bits(self.table, *self._ref_or_float())

    def _ref_or_float(self) -> tuple[int | None, int | None]:
        w, a = self.ref_bits
        return (None if w >= FLOAT_BITS else w), (None if a >= FLOAT_BITS else a)

    def cost_many(self, configs: list[CompressionConfig]) -> tuple[np.ndarray, np.ndarray]:
        """Latency (s) and energy (J) of many configs, vectorised over configs."""
        latency, energy = self._layers(resolve_many(self.table, configs))[:2]
        return latency.sum(axis=-1), energy.sum(axis=-1)

    def cost(self, config: CompressionConfig | ResolvedConfig, *, detail: bool = False) -> Cost:
        r = config if isinstance(config, ResolvedConfig) else resolve(self.table, config)
        latency, energy, parts = self._layers(r, detail)
        return Cost(float(latency.sum()), float(energy.sum()), self.profile.origin, parts)

    def _layers(self, r: ResolvedConfig, detail: bool = False):
        """Per-layer latency and energy; arrays may carry a leading config axis.

        Every layer is costed as two GEMMs side by side (the last axis is 2 x layers): the
        layer itself, or the first factor of a factorised layer, then the second factor (empty
        unless factorised). A layer's figures are the sum of its two.
        """
        p = self.profile
        L = len(self.table)
        wb, ab = r.wbits, r.abits
        if not self.has_float:  # an unquantised layer runs at the device's reference precision
            wb = np.where(wb >= FLOAT_BITS, self.ref_bits[0], wb)
            ab = np.where(ab >= FLOAT_BITS, self.ref_bits[1], ab)
        pair = lambda a, b: np.concatenate([a, b], axis=-1)  # noqa: E731
        rate = pair(self._rate[wb, ab], self._rate[wb, ab])
        w_native = self._w_native[wb, ab]
        w_store = np.minimum(wb, w_native) if p.packed_weight_storage else w_native
        a_byte = self._a_native[wb, ab] * (self.batch / 8)

        g = r.groups
        k = (r.in_channels // g) * self.kernel
        n = r.out_channels // g
        rank = r.rank
        factorised = rank > 0
        present = pair(r.present, r.present & factorised)
        first_n = np.where(factorised, rank, n)
        macs = pair(self.spatial * g * k * first_n, self.spatial * rank * n) * present * self.batch
        if self.systolic:
            folds = pair(g * -(-k // self.rows) * -(-first_n // self.cols), -(-rank // self.rows) * -(-n // self.cols))
            cycles = folds * (pair(self.stream, self.stream) + self.fill_drain) / rate
        else:
            cycles = macs / self.peak / rate
        compute_s = cycles / p.clock_hz

        bias = r.bias_params * 4
        first_weights = r.weight_params - rank * n
        weight_bytes = pair(first_weights * w_store / 8 + np.where(factorised, 0, bias),
                            rank * n * w_store / 8 + np.where(factorised, bias, 0)) * present
        in_elems, out_elems = self.in_elems_per_ch * r.in_channels, self.out_elems_per_ch * r.out_channels
        middle = self.out_elems_per_ch * rank
        act_bytes = pair((in_elems + np.where(factorised, middle, out_elems)) * a_byte,
                         (middle + out_elems) * a_byte) * present
        # bytes per memory level: weights where they fit, activations on chip unless they spill
        total_weights = weight_bytes.sum(axis=-1, keepdims=True)
        per_level: dict = {}
        placed = np.zeros_like(total_weights, dtype=bool)
        for i, size in self.weight_levels:  # the first level that holds all the weights
            last = i == self.weight_levels[-1][0]
            here = ~placed & ((total_weights <= size) | last)
            if here.any():
                per_level[i] = per_level.get(i, 0) + weight_bytes * here
            placed |= here
        if self.act_on_chip:
            spills = act_bytes > self.act_size
            on, off = np.where(spills, 0.0, act_bytes), np.where(spills, act_bytes, 0.0)
            per_level[self.act_level] = per_level.get(self.act_level, 0) + on
            per_level[self.spill_level] = per_level.get(self.spill_level, 0) + off
        else:
            per_level[self.act_level] = per_level.get(self.act_level, 0) + act_bytes
        level_s = [b / self.bandwidth[i] for i, b in per_level.items()]
        memory_j = sum(b * self.e_byte[i] for i, b in per_level.items() if self.e_byte[i])
        if p.memory_overlap:
            memory_s = np.maximum.reduce(level_s)
            latency = (np.maximum(compute_s, memory_s) + self.overhead_s) * present
        else:  # transfers one after another, then the kernel
            memory_s = sum(level_s)
            latency = (compute_s + memory_s + self.overhead_s) * present
        util = np.divide(macs, self.peak * p.clock_hz * rate * latency, out=np.zeros_like(latency),
                         where=latency > 0)
        if p.energy_model == "power":
            energy = latency * (p.power.idle_w + util * (p.power.busy_w - p.power.idle_w)) + memory_j
        else:
            energy = macs * pair(self._e_mac[wb, ab], self._e_mac[wb, ab]) * 1e-12 + memory_j + latency * p.power.idle_w
        energy = energy / self.batch
        layer = lambda a: a[..., :L] + a[..., L:]  # noqa: E731  - the layer's two GEMMs together
        layers = None
        if detail:
            latency_l = layer(latency)
            layers = {
                "macs": r.macs, "params": r.weight_params + r.bias_params,
                "wbits": wb, "abits": ab, "rank": rank, "cycles": layer(cycles * present),
                "compute_ms": layer(compute_s * present) * 1e3, "memory_ms": layer(memory_s * present) * 1e3,
                "latency_ms": latency_l * 1e3, "energy_mj": layer(energy) * 1e3,
                "utilization": np.divide(layer(macs), self.peak * p.clock_hz * rate[..., :L] * latency_l,
                                         out=np.zeros_like(latency_l), where=latency_l > 0),
                "bound": np.where(~r.present, "dropped",
                                  np.where(layer(compute_s * present) >= layer(memory_s * present), "compute", "memory")),
                "weight_bytes": layer(weight_bytes),
            }
        return layer(latency), layer(energy), layers
