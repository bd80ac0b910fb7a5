"""Compression operators: every knob the search can turn, declared in one place.

An :class:`Operator` says everything about its knob: the config field and how a value is
checked and cast, which layers take it, which direction compresses more, and, for an operator
that is a plug-in, how it changes the model (``build`` / ``finish``), what it does to a layer's
cost (``cost_factors``) and its column in the per-layer tables. The registry lists them; the
space, the samplers, the config schema, the cost model, the export and the report ask it.

The built-in knobs (prune, wbits, abits, rank, width, drop) are declared here; their shape
arithmetic lives in the vectorised engine (``config.resolve``, ``compress/``) because every
operator's shapes feed the others'. A new per-layer operator is one module: subclass
:class:`Operator`, set ``plugin = True`` and call :func:`register` (``sparse24.py`` is the
example), or ship it in another package under the ``autocompress.operators`` entry point.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

__all__ = ["Operator", "register", "get", "names", "plugins", "is_identity", "SUPPORTED_BITS"]

#: the bit-widths weights and activations may take
SUPPORTED_BITS = (2, 3, 4, 5, 6, 8, 16)


class Operator:
    """One compression knob. Subclasses override what differs from these defaults."""

    #: the knob's name: the space's ``knob:``, the per-layer config field, the param prefix
    knob: ClassVar[str]
    #: per which unit a value is chosen: "layer", "group" (channel group), "all", "block"
    per: ClassVar[tuple[str, ...]] = ("layer", "all")
    #: True where the smallest value compresses least (prune, drop); False where the largest does (bits)
    more_is_smaller: ClassVar[bool] = True
    #: True for operators outside the vectorised engine: they bring build/finish/cost_factors/column
    plugin: ClassVar[bool] = False
    #: the value that leaves a layer as it is (a layer at it is not written into the config)
    default: ClassVar[Any] = None
    #: the per-layer table's column (plug-ins) and its header
    column: ClassVar[tuple[str, str] | None] = None
    description: ClassVar[str] = ""

    # --- values -----------------------------------------------------------------------------
    def check(self, values: list[float], is_range: bool) -> None:
        """Raise ValueError with a one-line reason where the space's values cannot be this knob's."""

    def cast(self, value: float) -> Any:
        """A sampled number as the config's value."""
        return float(value)

    def validate(self, value: Any) -> Any:
        """A config value checked (ValueError) and normalised."""
        return value

    def applies_to(self, layer) -> bool:
        """Whether ``layer`` (a graph Layer) can take this knob at all."""
        return True

    def pays_on(self, target) -> str | None:
        """None where the knob can save something on ``target``; else why not (one line): the
        search space then leaves the knob out on that target, with the reason as a note."""
        return None

    def restrict(self, choices: tuple | None, target) -> tuple[bool, tuple | None, str | None]:
        """What of a space's values is worth searching on ``target``: (keep the knob at all, its
        choices (None: a range, kept as it is), a note on what was dropped and why)."""
        why_not = self.pays_on(target)
        if why_not:
            return False, None, why_not
        return True, choices, None

    # --- plug-ins only ----------------------------------------------------------------------
    def build(self, model, table, layers: dict[str, Any]) -> None:
        """Change the compressed ``model`` in place for ``layers`` (name -> value), before its
        fine-tuning; whatever fine-tuning must keep is the operator's to keep (e.g. a
        parametrisation)."""

    def finish(self, model, layers: dict[str, Any]) -> None:
        """Make the trained ``model`` final (plain weights, before folding and quantisation)."""

    def cost_factors(self, values: np.ndarray, in_per_group: np.ndarray, native_bits: np.ndarray,
                     stored_bits: np.ndarray, profile) -> tuple[np.ndarray, np.ndarray]:
        """(compute, weight bytes) multipliers of each GEMM on ``profile``; 1 where nothing changes.
        Per GEMM: the knob's value (NaN where unset), the inputs per group of its GEMM (the
        depth is that times the kernel area), the weight width it computes at and the width its
        weights are stored at."""
        one = np.ones(np.shape(values))
        return one, one

    def cell(self, value: Any) -> Any:
        """The per-layer table's cell for a layer's value (None: not set)."""
        return value


