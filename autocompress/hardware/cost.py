"""Analytic cost model: latency and energy of a config on a HardwareProfile.

Every conv / linear layer is a GEMM (im2col): M = output positions x batch, K = input channels
per group x kernel area, N = output channels per group, once per group. A factorised layer is
two GEMMs (K x rank, then rank x N) with its rank-wide middle written and read back; a layer of
a dropped block costs nothing.

Compute cycles come from the profile's fabric:

* systolic_array (``_systolic.py``): SCALE-Sim 3.0's fold model for weight-, output- and
  input-stationary dataflows, with the next stationary tile's load hidden behind the stream
  where the profile says the array is double-buffered.
* roofline (``_roofline.py``): MACs / (peak x rate).

Compute runs at the native precision that fits the layer's bits (fewer bits never compute
faster on a device without them); weights are stored at their own width only where the
profile says storage is packed.

Memory, per layer (``_place``): each of a layer's weights, inputs and outputs lives in the first
level that holds that operand, in the order the profile lists them, and where it fits: an
off-chip level takes whatever reaches it; an on-chip one takes the layer's inputs and outputs
when they fit it (both together where one level holds both), and its weights when the layer's
weights fit (a ``weights_scope: layer`` filter SRAM, filled from off chip once per inference) or
when the whole model's weights fit (``weights_scope: model``, a parameter memory kept between
inferences). What fits nowhere goes to the first off-chip level. Each operand's bytes cross the
level it lives in once per inference; memory time = bytes / bandwidth per level; a layer takes
max(compute, memory) + overhead, or compute + memory + overhead where the profile says memory
does not overlap compute (``memory_overlap: false``). Energy follows the profile's ``energy_model``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autocompress.config import FLOAT_BITS, CompressionConfig, ResolvedConfig, resolve, resolve_many
from autocompress.graph import LayerTable
from autocompress.hardware._roofline import Roofline
from autocompress.hardware._systolic import SystolicArray

if TYPE_CHECKING:  # the profile module builds cost models: it imports this one
    from autocompress.hardware.profile import HardwareProfile

__all__ = ["Cost", "CostModel", "fabric_model", "OPERANDS"]


@dataclass(frozen=True)
class Cost:
    latency_s: float
    energy_j: float
    origin: str  # "modeled:<profile>"
    layers: dict[str, np.ndarray] | None = None  # per-layer breakdown when asked for

    def frame(self, names: list[str]):
        import pandas as pd

        return pd.DataFrame({"layer": names, **(self.layers or {})})


#: the operands of a layer, as memory levels name them
OPERANDS = ("weights", "inputs", "outputs")


def fabric_model(profile: HardwareProfile):
    """The compute model of the profile's fabric: an object with ``cycles(m, k, n, groups, macs)``."""
    if profile.fabric.kind == "systolic_array":
        return SystolicArray(profile.fabric)
    return Roofline(profile.peak_macs_per_cycle)


@dataclass(frozen=True)
class _Stop:
    """An on-chip level an operand may live in, on its way out from the array to off chip."""

    level: int
    size: float
    fit: str  # which bytes must fit: "own", "both" (inputs + outputs), "layer" or "model" (weights)
    fill: int | None = None  # weights_scope layer: the level its weights are read from, once per inference


