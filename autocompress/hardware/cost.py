"""Analytic cost model: latency and energy of a config on a HardwareProfile.

Every conv / linear layer is a GEMM (im2col): M = output positions x batch, K = input channels
per group x kernel area, N = output channels per group, once per group.

* systolic_array (weight stationary, the formulation SCALE-Sim uses): the array holds a
  rows x cols weight tile; folds = groups x ceil(K / rows) x ceil(N / cols); each fold streams
  M input rows plus rows + cols - 2 cycles of fill and drain, and loading the next tile
  (weight_load_cycles) hides behind the stream when double buffered.
* roofline: MACs / (peak x rate).

Compute runs at the native precision that fits the layer's bits (fewer bits never compute
faster on a device without them); weights are stored at their own width only where the
profile says storage is packed. Memory time = bytes / bandwidth per level; a layer takes
max(compute, memory) + overhead. Energy follows the profile's ``energy_model``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autocompress.config import FLOAT_BITS, CompressionConfig, ResolvedConfig, resolve
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
        self.kernel = np.array([layer.kernel[0] * layer.kernel[1] for layer in table.layers], dtype=np.float64)
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
        self.weight_level = next(i for i, m in enumerate(p.memory) if "weights" in m.holds)
        self.act_level = next(i for i, m in enumerate(p.memory) if "activations" in m.holds)
        off = [i for i, m in enumerate(p.memory) if m.off_chip]
        self.spill_level = off[0] if off else self.weight_level

    def reference(self) -> CompressionConfig:
        """The uncompressed model as it runs on the device (its reference precision)."""
        return CompressionConfig().with_default_bits(self.table, *self._ref_or_float())

    def _ref_or_float(self) -> tuple[int | None, int | None]:
        w, a = self.ref_bits
        return (None if w >= FLOAT_BITS else w), (None if a >= FLOAT_BITS else a)

    def cost(self, config: CompressionConfig | ResolvedConfig, *, detail: bool = False) -> Cost:
        r = config if isinstance(config, ResolvedConfig) else resolve(self.table, config)
        p = self.profile
        wb, ab = r.wbits.copy(), r.abits.copy()
        if not self.has_float:  # an unquantised layer runs at the device's reference precision
            wb[wb >= FLOAT_BITS] = self.ref_bits[0]
            ab[ab >= FLOAT_BITS] = self.ref_bits[1]
        rate = self._rate[wb, ab]
        w_store = np.where(p.packed_weight_storage, np.minimum(wb, self._w_native[wb, ab]), self._w_native[wb, ab])
        a_store = self._a_native[wb, ab]

        macs = r.macs.astype(np.float64) * self.batch
        m_rows = self.spatial * self.batch
        g = r.groups.astype(np.float64)
        k = (r.in_channels / g) * self.kernel
        n = r.out_channels / g
        fab = p.fabric
        if fab.kind == "systolic_array":
            rows, cols = fab.rows, fab.cols
            folds = g * np.ceil(k / rows) * np.ceil(n / cols)
            load = fab.weight_load_cycles or 0
            stream = np.maximum(m_rows, load) if fab.double_buffered_weights else m_rows + load
            cycles = folds * (stream + rows + cols - 2) / rate
        else:
            cycles = macs / (p.peak_macs_per_cycle * rate)
        compute_s = cycles / p.clock_hz

        weight_bytes = r.weight_params * w_store / 8 + r.bias_params * 4
        act_bytes = (self.in_elems_per_ch * r.in_channels + self.out_elems_per_ch * r.out_channels) * a_store / 8 * self.batch
        level_bytes = np.zeros((len(p.memory), len(macs)))
        level_bytes[self.weight_level] += weight_bytes
        act_mem = p.memory[self.act_level]
        if act_mem.off_chip:
            level_bytes[self.act_level] += act_bytes
        else:
            spills = act_bytes > act_mem.size_bytes
            level_bytes[self.act_level] += np.where(spills, 0, act_bytes)
            level_bytes[self.spill_level] += np.where(spills, act_bytes, 0)
        bw = np.array([m.bandwidth_bytes_per_s for m in p.memory])[:, None]
        memory_s = (level_bytes / bw).max(axis=0)
        latency = np.maximum(compute_s, memory_s) + p.layer_overhead_cycles / p.clock_hz
        util = macs / (p.peak_macs_per_cycle * rate * p.clock_hz * latency)

        e_byte = np.array([m.energy_pj_per_byte for m in p.memory])[:, None]
        memory_j = (level_bytes * e_byte).sum(axis=0) * 1e-12
        if p.energy_model == "power":
            energy = latency * (p.power.idle_w + util * (p.power.busy_w - p.power.idle_w)) + memory_j
        else:
            energy = macs * self._e_mac[wb, ab] * 1e-12 + memory_j + latency * p.power.idle_w
        energy = energy / self.batch
        latency_total = float(latency.sum())
        layers = None
        if detail:
            layers = {
                "macs": r.macs, "params": r.weight_params + r.bias_params,
                "wbits": wb, "abits": ab, "cycles": cycles,
                "compute_ms": compute_s * 1e3, "memory_ms": memory_s * 1e3, "latency_ms": latency * 1e3,
                "energy_mj": energy * 1e3, "utilization": util,
                "bound": np.where(compute_s >= memory_s, "compute", "memory"),
                "weight_bytes": weight_bytes,
            }
        return Cost(latency_total, float(energy.sum()), p.origin, layers)
