"""``--target zigzag:path/to/accelerator.yaml``: a ZigZag hardware description as a HardwareProfile.

ZigZag (KU Leuven, https://github.com/KULeuven-MICAS/zigzag) describes an accelerator in one
plain YAML file: ``memories`` from the lowest level to the highest, each with its size in bits,
the operands it serves (I1: inputs, I2: weights, O: outputs), its read/write energy per access
(pJ) and its bandwidth in bits per cycle (``r_bw`` in files before ZigZag 3, the ports'
``bandwidth_max`` since), and an ``operational_array`` with its dimensions' sizes and the energy
of one MAC (``unit_energy``, pJ). All of that maps onto a profile; what the file lacks (a clock,
operand precision, static power) comes from the stated defaults below, listed under ``assumed``.

The MAC array is costed as a roofline at prod(sizes) MACs per cycle: ZigZag searches a spatial
mapping per layer, which is not modeled here (an upper bound, as for Eyeriss). Access energy per
byte is the mean of read and write energy per access over the access width (r_bw or
bandwidth_max). The highest memory (and any whose name or mem_type says DRAM) is off chip.
"""
from __future__ import annotations

import math
from pathlib import Path

from autocompress._errors import UserError
from autocompress.utils import read_input_text

CLOCK_HZ = 1e9
OPERANDS = {"I1": "inputs", "I2": "weights", "O": "outputs"}


def load_zigzag_yaml(path: str | Path) -> dict:
    """The HardwareProfile fields a ZigZag hardware file gives (and the stated defaults it does not)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ZigZag hardware file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(read_input_text(path, "ZigZag hardware"))
    except yaml.YAMLError as e:
        raise UserError(f"{path.name}: not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("memories"), dict) or not data["memories"]:
        raise UserError(f"{path.name}: not a ZigZag hardware file: expected a mapping with 'memories' "
                        f"(each with size, operands, r_cost, w_cost) and 'operational_array'")
    array = data.get("operational_array")
    if not isinstance(array, dict) or not isinstance(array.get("sizes"), list) or not array["sizes"]:
        raise UserError(f"{path.name}: operational_array needs 'sizes' (the MAC array's dimensions)")

    def positive(where: str, value, *, whole: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok or (whole and value != int(value)):
            raise UserError(f"{path.name}: {where} must be a positive {'whole ' if whole else ''}number, not {value!r}")
        return value

    sizes = [positive(f"operational_array.sizes[{i}]", s, whole=True) for i, s in enumerate(array["sizes"])]
    macs = math.prod(int(s) for s in sizes)
    unit_energy = array.get("unit_energy")
    if unit_energy is None:
        raise UserError(f"{path.name}: operational_array has no unit_energy (pJ per MAC)")
    unit_energy = positive("operational_array.unit_energy", unit_energy)
    names = list(data["memories"])
    memory = []
    for index, name in enumerate(names):
        m = data["memories"][name]
        where = f"memories.{name}"
        if not isinstance(m, dict):
            raise UserError(f"{path.name}: {where} must be a mapping")
        size_bits = positive(f"{where}.size", m.get("size"))
        operands = m.get("operands")
        if not isinstance(operands, list) or not operands or any(o not in OPERANDS for o in operands):
            raise UserError(f"{path.name}: {where}.operands must list I1 (inputs), I2 (weights) and/or O "
                            f"(outputs), not {operands!r}")
        if "r_bw" in m:  # before ZigZag 3
            width = positive(f"{where}.r_bw", m["r_bw"])
        else:
            ports = m.get("ports") or []
            widths = [p.get("bandwidth_max") for p in ports if isinstance(p, dict) and "read" in str(p.get("type", ""))]
            if not widths:
                raise UserError(f"{path.name}: {where} has neither r_bw nor a read port with bandwidth_max")
            width = max(positive(f"{where}.ports.bandwidth_max", w) for w in widths)
        costs = [m.get("r_cost"), m.get("w_cost")]
        if any(c is None for c in costs):
            raise UserError(f"{path.name}: {where} has no r_cost / w_cost (ZigZag's auto_cost_extraction "
                            f"through CACTI is not run here; give the energies)")
        for c in costs:
            if not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or c < 0:
                raise UserError(f"{path.name}: {where} r_cost / w_cost must be numbers >= 0, not {c!r}")
        off_chip = index == len(names) - 1 or "dram" in f"{name} {m.get('mem_type', '')}".lower()
        memory.append({
            "name": str(name), "size_bytes": size_bits / 8, "bandwidth_bytes_per_s": width / 8 * CLOCK_HZ,
            "energy_pj_per_byte": (costs[0] + costs[1]) / 2 / (width / 8),
            "holds": sorted({OPERANDS[o] for o in operands}), "off_chip": off_chip,
            # ZigZag evaluates one layer at a time: on-chip weight memories are refilled per layer
            **({"weights_scope": "layer"} if "I2" in operands else {}),
            "source": f"{path.name}: size {size_bits:g} bits, {width:g} bits/cycle, r_cost {costs[0]:g} / w_cost "
                      f"{costs[1]:g} pJ per access; bandwidth in bytes/s at the assumed clock"})
    model_name = str(data.get("name") or path.stem)
    profile = {
        "name": model_name,
        "description": f"ZigZag accelerator {model_name} from {path.name}: {'x'.join(str(int(s)) for s in sizes)} "
                       f"MAC array, {len(memory)} memory levels",
        "category": "other",
        "clock_hz": CLOCK_HZ,
        "peak_macs_per_cycle": macs,
        "fabric": {"kind": "roofline", "source": f"{path.name}: operational_array sizes {sizes}; ZigZag's spatial "
                                                 "mapping is not modeled (an upper bound)"},
        "precisions": [{"weights": 8, "activations": 8, "relative_rate": 1.0, "energy_per_mac_pj": unit_energy,
                        "source": f"{path.name}: unit_energy {unit_energy:g} pJ; 8-bit operands assumed"}],
        "reference_precision": {"weights": 8, "activations": 8},
        "memory": memory,
        "power": {"idle_w": 0.0, "busy_w": 0.0, "source": "assumed: a ZigZag file states no static power"},
        "energy_model": "per_access",
        "notes": [f"Imported from the ZigZag hardware file {path.name}; figures under 'assumed' are stated defaults."],
        "sources": {"file": str(path), "zigzag": "Mei et al., ZigZag, IEEE Trans. Computers 2021"},
        "assumed": {
            "clock_hz": f"{CLOCK_HZ / 1e9:g} GHz: a ZigZag file counts cycles; bandwidths follow from it",
            "precisions": "8-bit weights and activations (ZigZag sets operand precision in the workload, not the hardware)",
            "power": "no static power",
        },
    }
    return profile  # validated by the caller, profile.load_target
