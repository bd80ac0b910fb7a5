"""HardwareProfile: a YAML file, validated by this schema, that states what a device can do.

Every figure cites a source (the ``source`` fields). Sizes and rates may be written with units
("24 MiB", "34 GB/s", "700 MHz"). A profile is found by name among the shipped ones
(hw_profiles/), read from a path, or imported from another tool's file: ``scalesim:array.cfg``
(a SCALE-Sim config), ``zigzag:accelerator.yaml`` (a ZigZag hardware file); what such a file
does not give is a stated default, listed under ``assumed``.

The fabric is a systolic array (weight-, output- or input-stationary, with double buffering
stated) or a roofline. Memory levels hold weights, inputs and/or outputs ("activations" is both):
separate ifmap / filter / ofmap SRAMs are three levels. See cost.py for where each layer's
operands live.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, WithJsonSchema,
                      model_validator)

from autocompress._errors import UserError
from autocompress.hardware.target import Target
from autocompress.utils import load_yaml_file, shipped_yaml

__all__ = ["HardwareProfile", "Precision", "MemoryLevel", "Fabric", "load_profile", "list_profiles", "IMPORT_PREFIXES"]

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _quantity(v):
    """'24 MiB' -> 25165824, '34 GB/s' -> 3.4e10, '700 MHz' -> 7e8; numbers pass through."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?\s*(B|B/s|Hz|bytes|W|)\s*", v)
        if not m:
            raise ValueError(f"cannot read {v!r} as a number with a unit (e.g. '24 MiB', '34 GB/s')")
        return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    return v


#: a quantity as a file may write it (`autocompress schema profile`): what _quantity reads, not only the float it makes
_QUANTITY_TEXT = {"type": "string", "pattern": r"^\s*[0-9.eE+-]+\s*([kKmMgGtT]i?)?\s*(B|B/s|Hz|bytes|W|)\s*$",
                  "examples": ["24 MiB", "34 GB/s", "700 MHz"]}
Quantity = Annotated[float, BeforeValidator(_quantity),
                     WithJsonSchema({"anyOf": [{"type": "number"}, _QUANTITY_TEXT]}, mode="validation")]
PositiveQuantity = Annotated[float, BeforeValidator(_quantity), Field(gt=0),
                             WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _QUANTITY_TEXT]},
                                            mode="validation")]


class _Strict(BaseModel):
    # every figure is finite: YAML's .inf / .nan and "1e999 Hz" (which reads as inf) are refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: the dataflows a profile may name, with SCALE-Sim's short names (its .cfg ``Dataflow: ws | os | is``)
DATAFLOWS = {"ws": "weight_stationary", "os": "output_stationary", "is": "input_stationary"}


class Fabric(_Strict):
    kind: Literal["systolic_array", "roofline"]
    rows: int | None = Field(None, gt=0)
    cols: int | None = Field(None, gt=0)
    dataflow: Literal["weight_stationary", "output_stationary", "input_stationary"] = Field(
        "weight_stationary", description="which operand stays in the array for a fold: the weights, the outputs "
        "(accumulated in place) or the inputs; cycles per fold follow SCALE-Sim 3.0 (ws, os or is also accepted)")
    tile_load_cycles: int | None = Field(
        None, ge=0, description="cycles to load one stationary tile (weights when weight-stationary, inputs when "
        "input-stationary; an output-stationary array has none); default: rows, one row per cycle as in SCALE-Sim")
    double_buffering: bool | None = Field(
        None, description="required for a systolic_array. true: the next stationary tile loads while the current "
        "fold streams (a fold takes max(stream, load) + fill and drain: the TPU v1's weight FIFO); false: each fold "
        "loads its tile first (load + stream + fill and drain: SCALE-Sim's compute model)")
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data):
        # files and run directories written before dataflows other than weight-stationary existed
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in (("weight_load_cycles", "tile_load_cycles"), ("double_buffered_weights", "double_buffering")):
            if old in data:
                if data.get(new) is not None and data[new] != data[old]:
                    raise ValueError(f"{old} (an older name of {new}) and {new} disagree; keep {new}")
                value = data.pop(old)
                data[new] = value if data.get(new) is None else data[new]
        if isinstance(data.get("dataflow"), str):
            data["dataflow"] = DATAFLOWS.get(data["dataflow"].lower(), data["dataflow"])
        return data

    @model_validator(mode="after")
    def _array_dims(self):
        if self.kind == "systolic_array" and (self.rows is None or self.cols is None):
            raise ValueError("a systolic_array fabric needs rows and cols")
        if self.kind == "systolic_array" and self.double_buffering is None:
            raise ValueError("a systolic_array fabric must state double_buffering: true (the next stationary tile "
                             "loads while a fold streams, as in the TPU v1) or false (each fold loads its tile "
                             "first, as SCALE-Sim models it); the two differ by up to the load time per fold")
        return self


