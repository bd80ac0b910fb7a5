"""CompressionConfig: what to do to each layer, as plain, versioned, serialisable data.

The same config applied to the same model gives the same compressed model. Its shapes, size
and cost follow from a LayerTable and the config alone (:func:`resolve`), without building it.
"""
from __future__ import annotations

import difflib
import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocompress import operators
from autocompress._errors import UserError
from autocompress.graph import LayerTable
from autocompress.operators import SUPPORTED_BITS

__all__ = ["LayerConfig", "ArchConfig", "CompressionConfig", "ResolvedConfig", "resolve", "kept_channels",
           "factor_rank", "FLOAT_BITS", "SUPPORTED_BITS"]

FORMAT = "autocompress.CompressionConfig"
VERSION = 2  # 2: per-layer rank, arch (width, dropped blocks)
FLOAT_BITS = 32


class LayerConfig(BaseModel):
    """A layer's settings: the built-in knobs below, plus one field per registered plug-in
    operator (``autocompress.operators``), checked by that operator."""

    model_config = ConfigDict(extra="allow")

    prune: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of output channels removed")
    wbits: int | None = Field(None, description="weight bits; None keeps float weights")
    abits: int | None = Field(None, description="input activation bits; None keeps float")
    rank: float | None = Field(None, gt=0.0, le=1.0, description="low-rank factorisation: kept fraction of the "
                               "layer's full rank (after pruning); None keeps the layer whole")

    @field_validator("wbits", "abits")
    @classmethod
    def _bits(cls, v: int | None) -> int | None:
        if v is not None and v not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, not {v}")
        return v

    @model_validator(mode="after")
    def _plugin_fields(self):
        extra = self.__pydantic_extra__ or {}
        for key in list(extra):
            plugins = [op.knob for op in operators.plugins()]
            if key not in plugins:
                raise ValueError(f"unknown field {key!r} (plug-in operators: {', '.join(plugins) or 'none'})")
            extra[key] = operators.get(key).validate(extra[key])
        return self

    def value(self, knob: str):
        """A plug-in operator's value for this layer (its default where unset)."""
        return (self.__pydantic_extra__ or {}).get(knob, operators.get(knob).default)


class ArchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: float = Field(1.0, gt=0.0, le=1.0, description="width multiplier: every channel group keeps this "
                         "fraction of what its pruning ratio leaves")
    drop: list[str] = Field(default_factory=list, description="residual blocks replaced by their skip "
                            "connection (input and output shapes must match)")


