"""Target: what search, evaluation and reports may ask of any hardware target.

A target states what it can compute (its precisions and the knobs worth searching on it), how the
uncompressed model runs on it (its reference precision), where its figures come from (its origin)
and how to cost compression configs of a LayerTable, one or many at once. Analytic profiles
(:class:`~autocompress.hardware.profile.HardwareProfile`: systolic arrays of every dataflow,
rooflines, Bit Fusion's bit-flexible array) implement it; which fabric computes the cycles is the
profile's business, not the caller's.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

    from autocompress.config import CompressionConfig
    from autocompress.graph import LayerTable
    from autocompress.hardware.cost import Cost

__all__ = ["Target", "OriginKind"]

#: modeled: an analytic model of a paper or datasheet; calibrated: an analytic model fitted to
#: measurements on a device; measured: timed on the device itself
OriginKind = Literal["modeled", "calibrated", "measured"]


class Target(ABC):
    """The interface a hardware target offers.

    Besides the three abstract methods, a target has these attributes (plain class or instance
    attributes, or pydantic fields; not declared here so that no framework mistakes them for its own):

    * ``name``: str
    * ``precisions``: the native (weight bits, activation bits) pairs and their rates
    * ``reference_precision``: how the uncompressed model runs on the target
    * the knobs the search may use on it: ``packed_weight_storage`` (bits below the native width
      pay off in memory only when weights are stored packed), ``channel_multiple`` (pruned channel
      counts are kept at multiples of it), ``folds_batchnorm`` (batch norms fold into convs where
      the target's runtime does so), ``sparsity`` ("none", or the sparse units a sparsity
      operator is costed at; absent means none)

    ``cost_many`` may be overridden where costing in bulk is cheaper than one at a time.

    What callers ask instead of which kind of target they hold: :attr:`measures_built_models`
    (a config is costed by building the model and timing it here, so trials run one at a time),
    :attr:`layerwise` (``cost(detail=True)`` splits the figures by layer), :attr:`spec` (how a
    later run names it again) and :meth:`record` (what a run directory keeps of it).
    """

    #: a config is costed by building the model and timing it on this machine, not from the
    #: LayerTable: trials then run one at a time and :meth:`cost` has nothing to offer
    measures_built_models: bool = False

    @property
    def layerwise(self) -> bool:
        """Whether :meth:`cost` with ``detail`` gives per-layer figures (analytic models do)."""
        return not self.measures_built_models

    @property
    def spec(self) -> str:
        """What ``load_target`` takes to give this target back (its name, for a shipped one)."""
        return self.name

    def record(self) -> dict:
        """What a run directory keeps of the target, for reports that load no model."""
        return {"spec": self.spec}

    @property
    @abstractmethod
    def origin_kind(self) -> OriginKind:
        """How the target's figures are obtained."""

    @property
    def origin(self) -> str:
        """What every cost figure carries: ``modeled:<name>`` (analytic models, calibrated ones
        included: their figures are the model's) or ``measured:<device>``."""
        kind = "measured" if self.origin_kind == "measured" else "modeled"
        return f"{kind}:{self.name}"

    @abstractmethod
    def describe(self) -> list[str]:
        """Lines a person reads to know what the target is, with assumed figures marked."""

    @abstractmethod
    def cost(self, table: "LayerTable", config: "CompressionConfig", *, detail: bool = False) -> "Cost":
        """Latency and energy of one config (per layer too when ``detail``)."""

    def cost_many(self, table: "LayerTable", configs: list["CompressionConfig"]) -> tuple["np.ndarray", "np.ndarray"]:
        """Latency (s) and energy (J) of many configs."""
        import numpy as np

        costs = [self.cost(table, c) for c in configs]
        return np.array([c.latency_s for c in costs]), np.array([c.energy_j for c in costs])
