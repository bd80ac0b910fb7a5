"""``--target scalesim:path/to/array.cfg``: a SCALE-Sim (v2 / 3.0) configuration as a HardwareProfile.

Read from the file ([architecture_presets]): ArrayHeight, ArrayWidth, IfmapSramSzkB,
FilterSramSzkB, OfmapSramSzkB, Dataflow (ws / os / is) and, in InterfaceBandwidth USER mode,
Bandwidth (words per cycle; SCALE-Sim's word is one byte). Everything SCALE-Sim does not model
(it counts cycles, not seconds or joules) comes from the stated defaults below and is listed
under ``assumed`` in the profile, which ``autocompress profile`` prints.

The array is costed as SCALE-Sim's compute model counts it: each fold loads its stationary tile
in ArrayHeight cycles without double buffering. Its three SRAMs are separate levels (ifmap: a
layer's inputs, filter: its weights, refilled per layer, ofmap: its outputs) in front of DRAM.
"""
from __future__ import annotations

import configparser
from pathlib import Path

from autocompress._errors import UserError
from autocompress.utils import read_input_text

#: what the profile assumes where a .cfg says nothing (SCALE-Sim has no clock, energies or DRAM size)
CLOCK_HZ = 1e9
MAC_PJ = 0.23  # Horowitz ISSCC 2014, 45 nm: 8-bit multiply 0.2 pJ + 8-bit add 0.03 pJ
SRAM_PJ_PER_BYTE = 5.0  # assumed; Horowitz ISSCC 2014: 10 pJ per 64-bit read of an 8 KB SRAM, more for larger ones
DRAM_PJ_PER_BYTE = 160.0  # Horowitz ISSCC 2014: DRAM 1.3-2.6 nJ per 64-bit access (20-40 pJ/bit), low end
DRAM_BYTES = 4 * 2**30
DATAFLOWS = {"ws": "weight_stationary", "os": "output_stationary", "is": "input_stationary"}


