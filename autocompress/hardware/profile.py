"""HardwareProfile: a YAML file, validated by this schema, that states what a device can do.

Every figure cites a source (the ``source`` fields). Sizes and rates may be written with units
("24 MiB", "34 GB/s", "700 MHz"). A profile is found by name among the shipped ones
(hw_profiles/) or read from a path.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from autocompress.utils import load_yaml_file, shipped_yaml

__all__ = ["HardwareProfile", "Precision", "MemoryLevel", "load_profile", "list_profiles"]

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _quantity(v):
    """'24 MiB' -> 25165824, '34 GB/s' -> 3.4e10, '700 MHz' -> 7e8; numbers pass through."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?\s*(B|B/s|Hz|bytes|W|)\s*", v)
        if not m:
            raise ValueError(f"cannot read {v!r} as a number with a unit (e.g. '24 MiB', '34 GB/s')")
        return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    return v


Quantity = Annotated[float, BeforeValidator(_quantity)]
PositiveQuantity = Annotated[float, BeforeValidator(_quantity), Field(gt=0)]


class _Strict(BaseModel):
    # every figure is finite: YAML's .inf / .nan and "1e999 Hz" (which reads as inf) are refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Fabric(_Strict):
    kind: Literal["systolic_array", "roofline"]
    rows: int | None = Field(None, gt=0)
    cols: int | None = Field(None, gt=0)
    dataflow: Literal["weight_stationary"] = "weight_stationary"
    weight_load_cycles: int | None = Field(None, ge=0, description="cycles to shift one weight tile in")
    double_buffered_weights: bool = True
    source: str = ""

    @model_validator(mode="after")
    def _array_dims(self):
        if self.kind == "systolic_array" and (self.rows is None or self.cols is None):
            raise ValueError("a systolic_array fabric needs rows and cols")
        return self


class Precision(_Strict):
    weights: int = Field(gt=0, le=32)
    activations: int = Field(gt=0, le=32)
    relative_rate: float = Field(gt=0, le=64, description="MACs per cycle relative to peak_macs_per_cycle")
    energy_per_mac_pj: float | None = Field(None, ge=0)
    source: str = ""


class MemoryLevel(_Strict):
    name: str
    size_bytes: PositiveQuantity
    bandwidth_bytes_per_s: PositiveQuantity
    energy_pj_per_byte: float = Field(0.0, ge=0)
    holds: list[Literal["weights", "activations"]]
    off_chip: bool = False
    source: str = ""


class Power(_Strict):
    idle_w: float = Field(ge=0)
    busy_w: float = Field(ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _order(self):
        if self.busy_w < self.idle_w:
            raise ValueError(f"busy_w ({self.busy_w}) is below idle_w ({self.idle_w})")
        return self


class ReferencePrecision(_Strict):
    weights: int = Field(gt=0, le=32)
    activations: int = Field(gt=0, le=32)


class HardwareProfile(_Strict):
    name: str
    description: str
    category: Literal["tpu", "asic", "gpu", "cpu", "other"]
    clock_hz: PositiveQuantity
    peak_macs_per_cycle: float = Field(gt=0, description="MACs per cycle at relative_rate 1")
    fabric: Fabric
    precisions: list[Precision] = Field(min_length=1)
    reference_precision: ReferencePrecision
    memory: list[MemoryLevel] = Field(min_length=1)
    power: Power
    packed_weight_storage: bool = Field(
        False, description="weights below the native width are stored bit-packed off chip")
    energy_model: Literal["power", "per_access"] = Field(
        "power", description="power: time x (idle + utilisation x (busy - idle)) plus off-chip bytes;"
        " per_access: MACs x energy per MAC + bytes x energy per byte + idle (static) power x time")
    sparsity: Literal["none"] = "none"
    layer_overhead_cycles: int = Field(0, ge=0)
    memory_overlap: bool = Field(True, description="memory transfers overlap compute (a roofline: a layer takes "
                                 "max(compute, memory)); false: they add up, as in a runtime that dequantises "
                                 "each layer's weights before running its kernel")
    folds_batchnorm: bool = Field(True, description="batch norms run folded into the convs before them (what "
                                  "inference runtimes and integer accelerators do)")
    channel_multiple: int = Field(1, ge=1, description="pruning keeps channel counts that are multiples of this "
                                  "(what the fabric computes at full efficiency)")
    batch_size: int = Field(1, gt=0)
    notes: list[str] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        ref = (self.reference_precision.weights, self.reference_precision.activations)
        if ref not in {(p.weights, p.activations) for p in self.precisions}:
            raise ValueError(f"reference_precision {ref} is not one of the listed precisions")
        if not any("weights" in m.holds for m in self.memory):
            raise ValueError("no memory level holds weights")
        if not any("activations" in m.holds for m in self.memory):
            raise ValueError("no memory level holds activations")
        if self.energy_model == "per_access" and any(p.energy_per_mac_pj is None for p in self.precisions):
            raise ValueError("energy_model per_access needs energy_per_mac_pj on every precision")
        # a device spends energy computing: with every compute energy at zero, every model would
        # cost (nearly) nothing, silently
        if self.energy_model == "power" and self.power.busy_w <= 0:
            raise ValueError("power.busy_w is 0: energy_model power costs compute as time x power, so every "
                             "model would cost 0 J of compute; give the device's busy power")
        if self.energy_model == "per_access":
            zero = [f"{p.weights}/{p.activations}" for p in self.precisions if not p.energy_per_mac_pj]
            if zero:
                raise ValueError(f"energy_per_mac_pj is 0 for precision(s) {', '.join(zero)}: a MAC costs "
                                 "energy; give the figure the device's source states")
        return self

    @property
    def peak_macs_per_s(self) -> float:
        return self.peak_macs_per_cycle * self.clock_hz * max(p.relative_rate for p in self.precisions)

    @property
    def peak_tops(self) -> float:
        """Peak tera-operations per second at the fastest precision (2 operations per MAC)."""
        return 2 * self.peak_macs_per_s / 1e12

    def native(self, wbits: int, abits: int) -> Precision:
        """The precision a (wbits, abits) layer runs at: the fastest native one at least as
        wide in both operands; the widest if none is (float on an integer-only device)."""
        fits = [p for p in self.precisions if p.weights >= wbits and p.activations >= abits]
        if not fits:
            return max(self.precisions, key=lambda p: (p.weights + p.activations, p.relative_rate))
        return max(fits, key=lambda p: (p.relative_rate, -(p.weights + p.activations)))

    @property
    def origin(self) -> str:
        return f"modeled:{self.name}"


def list_profiles() -> list[str]:
    return sorted(shipped_yaml("autocompress.hw_profiles"))


def load_profile(target: str | Path) -> HardwareProfile:
    """A shipped profile by name, or a YAML file by path; errors name the file and field."""
    if isinstance(target, HardwareProfile):
        return target
    return load_yaml_file(target, "autocompress.hw_profiles", "target", HardwareProfile)