def _route(profile: HardwareProfile, operand: str) -> tuple[list[_Stop], int]:
    """The levels an operand tries, in the profile's order, and where what fits none of them goes."""
    memory = profile.memory
    off_chip = [i for i, m in enumerate(memory) if m.off_chip]
    stops: list[_Stop] = []
    last = None
    for i, m in enumerate(memory):
        if not m.keeps(operand):
            continue
        if m.off_chip:
            last = i
            break
        if operand == "weights":
            fit = "model" if m.weights_scope == "model" else "layer"
        else:
            fit = "both" if m.keeps("inputs") and m.keeps("outputs") else "own"
        stops.append(_Stop(i, m.size_bytes, fit))
    if last is None:  # no off-chip level holds it: the first off-chip level, else the last level that does
        last = off_chip[0] if off_chip else stops.pop().level
    return [_Stop(x.level, x.size, x.fit, last if x.fit == "layer" else None) for x in stops], last


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
        self.routes = {op: _route(p, op) for op in OPERANDS}
        self.level_names = [m.name for m in p.memory]
        self.level_off_chip = [m.off_chip for m in p.memory]
        self.bandwidth = [m.bandwidth_bytes_per_s for m in p.memory]
        self.e_byte = [m.energy_pj_per_byte * 1e-12 for m in p.memory]
        self.overhead_s = p.layer_overhead_cycles / p.clock_hz
        self.peak = p.peak_macs_per_cycle
        self.fabric = fabric_model(p)
        # GEMM rows, for both of a layer's GEMMs: output positions of the whole batch
        self.m_rows = np.concatenate([self.spatial, self.spatial]) * self.batch

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

    def _place(self, operand: str, nbytes, fits: dict, per_level: dict, detail: bool):
        """Charge ``nbytes`` (the operand's bytes per GEMM) to the levels it lives in; with
        ``detail``, also return the level index of each GEMM's operand."""
        stops, last = self.routes[operand]
        placed = None
        where = np.full(nbytes.shape, last, dtype=np.int64) if detail else None
        for stop in stops:
            here = fits[stop.fit] <= stop.size
            if placed is not None:
                here = here & ~placed
            if here.any():
                charged = nbytes * here
                per_level[stop.level] = per_level.get(stop.level, 0) + charged
                if stop.fill is not None:  # a filter SRAM's weights come from off chip every inference
                    per_level[stop.fill] = per_level.get(stop.fill, 0) + charged
                if detail:
                    where = np.where(here, stop.level, where)
            placed = here if placed is None else placed | here
        rest = nbytes if placed is None else nbytes * ~placed
        per_level[last] = per_level.get(last, 0) + rest
        return where

    def _plugin_factors(self, r: ResolvedConfig, in_per_group, native_bits, stored_bits):
        """Compute and weight-byte multipliers per GEMM from the plug-in operators a config sets
        (:mod:`autocompress.operators`), each asked what it changes on this profile."""
        from autocompress import operators

        compute = weight = 1.0
        for op in operators.plugins():
            values = r.plugins.get(op.knob)
            if values is None or np.isnan(values).all():
                continue
            c, w = op.cost_factors(np.concatenate([values, values], axis=-1), in_per_group, native_bits,
                                   stored_bits, self.profile)
            compute, weight = compute * c, weight * w
        return compute, weight

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
        layer = lambda a: a[..., :L] + a[..., L:]  # noqa: E731  - the layer's two GEMMs together
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
        cycles = self.fabric.cycles(self.m_rows, pair(k, rank), pair(first_n, n), pair(g, np.ones_like(g)), macs) / rate
        compute_f, weight_f = self._plugin_factors(r, pair(r.in_channels // g, rank), pair(w_native, w_native),
                                                   pair(w_store, w_store))
        cycles, macs = cycles * compute_f, macs * compute_f  # e.g. 2:4 sparse units skip half the MACs
        compute_s = cycles / p.clock_hz

        bias = r.bias_params * 4
        first_weights = r.weight_params - rank * n
        weight_bytes = (pair(first_weights * w_store / 8, rank * n * w_store / 8) * weight_f
                        + pair(np.where(factorised, 0, bias), np.where(factorised, bias, 0))) * present
        in_elems, out_elems = self.in_elems_per_ch * r.in_channels, self.out_elems_per_ch * r.out_channels
        middle = self.out_elems_per_ch * rank
        in_bytes = pair(in_elems * a_byte, middle * a_byte) * present
        out_bytes = pair(np.where(factorised, middle, out_elems) * a_byte, out_elems * a_byte) * present
        # where each operand of each layer lives (see the module's docstring)
        layer_weights = layer(weight_bytes)
        fits = {"model": weight_bytes.sum(axis=-1, keepdims=True), "layer": pair(layer_weights, layer_weights),
                "both": in_bytes + out_bytes}
        per_level: dict = {}
        w_at = self._place("weights", weight_bytes, fits, per_level, detail)
        i_at = self._place("inputs", in_bytes, {**fits, "own": in_bytes}, per_level, detail)
        o_at = self._place("outputs", out_bytes, {**fits, "own": out_bytes}, per_level, detail)
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
        layers = None
        if detail:
            latency_l = layer(latency)
            # a layer's weights are placed as one; its inputs are its first GEMM's, its outputs its last's
            at = {"weights_at": w_at[..., :L], "inputs_at": i_at[..., :L],
                  "outputs_at": np.where(factorised, o_at[..., L:], o_at[..., :L])}
            names = np.array(self.level_names + ["-"], dtype=object)
            chip = np.array(["on" if not off else "off" for off in self.level_off_chip] + ["-"], dtype=object)
            at = {key: np.where(r.present, v, -1) for key, v in at.items()}
            layers = {
                "macs": r.macs, "params": r.weight_params + r.bias_params,
                "wbits": wb, "abits": ab, "rank": rank, "cycles": layer(cycles * present),
                "compute_ms": layer(compute_s * present) * 1e3, "memory_ms": layer(memory_s * present) * 1e3,
                "latency_ms": latency_l * 1e3, "energy_mj": layer(energy) * 1e3,
                "utilization": np.divide(layer(macs), self.peak * p.clock_hz * rate[..., :L] * latency_l,
                                         out=np.zeros_like(latency_l), where=latency_l > 0),
                "bound": np.where(~r.present, "dropped",
                                  np.where(layer(compute_s * present) >= layer(memory_s * present), "compute", "memory")),
                "weight_bytes": layer_weights,
                **{key: names[v] for key, v in at.items()},
            }
            if np.ndim(r.present) == 1:  # on/off chip for weights/inputs/outputs: narrow enough for a terminal
                layers["placement"] = np.array(["/".join(x) for x in zip(*(chip[v] for v in at.values()))],
                                               dtype=object)
        return layer(latency), layer(energy), layers