def load_scalesim_cfg(path: str | Path) -> dict:
    """The HardwareProfile fields a SCALE-Sim config gives (and the stated defaults it does not)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SCALE-Sim config {str(path)!r} does not exist")
    text = read_input_text(path, "SCALE-Sim config")
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=path.name)
    except configparser.Error as e:
        raise UserError(f"{path.name}: not a SCALE-Sim .cfg (INI) file: {' '.join(str(e).split())[:200]}") from None
    arch = "architecture_presets"
    if not parser.has_section(arch):
        raise UserError(f"{path.name}: no [{arch}] section; a SCALE-Sim config names the array there "
                        f"(ArrayHeight, ArrayWidth, IfmapSramSzkB, FilterSramSzkB, OfmapSramSzkB, Dataflow)")

    def number(key: str, *, whole: bool = True) -> float:
        if not parser.has_option(arch, key):
            raise UserError(f"{path.name}: [{arch}] has no {key}")
        raw = parser.get(arch, key).strip()
        try:
            value = int(raw) if whole else float(raw.split(",")[0])
        except ValueError:
            raise UserError(f"{path.name}: {key} must be a {'whole ' if whole else ''}number, not {raw!r}") from None
        if value <= 0:
            raise UserError(f"{path.name}: {key} must be positive, not {raw!r}")
        return value

    rows, cols = number("ArrayHeight"), number("ArrayWidth")
    ifmap_kb, filter_kb, ofmap_kb = number("IfmapSramSzkB"), number("FilterSramSzkB"), number("OfmapSramSzkB")
    raw_df = parser.get(arch, "Dataflow", fallback="").strip().lower()
    if raw_df not in DATAFLOWS:
        raise UserError(f"{path.name}: Dataflow must be ws, os or is, not {raw_df or '(missing)'!r}")
    mode = parser.get("run_presets", "InterfaceBandwidth", fallback="").strip().upper()
    assumed = {
        "clock_hz": f"{CLOCK_HZ / 1e9:g} GHz: SCALE-Sim counts cycles; give the device's clock in a profile YAML",
        "precisions": f"8-bit weights and activations (SCALE-Sim's one-byte word), {MAC_PJ} pJ per MAC "
                      "(Horowitz ISSCC 2014, 45 nm: 8-bit multiply 0.2 pJ + add 0.03 pJ)",
        "power": "no static power (not in a SCALE-Sim config)",
    }
    edge_words = max(rows, cols)
    if mode == "USER" and parser.has_option(arch, "Bandwidth"):
        dram_words = number("Bandwidth", whole=False)
        dram_source = f"{path.name}: Bandwidth {dram_words:g} words (bytes) per cycle"
    else:  # CALC: SCALE-Sim reports the bandwidth the array needs, as if DRAM always kept up
        dram_words = rows + cols
        dram_source = "assumed: InterfaceBandwidth CALC, so enough to feed the array's edges every cycle"
        assumed["DRAM bandwidth"] = f"{dram_words} bytes per cycle: in InterfaceBandwidth CALC mode SCALE-Sim assumes it keeps up"
    assumed["memory"] = (f"SRAM {SRAM_PJ_PER_BYTE:g} pJ/byte (Horowitz ISSCC 2014 gives 1.25 for an 8 KB SRAM, more "
                         f"for larger ones) and {edge_words} bytes per cycle (one word per edge PE); DRAM "
                         f"{DRAM_PJ_PER_BYTE:g} pJ/byte (Horowitz: 20-40 pJ/bit, low end), {DRAM_BYTES // 2**30} GiB")
    sram = lambda name, kb, holds, **kw: {  # noqa: E731
        "name": name, "size_bytes": kb * 1024, "bandwidth_bytes_per_s": edge_words * CLOCK_HZ,
        "energy_pj_per_byte": SRAM_PJ_PER_BYTE, "holds": holds,
        "source": f"{path.name}: {kb} kB (SCALE-Sim's kB is 1024 bytes); bandwidth and energy assumed", **kw}
    run_name = parser.get("general", "run_name", fallback="").strip().strip('"') or path.stem
    df = DATAFLOWS[raw_df]
    data = {
        "name": run_name,
        "description": f"SCALE-Sim array from {path.name}: {rows}x{cols} systolic, {df.replace('_', '-')}, "
                       f"SRAM {ifmap_kb}/{filter_kb}/{ofmap_kb} kB (ifmap/filter/ofmap)",
        "category": "other",
        "clock_hz": CLOCK_HZ,
        "peak_macs_per_cycle": rows * cols,
        "fabric": {"kind": "systolic_array", "rows": rows, "cols": cols, "dataflow": df,
                   "tile_load_cycles": rows, "double_buffering": False,
                   "source": f"{path.name}; per-fold cycles as SCALE-Sim 3.0's compute model counts them "
                             "(the tile loads in ArrayHeight cycles, not double-buffered)"},
        "precisions": [{"weights": 8, "activations": 8, "relative_rate": 1.0, "energy_per_mac_pj": MAC_PJ,
                        "source": "assumed: SCALE-Sim's one-byte word; energy Horowitz ISSCC 2014"}],
        "reference_precision": {"weights": 8, "activations": 8},
        "memory": [
            sram("ifmap SRAM", ifmap_kb, ["inputs"]),
            sram("filter SRAM", filter_kb, ["weights"], weights_scope="layer"),
            sram("ofmap SRAM", ofmap_kb, ["outputs"]),
            {"name": "DRAM", "size_bytes": DRAM_BYTES, "bandwidth_bytes_per_s": dram_words * CLOCK_HZ,
             "energy_pj_per_byte": DRAM_PJ_PER_BYTE, "holds": ["weights", "activations"], "off_chip": True,
             "source": f"{dram_source}; size and energy assumed"},
        ],
        "power": {"idle_w": 0.0, "busy_w": 0.0, "source": "assumed: SCALE-Sim models no power"},
        "energy_model": "per_access",
        "packed_weight_storage": False,
        "notes": [f"Imported from the SCALE-Sim config {path.name}; figures under 'assumed' are stated defaults."],
        "sources": {"config": str(path), "scalesim": "Samajdar et al., SCALE-Sim, ISPASS 2020; SCALE-Sim 3.0"},
        "assumed": assumed,
    }
    if parser.get("sparsity", "SparsitySupport", fallback="false").strip().lower() == "true":
        data["notes"].append("The config enables SCALE-Sim's sparsity support; it is not modeled here (dense).")
    return data  # validated by the caller, profile.load_target