class CompressionConfig(BaseModel):
    """Per-layer compression settings, keyed by the layer's module name.

    Pruning acts on channel groups (layers that share channels through a residual add or a
    depthwise conv); a ratio given for any layer of a group applies to the whole group.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["autocompress.CompressionConfig"] = FORMAT
    version: int = VERSION
    layers: dict[str, LayerConfig] = Field(default_factory=dict)
    arch: ArchConfig = Field(default_factory=ArchConfig)
    channel_multiple: int = Field(1, ge=1, description="kept channel counts are multiples of this")
    fold_batchnorm: bool = Field(False, description="batch norms are folded into the convs before them "
                                 "(scale into the weights, shift into the bias), as deployed")
    clip: tuple[float, float] | None = Field(None, description="quantisation range [min, max]: weights and "
                                             "activations are clipped to it before they are quantised")
    importance: Literal["l2", "l1"] = "l2"
    meta: dict = Field(default_factory=dict, description="where it came from (model, target, trial)")

    # --- serialisation ---------------------------------------------------------------------
    @field_validator("clip")
    @classmethod
    def _clip(cls, v):
        if v is not None and not v[0] < 0 < v[1]:
            raise ValueError(f"clip range must contain 0 (min < 0 < max), not {list(v)}")
        return v

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "CompressionConfig":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise UserError(f"{source}: field {field!r}: {err['msg']}") from None

    @classmethod
    def load(cls, path: str | Path) -> "CompressionConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} does not exist")
        try:
            from autocompress.utils import read_input_text
            data = yaml.safe_load(read_input_text(path, "config"))  # YAML is a superset of JSON
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML/JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping with 'layers', got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise UserError(f"{path}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version", VERSION) > VERSION:
            raise UserError(f"{path}: config version {data['version']} is newer than this "
                            f"autocompress understands ({VERSION}); upgrade autocompress")
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        from autocompress.utils import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json())

    # --- helpers ----------------------------------------------------------------------------
    def layer(self, name: str) -> LayerConfig:
        return self.layers.get(name) or LayerConfig()

    def with_default_bits(self, table: LayerTable, wbits: int | None, abits: int | None) -> "CompressionConfig":
        """A copy where every layer of ``table`` without bits gets ``wbits`` / ``abits``."""
        layers = {}
        for name in table.names:
            lc = self.layer(name)
            layers[name] = lc.model_copy(update={
                "wbits": lc.wbits if lc.wbits is not None else wbits,
                "abits": lc.abits if lc.abits is not None else abits})
        return self.model_copy(update={"layers": layers})


def clamp_bits(bits: int | None, low: int | None, high: int | None) -> int | None:
    """``bits`` moved into [low, high], to the nearest supported width inside (None: float)."""
    inside = [b for b in SUPPORTED_BITS if (low is None or b >= low) and (high is None or b <= high)]
    if not inside:
        raise UserError(f"no supported bit-width lies in [{low}, {high}]; supported: {list(SUPPORTED_BITS)}")
    if bits is None:
        return None if high is None else inside[-1]
    return min(inside, key=lambda b: (abs(b - bits), -b))


def kept_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """Channels left after pruning ``ratio`` of ``channels``: round((1 - r) * C), rounded to a
    multiple of ``multiple`` (never below one multiple, never above C)."""
    keep = math.floor((1.0 - ratio) * channels / multiple + 0.5) * multiple
    return int(min(channels, max(min(multiple, channels), keep)))


def factor_rank(ratio: float, out_channels: int, in_per_group: int, kernel_area: int) -> int:
    """Rank kept by a low-rank factorisation: round(ratio x full rank), at least 1, where the
    full rank of the (out, in x kernel) weight matrix is the smaller of its two sides."""
    return max(1, math.floor(ratio * min(out_channels, in_per_group * kernel_area) + 0.5))


@dataclass(frozen=True)
class ResolvedConfig:
    """A config laid over a LayerTable: per-layer compressed shapes and bits, as arrays.

    A factorised layer (rank > 0) is two layers, k x k to ``rank`` channels then 1 x 1 to the
    outputs; its MACs and parameters are those of the pair. A layer of a dropped block is
    absent (present = False, no MACs, no parameters).
    """

    names: list[str]
    in_channels: np.ndarray
    out_channels: np.ndarray
    groups: np.ndarray
    macs: np.ndarray
    weight_params: np.ndarray
    bias_params: np.ndarray
    wbits: np.ndarray  # FLOAT_BITS where unquantised
    abits: np.ndarray
    rank: np.ndarray  # 0 where the layer is not factorised
    present: np.ndarray  # False where the layer's block is dropped
    kept: dict[str, int]  # channel group -> channels kept
    extra_params: int | np.ndarray  # batch norm and other non-layer parameters left
    plugins: dict[str, np.ndarray] = field(default_factory=dict)  # plug-in knob -> per-layer value (NaN: unset)

    @property
    def params(self) -> int:
        return int(self.weight_params.sum() + self.bias_params.sum()) + int(self.extra_params)

    @property
    def size_bytes(self) -> int:
        """Weights at their bit-widths, one fp32 scale per output channel of a quantised layer
        (of each factor of a factorised one), biases and every other parameter in fp32."""
        quant = (self.wbits < FLOAT_BITS) & self.present
        weight_bits = int((self.weight_params * self.wbits).sum())
        scales = int(((self.out_channels + self.rank) * quant).sum())
        return math.ceil(weight_bits / 8) + 4 * (scales + int(self.bias_params.sum()) + int(self.extra_params))


def group_ratios(table: LayerTable, config: CompressionConfig) -> dict[str, float]:
    """Pruning ratio per channel group; unknown layers and conflicting ratios are errors."""
    ratios: dict[str, tuple[float, str]] = {}
    for name, lc in config.layers.items():
        if name not in table:
            close = difflib.get_close_matches(name, table.names, n=3)
            hint = f" (nearest: {', '.join(close)})" if close else ""
            raise UserError(f"config names layer {name!r}, which the model does not have{hint}")
        if lc.rank is not None and table[name].groups > 1:
            raise UserError(f"layer {name!r} is a grouped or depthwise convolution: it has no rank to cut")
        if lc.prune <= 0:
            continue
        layer_groups = table[name].out_groups
        if not layer_groups:
            raise UserError(f"layer {name!r} cannot be pruned: its outputs are the model's outputs "
                            "or reach them through a link autocompress cannot follow")
        for group in layer_groups:
            if group in ratios and ratios[group][0] != lc.prune:
                other = ratios[group][1]
                raise UserError(f"layers {other!r} and {name!r} share channels (residual, concat or "
                                f"depthwise link): give them the same pruning ratio ({ratios[group][0]} vs {lc.prune})")
            ratios[group] = (lc.prune, name)
    return {g: r for g, (r, _) in ratios.items()}


def effective_ratios(table: LayerTable, config: CompressionConfig) -> dict[str, float]:
    """Pruning ratio per channel group with the width multiplier folded in."""
    ratios = group_ratios(table, config)
    w = config.arch.width
    if w >= 1.0:
        return ratios
    return {g: 1.0 - (1.0 - ratios.get(g, 0.0)) * w for g in table.groups}


def check_blocks(table: LayerTable, config: CompressionConfig) -> list[str]:
    for name in config.arch.drop:
        if name not in table.blocks:
            droppable = ", ".join(table.blocks) or "none"
            raise UserError(f"config drops block {name!r}, which is not a residual block with matching "
                            f"input and output shapes in this model (droppable: {droppable})")
    return config.arch.drop


@dataclass(frozen=True)
class _Plan:
    """Per-table arrays that make :func:`resolve` a few vector operations."""

    index: dict[str, int]
    group_names: list[str]
    group_channels: np.ndarray
    group_extra: np.ndarray
    block_layers: dict[str, np.ndarray]  # block -> mask of its layers
    block_extra: dict[str, np.ndarray]  # block -> per-group extra parameters per channel inside it
    out_inc: np.ndarray  # layers x groups: 1 where the group's channels are the layer's outputs
    in_inc: np.ndarray
    out_fixed: np.ndarray  # channels of layers without groups (else 0)
    in_fixed: np.ndarray
    in_per_channel: np.ndarray
    depthwise: np.ndarray
    groups: np.ndarray
    spatial: np.ndarray  # output positions
    kernel: np.ndarray
    has_bias: np.ndarray
    batchnorm_params: np.ndarray  # per layer: parameters per channel of the batch norm after it


#: each live LayerTable's plan, built on first use and dropped with the table (a cache of this
#: module's own: the table knows nothing of it)
_PLANS: dict[int, _Plan] = {}


def _plan(table: LayerTable) -> _Plan:
    plan = _PLANS.get(id(table))
    if plan is not None:
        return plan
    gnames = list(table.groups)
    gidx = {g: i for i, g in enumerate(gnames)}
    n, k = len(table.layers), len(gnames)
    out_inc, in_inc = np.zeros((n, k)), np.zeros((n, k))
    for i, layer in enumerate(table.layers):
        for g in layer.out_groups:
            out_inc[i, gidx[g]] = 1
        for g in layer.in_groups:
            in_inc[i, gidx[g]] = 1
    L = table.layers
    block_layers, block_extra = {}, {}
    for b in table.blocks.values():
        block_layers[b.name] = np.array([x.name in b.layers for x in L])
        block_extra[b.name] = np.array([sum(n for m, n in table.groups[g].extra_modules if m.startswith(b.name + "."))
                                        for g in gnames], dtype=np.int64)
    plan = _Plan(
        index={layer.name: i for i, layer in enumerate(L)}, group_names=gnames,
        group_channels=np.array([table.groups[g].channels for g in gnames], dtype=np.float64),
        group_extra=np.array([table.groups[g].extra_params_per_channel for g in gnames], dtype=np.int64),
        block_layers=block_layers, block_extra=block_extra,
        out_inc=out_inc, in_inc=in_inc,
        out_fixed=np.array([0 if x.out_groups else x.out_channels for x in L], dtype=np.int64),
        in_fixed=np.array([0 if x.in_groups else x.in_channels for x in L], dtype=np.int64),
        in_per_channel=np.array([x.in_per_channel for x in L], dtype=np.int64),
        depthwise=np.array([x.depthwise for x in L]),
        groups=np.array([x.groups for x in L], dtype=np.int64),
        spatial=np.array([x.spatial for x in L], dtype=np.int64),
        kernel=np.array([x.kernel[0] * x.kernel[1] for x in L], dtype=np.int64),
        has_bias=np.array([x.bias_params > 0 for x in L]),
        batchnorm_params=np.array([x.batchnorm_params_per_channel for x in L], dtype=np.int64),
    )
    _PLANS[id(table)] = plan
    weakref.finalize(table, _PLANS.pop, id(table), None)
    return plan


def _fill(plan: _Plan, table: LayerTable, config: CompressionConfig, kept, wbits, abits, rank, present, extra,
          plugins: dict[str, np.ndarray]):
    """Write one config's kept channels, bits, rank ratios, plug-in values and dropped layers
    into row arrays."""
    for g, r in effective_ratios(table, config).items():
        i = plan.group_names.index(g)
        kept[i] = kept_channels(int(plan.group_channels[i]), r, config.channel_multiple)
    for name, lc in config.layers.items():
        i = plan.index[name]
        if lc.wbits:
            wbits[i] = lc.wbits
        if lc.abits:
            abits[i] = lc.abits
        if lc.rank is not None:
            rank[i] = lc.rank
        for knob, v in (lc.model_extra or {}).items():
            op = operators.get(knob)
            if operators.is_identity(op, v):
                continue
            if not op.applies_to(table[name]):
                raise UserError(f"layer {name!r} cannot take {knob} ({op.description})")
            plugins[knob][i] = float(v)
    for b in check_blocks(table, config):
        present &= ~plan.block_layers[b]
        extra -= plan.block_extra[b]


def _shapes(plan: _Plan, table: LayerTable, kept, rank_ratio, present, group_extra, fold):
    """Compressed shapes, MACs and parameters from kept channels; arrays have a config axis."""
    cout = (kept @ plan.out_inc.T).astype(np.int64) + plan.out_fixed
    cin = (kept @ plan.in_inc.T).astype(np.int64) * plan.in_per_channel + plan.in_fixed
    groups = np.where(plan.depthwise, cout, plan.groups)
    k_in = cin // groups * plan.kernel  # GEMM depth
    full = np.minimum(cout, k_in)
    rank = np.where(rank_ratio > 0, np.maximum(1, np.floor(rank_ratio * full + 0.5)), 0).astype(np.int64)
    wparams = np.where(rank > 0, rank * (k_in + cout), cout * k_in) * present
    macs = plan.spatial * wparams
    extra = table.other_params + (kept.astype(np.int64) * group_extra).sum(axis=-1)
    # a folded batch norm leaves only a bias on its conv
    folded = (plan.batchnorm_params > 0) & present & fold[..., None]
    extra = extra - (plan.batchnorm_params * cout * folded).sum(axis=-1)
    bparams = np.where((plan.has_bias | folded) & present, cout, 0)
    return cin, cout, groups, macs, wparams, bparams, rank, extra


def _plugin_arrays(shape) -> dict[str, np.ndarray]:
    return {op.knob: np.full(shape, np.nan) for op in operators.plugins()}


def resolve(table: LayerTable, config: CompressionConfig) -> ResolvedConfig:
    """Compressed shapes, parameters, MACs and bits of every layer, from the table and config."""
    plan = _plan(table)
    n = len(plan.index)
    kept = plan.group_channels.copy()
    wbits, abits = np.full(n, FLOAT_BITS, dtype=np.int64), np.full(n, FLOAT_BITS, dtype=np.int64)
    rank, present, gextra = np.zeros(n), np.ones(n, dtype=bool), plan.group_extra.copy()
    plugins = _plugin_arrays((n,))
    _fill(plan, table, config, kept, wbits, abits, rank, present, gextra, plugins)
    cin, cout, groups, macs, wparams, bparams, rank, extra = _shapes(plan, table, kept, rank,
                                                                     present, gextra, np.array(config.fold_batchnorm))
    kept_map = dict(zip(plan.group_names, kept.astype(int).tolist()))
    return ResolvedConfig(table.names, cin, cout, groups, macs, wparams, bparams, wbits, abits, rank, present,
                          kept_map, int(extra), plugins)


def resolve_many(table: LayerTable, configs: list[CompressionConfig]) -> ResolvedConfig:
    """:func:`resolve` for many configs at once: every array gets a leading config axis."""
    plan = _plan(table)
    n, L = len(configs), len(plan.index)
    kept = np.tile(plan.group_channels, (n, 1))
    wbits, abits = np.full((n, L), FLOAT_BITS, dtype=np.int64), np.full((n, L), FLOAT_BITS, dtype=np.int64)
    rank, present = np.zeros((n, L)), np.ones((n, L), dtype=bool)
    gextra = np.tile(plan.group_extra, (n, 1))
    plugins = _plugin_arrays((n, L))
    for row, config in enumerate(configs):
        _fill(plan, table, config, kept[row], wbits[row], abits[row], rank[row], present[row], gextra[row],
              {k: v[row] for k, v in plugins.items()})
    fold = np.array([c.fold_batchnorm for c in configs])
    cin, cout, groups, macs, wparams, bparams, rank, extra = _shapes(plan, table, kept, rank,
                                                                     present, gextra, fold)
    return ResolvedConfig(table.names, cin, cout, groups, macs, wparams, bparams, wbits, abits, rank, present,
                          {}, extra, plugins)
