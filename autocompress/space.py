"""SearchSpace: which knobs the search turns, over which layers, with which values.

A space is a YAML file (search_spaces/*.yaml or a path) with rules::

    name: default
    exclude: [last]                 # glob patterns of layer names; 'first' / 'last' = the first
                                    # and last layer the forward pass runs (stem, classifier)
    knobs:
      - knob: prune                 # prune | wbits | abits | rank | width | drop | a plug-in's (sparse24)
        per: group                  # group (channel group) | layer | all (one value for all matched)
        layers: ["layer*"]          # glob patterns (default: every layer)
        exclude: [first]            # more exclusions for this rule
        choices: [0.0, 0.25, 0.5]   # or range: [0.0, 0.6] with step: 0.05
      - knob: rank                  # low-rank factorisation: kept fraction of the full rank;
        per: layer                  # 1.0 keeps the layer whole (grouped convs are skipped)
        layers: ["layer4.*"]
        choices: [0.25, 0.5, 1.0]
      - knob: width                 # width multiplier on every channel group (per: all)
        per: all
        choices: [0.75, 1.0]
      - knob: drop                  # depth: 1 drops a residual block (per: block; `layers`
        per: block                  # patterns match block names, e.g. "layer*")
        layers: ["layer3.*", "layer4.*"]
        choices: [0, 1]

Laid over a model's LayerTable the space becomes a flat list of :class:`Param` (what samplers
see) and :meth:`BoundSpace.config` turns one assignment of them into a CompressionConfig.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autocompress import operators
from autocompress._errors import UserError
from autocompress.config import CompressionConfig, LayerConfig, clamp_bits
from autocompress.graph import LayerTable
from autocompress.utils import load_yaml_file, shipped_yaml

__all__ = ["SearchSpace", "BoundSpace", "Param", "load_space", "list_spaces"]


class KnobRule(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/nan choices, ranges or steps

    knob: str = Field(description="an operator's knob: prune, wbits, abits, rank, width, drop, or a plug-in "
                      "operator's (autocompress.operators)")
    per: Literal["group", "layer", "all", "block"] = "layer"
    layers: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    choices: list[float] | None = None
    range: tuple[float, float] | None = None
    step: float | None = Field(None, gt=0)
    name: str | None = None

    @field_validator("knob")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in operators.names():
            raise ValueError(f"unknown knob {v!r}; valid: {', '.join(operators.names())}")
        return v

    @model_validator(mode="after")
    def _values(self):
        if (self.choices is None) == (self.range is None):
            raise ValueError("give exactly one of 'choices' or 'range'")
        if self.choices is not None and not self.choices:
            raise ValueError("'choices' is empty")
        op = operators.get(self.knob)
        op.check(self.choices if self.choices is not None else list(self.range), self.range is not None)
        if self.range is not None and self.range[0] >= self.range[1]:
            raise ValueError(f"range {list(self.range)} is empty (low must be below high)")
        if self.per == "group" and self.knob != "prune":
            raise ValueError("per: group applies to the prune knob only")
        if (self.per == "block") != (self.knob == "drop"):
            raise ValueError("the drop knob is chosen per: block, and per: block is for the drop knob only")
        if self.knob == "width" and self.per != "all":
            raise ValueError("width is one multiplier for the whole model (per: all)")
        if self.knob == "prune" and self.per == "layer":
            raise ValueError("prune is chosen per channel group (per: group) or for all layers "
                             "(per: all): layers that share channels must share their ratio")
        if self.per not in op.per:
            raise ValueError(f"{self.knob} is chosen per: {' or '.join(op.per)}, not per: {self.per}")
        return self


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    exclude: list[str] = Field(default_factory=list)
    knobs: list[KnobRule] = Field(min_length=1)

    def bind(self, table: LayerTable) -> "BoundSpace":
        return BoundSpace.build(self, table)


@dataclass(frozen=True)
class Param:
    """One dimension of the search: a name, and either choices or a (low, high, step) range."""

    name: str
    knob: str
    layers: tuple[str, ...]
    choices: tuple[float, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def categorical(self) -> bool:
        return self.choices is not None


def _values(rule: KnobRule) -> dict:
    if rule.choices is not None:
        return dict(choices=tuple(rule.choices))
    return dict(low=rule.range[0], high=rule.range[1], step=rule.step)


def _match(name: str, patterns: list[str], table: LayerTable) -> bool:
    for p in patterns:
        if p == "first" and name == table.names[0] or p == "last" and name == table.names[-1]:
            return True
        if fnmatch.fnmatchcase(name, p):
            return True
    return False


@dataclass
class BoundSpace:
    """A SearchSpace laid over one model's LayerTable."""

    space: SearchSpace
    table: LayerTable
    params: list[Param]
    notes: list[str] = field(default_factory=list)
    channel_multiple: int = 1
    clip_range: tuple[float, float] | None = None  # every quantised tensor is clipped to it first

    @classmethod
    def build(cls, space: SearchSpace, table: LayerTable) -> "BoundSpace":
        params: dict[str, Param] = {}
        for i, rule in enumerate(space.knobs):
            excluded = space.exclude + rule.exclude
            if rule.knob == "width":
                params["width"] = Param("width", "width", ("arch.width",), **_values(rule))
                continue
            if rule.knob == "drop":
                for b in table.blocks:
                    if any(fnmatch.fnmatchcase(b, p) for p in rule.layers) and \
                            not any(fnmatch.fnmatchcase(b, p) for p in excluded):
                        params[f"drop:{b}"] = Param(f"drop:{b}", "drop", (b,), **_values(rule))
                continue
            layers = [n for n in table.names
                      if _match(n, rule.layers, table) and not _match(n, excluded, table)]
            op = operators.get(rule.knob)
            if rule.knob != "prune":  # layers the knob cannot act on (rank: grouped and depthwise convs)
                layers = [n for n in layers if op.applies_to(table[n])]
            if rule.knob == "prune":  # a group is searched only if none of its producers is excluded
                layers = [n for n in layers if table[n].out_groups and not any(
                    _match(p, excluded, table) for g in table[n].out_groups for p in table.groups[g].producers)]
            if not layers:
                continue
            values = _values(rule)
            if rule.per == "all":
                label = rule.name or f"rule{i}"
                units = [(f"{rule.knob}:{label}", tuple(layers))]
            elif rule.per == "group":
                units = []
                for g in dict.fromkeys(g for n in layers for g in table[n].out_groups):
                    units.append((f"prune:{g}", (g,)))
            else:
                units = [(f"{rule.knob}:{n}", (n,)) for n in layers]
            for pname, members in units:  # a later rule overrides an earlier one for a layer
                for old in [k for k, p in params.items() if p.knob == rule.knob and set(p.layers) & set(members)]:
                    rest = tuple(x for x in params[old].layers if x not in members)
                    params[old] = Param(old, rule.knob, rest, params[old].choices, params[old].low,
                                        params[old].high, params[old].step)
                params[pname] = Param(pname, rule.knob, members, **values)
        kept = [p for p in params.values() if p.layers]
        if not kept:
            raise UserError(f"search space {space.name!r} touches no layer of this model "
                            f"(layers: {', '.join(table.names[:6])}...); check its layer patterns")
        return cls(space, table, kept)

    def restrict_to(self, profile) -> "BoundSpace":
        """Drop bit-width choices and knobs the target cannot profit from, with a note for each."""
        if profile is None:
            return self
        out, notes = [], []
        for p in self.params:  # each operator says what of its values pays on the target
            keep, choices, note = operators.get(p.knob).restrict(p.choices, profile)
            if note:
                notes.append(note)
            if keep:
                out.append(p if choices == p.choices else replace(p, choices=choices))
        if profile.channel_multiple > 1:
            notes.append(f"pruned channel counts are rounded to multiples of {profile.channel_multiple} "
                         f"({profile.name} computes those at full efficiency)")
        return replace(self, params=out, notes=self.notes + sorted(set(notes)),
                       channel_multiple=profile.channel_multiple)

    def restrict_bits(self, min_bits: int | None, max_bits: int | None) -> "BoundSpace":
        """Weight bit choices moved into [min_bits, max_bits] (to the nearest supported width
        inside), so no trial is spent on a candidate the bounds reject."""
        if min_bits is None and max_bits is None:
            return self
        out, notes = [], []
        for p in self.params:
            if p.knob != "wbits":
                out.append(p)
                continue
            choices = tuple(sorted({clamp_bits(c, min_bits, max_bits) for c in p.choices}))
            if choices != tuple(sorted(set(p.choices))):
                notes.append(f"weight bits outside [{min_bits or 2}, {max_bits or 16}] moved inside the bounds")
            out.append(Param(p.name, p.knob, p.layers, choices))
        return replace(self, params=out, notes=self.notes + sorted(set(notes)))

    @property
    def searchable(self) -> list[Param]:
        """Params with more than one value (the ones a sampler must choose)."""
        return [p for p in self.params if not (p.categorical and len(p.choices) == 1)]

    def config(self, values: dict[str, float], *, meta: dict | None = None) -> CompressionConfig:
        """The CompressionConfig for one assignment; missing params take their first value."""
        layers: dict[str, dict] = {}
        arch: dict = {"width": 1.0, "drop": []}
        for p in self.params:
            v = values.get(p.name, p.choices[0] if p.categorical else p.low)
            if p.knob == "width":
                arch["width"] = float(v)
                continue
            if p.knob == "drop":
                if v >= 0.5:
                    arch["drop"].append(p.layers[0])
                continue
            op = operators.get(p.knob)
            v = op.cast(v)
            if p.knob == "rank" and v >= 1.0:  # full rank: the layer stays whole
                continue
            if op.plugin and operators.is_identity(op, v):
                continue
            targets = p.layers
            if p.knob == "prune":  # a group param names its lead layer; record the ratio there
                targets = tuple(self.table.groups[g].name if g in self.table.groups else g for g in p.layers)
            for layer in targets:
                layers.setdefault(layer, {})[p.knob] = v
        return CompressionConfig(layers={k: LayerConfig(**v) for k, v in layers.items()}, arch=arch,
                                 channel_multiple=self.channel_multiple, clip=self.clip_range, meta=meta or {})


def list_spaces() -> list[str]:
    return sorted(shipped_yaml("autocompress.search_spaces"))


def default_space_for(model_spec: str) -> str:
    shipped = list_spaces()
    for prefix, space in (("resnet", "resnet"), ("mobilenet_v2", "mobilenet_v2")):
        if model_spec.startswith(prefix) and space in shipped:
            return space
    return "default"


def load_space(spec: str | Path) -> SearchSpace:
    """A shipped space by name, or a YAML file by path; errors name the file and field."""
    return load_yaml_file(spec, "autocompress.search_spaces", "search space", SearchSpace)