def is_identity(op: Operator, value: Any) -> bool:
    return value is None or value == op.default


# --- the built-in knobs --------------------------------------------------------------------
class _Prune(Operator):
    knob, per, default = "prune", ("group", "all"), 0.0
    description = "fraction of a channel group's output channels removed"

    def check(self, values, is_range):
        if any(not 0 <= v < 1 for v in values):
            raise ValueError("pruning ratios must be in [0, 1)")

    def applies_to(self, layer):
        return bool(layer.out_groups)


class _Bits(Operator):
    per, more_is_smaller = ("layer", "all"), False

    def check(self, values, is_range):
        if is_range:
            raise ValueError(f"{self.knob} takes 'choices' (bit-widths), not a range")
        bad = [v for v in values if v not in SUPPORTED_BITS]
        if bad:
            raise ValueError(f"unsupported bit-width {bad[0]:g}; valid: {list(SUPPORTED_BITS)}")

    def cast(self, value):
        return int(value)

    def floor(self, target) -> int | None:
        """The fewest bits that still save something on ``target`` (None: every width does)."""
        return None

    def restrict(self, choices, target):
        floor = self.floor(target)
        if floor is None or choices is None:
            return True, choices, None
        kept = tuple(sorted({max(c, floor) for c in choices}))
        if kept == tuple(sorted(set(choices))):
            return True, kept, None
        return True, kept, (f"{self.knob} below {floor} dropped: {target.name} computes {self.operand}s at "
                            f"{floor} bits or more and gains nothing from fewer")


class _WBits(_Bits):
    knob, description, operand = "wbits", "weight bits", "weight"

    def floor(self, target):  # bits below the native width pay off only where weights are stored packed
        return None if target.packed_weight_storage else min(p.weights for p in target.precisions)


class _ABits(_Bits):
    knob, description, operand = "abits", "input activation bits", "activation"

    def floor(self, target):
        return min(p.activations for p in target.precisions)


class _Fraction(Operator):
    more_is_smaller, default = False, 1.0

    def check(self, values, is_range):
        if any(not 0 < v <= 1 for v in values):
            raise ValueError(f"{self.knob} ratios must be in (0, 1] (1 keeps the layer whole)")


class _Rank(_Fraction):
    knob, per = "rank", ("layer", "all")
    description = "low-rank factorisation: kept fraction of the layer's full rank"

    def applies_to(self, layer):  # grouped and depthwise convs have no rank to cut
        return layer.groups == 1


class _Width(_Fraction):
    knob, per = "width", ("all",)
    description = "width multiplier on every channel group"


class _Drop(Operator):
    knob, per, default = "drop", ("block",), 0
    description = "1 replaces a residual block by its skip connection"

    def check(self, values, is_range):
        if is_range or any(v not in (0, 1) for v in values):
            raise ValueError("drop takes choices 0 (keep the block) and/or 1 (drop it)")


_REGISTRY: dict[str, Operator] = {}
_LOADED = [False]


def register(op: Operator) -> Operator:
    """Add ``op`` to the registry (a plug-in's knob then works in spaces, configs, costs and
    tables). Register before configs naming it are read."""
    if not getattr(op, "knob", None):
        raise ValueError("an operator needs a knob name")
    _REGISTRY[op.knob] = op
    return op


def _load() -> None:
    if _LOADED[0]:
        return
    _LOADED[0] = True
    from autocompress.operators import sparse24  # noqa: F401 - registers itself
    from importlib.metadata import entry_points

    for ep in entry_points(group="autocompress.operators"):
        ep.load()  # the module registers its operators when imported


for _op in (_Prune(), _WBits(), _ABits(), _Rank(), _Width(), _Drop()):
    register(_op)


def get(knob: str) -> Operator:
    _load()
    try:
        return _REGISTRY[knob]
    except KeyError:
        raise KeyError(knob) from None


def names() -> list[str]:
    _load()
    return list(_REGISTRY)


def plugins() -> list[Operator]:
    """The registered operators outside the vectorised engine, in registration order."""
    _load()
    return [op for op in _REGISTRY.values() if op.plugin]