class Precision(_Strict):
    weights: int = Field(gt=0, le=32)
    activations: int = Field(gt=0, le=32)
    relative_rate: float = Field(gt=0, le=64, description="MACs per cycle relative to peak_macs_per_cycle")
    energy_per_mac_pj: float | None = Field(None, ge=0)
    source: str = ""


#: what a memory level may hold: activations are a layer's inputs and outputs together; inputs
#: and outputs alone name separate ifmap and ofmap SRAMs (SCALE-Sim's three SRAMs, say)
Operand = Literal["weights", "activations", "inputs", "outputs"]


class MemoryLevel(_Strict):
    name: str
    size_bytes: PositiveQuantity
    bandwidth_bytes_per_s: PositiveQuantity
    energy_pj_per_byte: float = Field(0.0, ge=0)
    holds: list[Operand] = Field(min_length=1)
    off_chip: bool = False
    weights_scope: Literal["model", "layer"] = Field(
        "model", description="for an on-chip level that holds weights. model: a parameter memory that keeps "
        "weights between inferences; it serves them only when the whole model's weights fit. layer: a filter "
        "SRAM refilled layer by layer; it serves each layer whose own weights fit, and that layer's weights "
        "are read into it from the level behind it once per inference")
    source: str = ""

    def keeps(self, operand: str) -> bool:
        """Whether this level may hold ``operand`` (weights, inputs or outputs)."""
        return operand in self.holds or (operand in ("inputs", "outputs") and "activations" in self.holds)


class Power(_Strict):
    idle_w: float = Field(ge=0)
    busy_w: float = Field(ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _order(self):
        if self.busy_w < self.idle_w:
            raise ValueError(f"busy_w ({self.busy_w}) is below idle_w ({self.idle_w})")
        return self


class SemiStructuredSparsity(_Strict):
    """Sparse units that skip the zeros of N:M-sparse weights (NVIDIA Ampere and later: 2:4)."""

    pattern: Literal["2:4"]
    compute_speedup: float = Field(gt=1, le=8, description="math throughput on the sparse weights relative to "
                                   "dense at the same precision")
    metadata_bits: int = Field(ge=0, le=8, description="index bits stored with each kept weight")
    weight_bits: list[int] = Field(min_length=1, description="native weight widths the sparse units run")
    source: str = ""


class ReferencePrecision(_Strict):
    weights: int = Field(gt=0, le=32)
    activations: int = Field(gt=0, le=32)


class HardwareProfile(_Strict, Target):
    """An analytic target: costs configs with :class:`~autocompress.hardware.cost.CostModel`."""

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
    sparsity: Literal["none"] | SemiStructuredSparsity = Field(
        "none", description="none: zero weights are computed like any other; or the sparse units a "
        "sparsity operator (e.g. sparse24) is costed at")
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
    assumed: dict[str, str] = Field(default_factory=dict, description="figures that are stated defaults, not "
                                    "the device's (field: why), e.g. those an imported file does not give")
    #: the CostModel of the table last costed through cost() / cost_many(): built once, reused
    _cost_model = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self):
        ref = (self.reference_precision.weights, self.reference_precision.activations)
        if ref not in {(p.weights, p.activations) for p in self.precisions}:
            raise ValueError(f"reference_precision {ref} is not one of the listed precisions")
        if not any("weights" in m.holds for m in self.memory):
            raise ValueError("no memory level holds weights")
        for operand in ("inputs", "outputs"):
            if not any(m.keeps(operand) for m in self.memory):
                raise ValueError(f"no memory level holds {operand} (name them, or activations for both)")
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
    def origin_kind(self) -> str:
        # autocompress calibrate writes the fit's provenance under sources: calibration
        return "calibrated" if "calibration" in self.sources else "modeled"

    def record(self) -> dict:
        """The whole profile: a report costs layers from it without the file it came from."""
        return self.model_dump(mode="json")

    def _model_for(self, table):
        from autocompress.hardware.cost import CostModel

        cached = self._cost_model
        # keyed by identity: a model_copy of this profile copies the cache but is another object
        if cached is None or cached[0] is not table or cached[1] != id(self):
            cached = (table, id(self), CostModel(table, self))
            self._cost_model = cached
        return cached[2]

    def cost(self, table, config, *, detail: bool = False):
        return self._model_for(table).cost(config, detail=detail)

    def cost_many(self, table, configs):
        return self._model_for(table).cost_many(configs)

    def describe(self) -> list[str]:
        from autocompress.hardware.cost import fabric_model

        def unit(v, u, base=1e3, prefixes=("k", "M", "G", "T")):
            for power in range(len(prefixes), 0, -1):
                if v >= base ** power:
                    return f"{v / base ** power:.4g} {prefixes[power - 1]}{u}"
            return f"{v:.4g} {u}"

        def assumed(*keys):
            return "  (assumed)" if any(k in self.assumed for k in keys) else ""
        lines = [f"{self.name}: {self.description}",
                 f"  fabric: {fabric_model(self).describe()}{assumed('fabric')}",
                 f"  clock: {unit(self.clock_hz, 'Hz')}{assumed('clock_hz')}; peak {self.peak_tops:.3g} TOPS",
                 "  precisions (w/a bits: rate" + (", pJ per MAC" if self.energy_model == "per_access" else "")
                 + "): " + "; ".join(f"{p.weights}/{p.activations}: {p.relative_rate:g}"
                                     + (f", {p.energy_per_mac_pj:g}" if p.energy_per_mac_pj is not None else "")
                                     for p in self.precisions) + assumed("precisions"),
                 f"  reference precision: {self.reference_precision.weights}/{self.reference_precision.activations}"]
        for i, m in enumerate(self.memory):
            where = "off chip" if m.off_chip else "on chip"
            scope = ("; weights kept between inferences" if m.weights_scope == "model" else "; refilled per layer") \
                if m.keeps("weights") and not m.off_chip else ""
            size = unit(m.size_bytes, "B", 1024, ("Ki", "Mi", "Gi", "Ti"))
            lines.append(f"  memory {m.name} ({where}): {size}, {unit(m.bandwidth_bytes_per_s, 'B/s')}, "
                         f"{m.energy_pj_per_byte:g} pJ/B, holds {', '.join(m.holds)}{scope}"
                         f"{assumed('memory', f'memory.{i}')}")
        lines.append(f"  power: idle {self.power.idle_w:g} W, busy {self.power.busy_w:g} W{assumed('power')}; "
                     f"energy model {self.energy_model}")
        lines += [f"  assumed {key}: {why}" for key, why in self.assumed.items()]
        return lines


def list_profiles() -> list[str]:
    return sorted(shipped_yaml("autocompress.hw_profiles"))


#: files of other tools read as profiles: ``--target <prefix>:<path>``
IMPORT_PREFIXES = ("scalesim", "zigzag")


def load_profile(target: str | Path) -> HardwareProfile:
    """A shipped profile by name, a YAML file by path, or another tool's file by prefix:
    ``scalesim:array.cfg`` (a SCALE-Sim config), ``zigzag:accelerator.yaml`` (a ZigZag hardware
    file). Errors are one line naming the file and field."""
    if isinstance(target, HardwareProfile):
        return target
    prefix, sep, rest = str(target).partition(":")
    if sep and prefix in IMPORT_PREFIXES:
        if not rest:
            raise UserError(f"target {target!r}: give a file after '{prefix}:', e.g. {prefix}:path/to/"
                            f"{'array.cfg' if prefix == 'scalesim' else 'accelerator.yaml'}")
        if prefix == "scalesim":
            from autocompress.hardware._import_scalesim import load_scalesim_cfg as read
        else:
            from autocompress.hardware._import_zigzag import load_zigzag_yaml as read
        try:  # the importers give the profile's fields; the schema lives here
            return HardwareProfile.model_validate(read(rest))
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"{Path(rest).name}: {'.'.join(map(str, err['loc']))}: "
                            f"{' '.join(str(err['msg']).split())}") from None
    return load_yaml_file(target, "autocompress.hw_profiles", "target", HardwareProfile)
