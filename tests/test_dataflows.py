"""Hardware model v2: every systolic dataflow against SCALE-Sim, per-layer memory placement, and
targets read from SCALE-Sim and ZigZag files.

The three arrays below (weight-, output- and input-stationary, three sizes, none of them a
shipped profile) are written as SCALE-Sim .cfg files. SCALE-Sim reads each file with its own
parser and counts the compute cycles of a few VGG-11 and MobileNetV2 layers (its depthwise "DP"
layers included); the same file goes through ``--target scalesim:FILE`` and the cost model must
give the same cycles, layer by layer.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from autocompress import UserError
from autocompress.config import CompressionConfig
from autocompress.graph import trace
from autocompress.hardware import CostModel, HardwareProfile, load_profile, load_target
from autocompress.models import build_model

ARRAYS = {  # name: (rows, cols, dataflow, ifmap / filter / ofmap SRAM kB, interface bandwidth)
    "ws16x8": (16, 8, "ws", (64, 64, 32), "USER"),
    "os8x32": (8, 32, "os", (32, 16, 16), "CALC"),
    "is32x16": (32, 16, "is", (128, 32, 64), "USER"),
}
#: a few layers of each model at 32x32 (each SCALE-Sim run stays within seconds)
LAYERS = {
    "vgg11_bn": ["features.0", "features.4", "features.8", "features.15", "features.25", "classifier.0"],
    "mobilenet_v2": ["features.0.0", "features.2.conv.1.0", "features.4.conv.1.0", "features.7.conv.2",
                     "features.18.0", "classifier.1"],
}


def write_cfg(path, rows, cols, dataflow, srams, mode, bandwidth=10):
    """A complete SCALE-Sim 3.0 config, as its scale_config.read_conf_file expects."""
    path.write_text(f"""[general]
run_name = {path.stem}

[architecture_presets]
ArrayHeight : {rows}
ArrayWidth : {cols}
IfmapSramSzkB : {srams[0]}
FilterSramSzkB : {srams[1]}
OfmapSramSzkB : {srams[2]}
IfmapOffset : 0
FilterOffset : 10000000
OfmapOffset : 20000000
Bandwidth : {bandwidth}
Dataflow : {dataflow}
ReadRequestBuffer : 32
WriteRequestBuffer : 32

[layout]
IfmapCustomLayout : False
IfmapSRAMBankBandwidth : 10
IfmapSRAMBankNum : 1
IfmapSRAMBankPort : 2
FilterCustomLayout : False
FilterSRAMBankBandwidth : 10
FilterSRAMBankNum : 1
FilterSRAMBankPort : 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth : {mode}
UseRamulatorTrace : False
""")
    return path


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scalesim")
    return {name: write_cfg(root / f"{name}.cfg", *spec) for name, spec in ARRAYS.items()}


@pytest.fixture(scope="module")
def tables():
    out = {}
    for name in LAYERS:
        model, _ = build_model(name, num_classes=10, input_shape=(3, 32, 32))
        out[name] = trace(model, torch.zeros(1, 3, 32, 32))
    return out


def scalesim_topology_csv(path, layers):
    """The layers as a SCALE-Sim conv topology file; depthwise layers become "DP" rows, which
    SCALE-Sim splits into one single-channel layer per channel."""
    lines = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
    names = {}
    for i, layer in enumerate(layers):
        if layer.kind == "linear":
            h = w = kh = kw = s = 1
        else:
            (kh, kw), (s, _) = layer.kernel, layer.stride
            h, w = (layer.out_shape[1] - 1) * s + kh, (layer.out_shape[2] - 1) * s + kw
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels
        key = f"L{i}DP" if depthwise else f"L{i}"
        names[key] = layer.name
        filters = 1 if depthwise else layer.out_channels
        lines.append(f"{key}, {h}, {w}, {kh}, {kw}, {layer.in_channels}, {filters}, {s},")
    path.write_text("\n".join(lines) + "\n")
    return names


@pytest.mark.parametrize("array", list(ARRAYS))
def test_every_dataflow_agrees_with_scalesim_from_the_same_cfg(array, cfgs, tables, tmp_path):
    pytest.importorskip("scalesim", reason="scalesim (test dependency) not installed")
    from scalesim.scale_config import scale_config
    from scalesim.topology_utils import topologies

    from tests.test_scalesim import scalesim_compute_cycles

    cfg_path = cfgs[array]
    cfg = scale_config()
    cfg.read_conf_file(str(cfg_path))  # SCALE-Sim's own reading of the file
    profile = load_target(f"scalesim:{cfg_path}")  # ours
    rows, cols, df, *_ = ARRAYS[array]
    assert (profile.fabric.rows, profile.fabric.cols) == (cfg.array_rows, cfg.array_cols) == (rows, cols)
    assert profile.fabric.dataflow[0] + "s" == cfg.df == df
    worst = 0.0
    for model, names in LAYERS.items():
        table = tables[model]
        layers = [table[n] for n in names]
        keys = scalesim_topology_csv(tmp_path / f"{model}.csv", layers)
        topo = topologies()
        topo.load_arrays(topofile=str(tmp_path / f"{model}.csv"))
        theirs = {keys[k]: v for k, v in scalesim_compute_cycles(cfg, topo).items()}
        cm = CostModel(table, profile)
        cost = cm.cost(cm.reference(), detail=True)
        ours = dict(zip(table.names, cost.layers["cycles"]))
        assert set(theirs) == set(names)
        for name in names:
            error = abs(ours[name] / theirs[name] - 1)
            worst = max(worst, error)
            assert error <= 0.01, (array, model, name, ours[name], theirs[name])
    print(f"{array}: max |ours / SCALE-Sim - 1| = {100 * worst:.3f}%")


def test_dataflows_differ_as_their_fold_formulas_say(tables):
    """One 3x3 conv, 64 -> 128 channels at 16x16 (M = 256, K = 576, N = 128), on a 16x8 array."""
    table = tables["vgg11_bn"]
    base = load_target("tpu-v1")
    cycles = {}
    for df in ("weight_stationary", "output_stationary", "input_stationary"):
        for buffered in (False, True):
            fabric = base.fabric.model_copy(update={"rows": 16, "cols": 8, "dataflow": df, "tile_load_cycles": 16,
                                                    "double_buffering": buffered})
            p = base.model_copy(update={"fabric": fabric, "peak_macs_per_cycle": 128})
            cm = CostModel(table, p)
            cycles[df, buffered] = cm.cost(cm.reference(), detail=True).layers["cycles"][table.names.index("features.4")]
    m, k, n, R, C = 256, 576, 128, 16, 8
    assert cycles["weight_stationary", False] == (k // R) * (n // C) * (2 * R + C + m - 2)
    assert cycles["weight_stationary", True] == (k // R) * (n // C) * (max(m, R) + R + C - 2)
    assert cycles["output_stationary", False] == cycles["output_stationary", True] == (m // R) * (n // C) * (R + C + k - 2)
    assert cycles["input_stationary", False] == (k // R) * (m // C) * (2 * R + C + n - 2)
    assert cycles["input_stationary", True] == (k // R) * (m // C) * (max(n, R) + R + C - 2)


def test_a_systolic_profile_must_state_double_buffering(tmp_path):
    data = yaml.safe_load(load_target("tpu-v1").model_dump_json())
    del data["fabric"]["double_buffering"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"mine.yaml: field 'fabric'.*must state double_buffering"):
        load_profile(str(path))
    # the older names still read (files and run directories written before)
    old = load_profile(str(Path(__file__).parents[1] / "examples" / "my_accelerator.yaml"))
    assert old.fabric.double_buffering is True and old.fabric.tile_load_cycles == 32


# -- per-layer memory -------------------------------------------------------------------------------
def _sram_profile(filter_bytes: float, scope: str, ifmap_bytes: float = 2**20) -> HardwareProfile:
    """A 32x32 WS array with separate ifmap / filter / ofmap SRAMs in front of DRAM."""
    return HardwareProfile.model_validate({
        "name": "three-srams", "description": "test", "category": "other", "clock_hz": 1e9,
        "peak_macs_per_cycle": 1024,
        "fabric": {"kind": "systolic_array", "rows": 32, "cols": 32, "double_buffering": False},
        "precisions": [{"weights": 8, "activations": 8, "relative_rate": 1, "energy_per_mac_pj": 0.2}],
        "reference_precision": {"weights": 8, "activations": 8},
        "memory": [
            {"name": "ifmap SRAM", "size_bytes": ifmap_bytes, "bandwidth_bytes_per_s": 1e11, "energy_pj_per_byte": 1,
             "holds": ["inputs"]},
            {"name": "filter SRAM", "size_bytes": filter_bytes, "bandwidth_bytes_per_s": 1e11, "energy_pj_per_byte": 2,
             "holds": ["weights"], "weights_scope": scope},
            {"name": "ofmap SRAM", "size_bytes": 2**20, "bandwidth_bytes_per_s": 1e11, "energy_pj_per_byte": 1,
             "holds": ["outputs"]},
            {"name": "DRAM", "size_bytes": 2**32, "bandwidth_bytes_per_s": 1e10, "energy_pj_per_byte": 100,
             "holds": ["weights", "activations"], "off_chip": True},
        ],
        "power": {"idle_w": 0, "busy_w": 0}, "energy_model": "per_access"})


def test_vgg11_weights_live_on_chip_layer_by_layer_though_the_model_exceeds_the_filter_sram(tables):
    """VGG-11's 9.2 MB of int8 weights exceed an 8 MiB filter SRAM; each layer's alone fit."""
    table = tables["vgg11_bn"]
    config = CompressionConfig().with_default_bits(table, 8, 8)
    per_model = CostModel(table, _sram_profile(8 * 2**20, "model")).cost(config, detail=True).layers
    per_layer = CostModel(table, _sram_profile(8 * 2**20, "layer")).cost(config, detail=True).layers
    weight_bytes = per_layer["weight_bytes"]
    assert weight_bytes.sum() > 8 * 2**20 and weight_bytes.max() < 8 * 2**20
    assert set(per_model["weights_at"]) == {"DRAM"}  # the whole model does not fit: all from DRAM
    assert set(per_layer["weights_at"]) == {"filter SRAM"}  # every layer's own weights fit
    # the filter SRAM is filled from DRAM once per inference: the same DRAM bytes, plus the SRAM's
    extra_mj = (per_layer["energy_mj"] - per_model["energy_mj"]).sum()
    assert extra_mj == pytest.approx(per_layer["weight_bytes"].sum() * 2e-12 * 1e3, rel=1e-9)


def test_placement_differs_per_layer_when_some_layers_fit_and_others_do_not(tables):
    table = tables["vgg11_bn"]
    config = CompressionConfig().with_default_bits(table, 8, 8)
    sram = 2**20  # 1 MiB: the 512-channel convs (1.2 and 2.4 MB) do not fit, the rest do
    cost = CostModel(table, _sram_profile(sram, "layer", ifmap_bytes=8 * 2**10)).cost(config, detail=True)
    layers = cost.layers
    for i, name in enumerate(table.names):
        expected = "filter SRAM" if layers["weight_bytes"][i] <= sram else "DRAM"
        assert layers["weights_at"][i] == expected, name
        in_bytes = np.prod(table[name].in_shape)  # one byte per activation
        assert layers["inputs_at"][i] == ("ifmap SRAM" if in_bytes <= 8 * 2**10 else "DRAM"), name
    assert {"filter SRAM", "DRAM"} == set(layers["weights_at"])
    assert {"ifmap SRAM", "DRAM"} == set(layers["inputs_at"])
    assert layers["outputs_at"][0] == "ofmap SRAM"  # 64 x 32 x 32 bytes fit 1 MiB
    assert layers["placement"][table.names.index("features.18")] == "off/on/on"
    # a layer that does not fit reads its weights from DRAM: memory time at DRAM's 10 GB/s
    i = table.names.index("features.18")
    assert layers["memory_ms"][i] == pytest.approx(layers["weight_bytes"][i] / 1e10 * 1e3, rel=1e-9)


def test_a_level_holding_inputs_and_outputs_needs_both_to_fit():
    profile = load_target("tpu-v1")
    small = profile.model_copy(update={"memory": [profile.memory[0], profile.memory[1].model_copy(
        update={"size_bytes": 100_000})]})
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    table = trace(model, torch.zeros(1, 3, 32, 32))
    layers = CostModel(table, small).cost(CompressionConfig().with_default_bits(table, 8, 8), detail=True).layers
    for i, layer in enumerate(table.layers):
        both = np.prod(layer.in_shape) + np.prod(layer.out_shape)
        expected = "unified buffer (SRAM)" if both <= 100_000 else "weight DRAM (DDR3)"
        assert layers["inputs_at"][i] == layers["outputs_at"][i] == expected, layer.name
    assert len(set(layers["inputs_at"])) == 2


# -- importers ---------------------------------------------------------------------------------------
def test_a_scalesim_cfg_becomes_a_profile_with_its_assumptions_marked(cfgs):
    p = load_target(f"scalesim:{cfgs['is32x16']}")
    assert (p.fabric.rows, p.fabric.cols, p.fabric.dataflow) == (32, 16, "input_stationary")
    assert p.fabric.double_buffering is False and p.fabric.tile_load_cycles == 32
    sizes = {m.name: m.size_bytes for m in p.memory}
    assert sizes == {"ifmap SRAM": 128 * 1024, "filter SRAM": 32 * 1024, "ofmap SRAM": 64 * 1024, "DRAM": 4 * 2**30}
    assert [m.holds for m in p.memory] == [["inputs"], ["weights"], ["outputs"], ["weights", "activations"]]
    assert p.memory[3].bandwidth_bytes_per_s == 10 * 1e9  # Bandwidth 10 words of 1 byte per cycle at 1 GHz
    assert {"clock_hz", "precisions", "power", "memory"} <= set(p.assumed)
    text = "\n".join(p.describe())
    assert "clock: 1 GHz  (assumed)" in text and "input-stationary" in text
    calc = load_target(f"scalesim:{cfgs['os8x32']}")  # CALC: SCALE-Sim assumes DRAM keeps up
    assert calc.memory[3].bandwidth_bytes_per_s == (8 + 32) * 1e9 and "DRAM bandwidth" in calc.assumed


def test_profile_accepts_a_scalesim_target_and_prints_its_placement(cfgs):
    from autocompress.api import profile

    frame, totals = profile("vgg11_bn", f"scalesim:{cfgs['ws16x8']}", input_shape="3x32x32", num_classes=10)
    assert totals["target"] == "ws16x8" and "clock_hz" in totals["assumed"]
    assert {"weights_at", "inputs_at", "outputs_at", "placement"} <= set(frame.columns)
    # 64 KiB filter SRAM: features.0's 1.8 kB fit, features.25's 2.4 MB do not
    at = dict(zip(frame["layer"], frame["weights_at"]))
    assert at["features.0"] == "filter SRAM" and at["features.25"] == "DRAM"


@pytest.mark.parametrize("text, message", [
    ("not an ini file", r"bad.cfg: not a SCALE-Sim .cfg \(INI\) file"),
    ("[general]\nrun_name = x\n", r"bad.cfg: no \[architecture_presets\] section"),
    ("[architecture_presets]\nArrayHeight : 16\n", r"bad.cfg: \[architecture_presets\] has no ArrayWidth"),
    ("[architecture_presets]\nArrayHeight : sixteen\nArrayWidth : 8\n", r"ArrayHeight must be a whole number, not 'sixteen'"),
    ("[architecture_presets]\nArrayHeight : 16\nArrayWidth : 8\nIfmapSramSzkB : 1\nFilterSramSzkB : 1\n"
     "OfmapSramSzkB : 1\nDataflow : rs\n", r"Dataflow must be ws, os or is, not 'rs'"),
    ("[architecture_presets]\nArrayHeight : 16\nArrayWidth : 0\n", r"ArrayWidth must be positive"),
])
def test_a_bad_scalesim_cfg_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_target(f"scalesim:{path}")
    assert "\n" not in str(e.value)


def test_oversized_and_missing_import_files_are_refused(tmp_path):
    from autocompress.utils import MAX_INPUT_BYTES

    big = tmp_path / "big.cfg"
    big.write_bytes(b"#" * (MAX_INPUT_BYTES + 10))
    with pytest.raises(UserError, match="big.cfg: SCALE-Sim config file is larger than the 10 MiB limit"):
        load_target(f"scalesim:{big}")
    with pytest.raises(UserError, match="does not exist"):
        load_target(f"zigzag:{tmp_path / 'nothing.yaml'}")
    with pytest.raises(UserError, match="give a file after 'scalesim:'"):
        load_target("scalesim:")


ZIGZAG_V3 = """
name: tiny_like
memories:
  rf_w:
    size: 8
    r_cost: 0.01
    w_cost: 0.01
    area: 0
    latency: 1
    operands: [I2]
    ports:
      - {name: r_port_1, type: read, bandwidth_min: 8, bandwidth_max: 8, allocation: [I2, tl]}
      - {name: w_port_1, type: write, bandwidth_min: 8, bandwidth_max: 8, allocation: [I2, fh]}
    served_dimensions: [D1]
  sram_256KB:
    size: 2097152
    r_cost: 40
    w_cost: 60
    area: 0
    latency: 1
    operands: [I1, O]
    ports:
      - {name: r_port_1, type: read, bandwidth_min: 64, bandwidth_max: 512, allocation: [I1, tl]}
      - {name: w_port_1, type: write, bandwidth_min: 64, bandwidth_max: 512, allocation: [I1, fh]}
    served_dimensions: [D1, D2]
  dram:
    size: 10000000000
    r_cost: 700
    w_cost: 750
    area: 0
    latency: 1
    operands: [I1, I2, O]
    ports:
      - {name: rw_port_1, type: read_write, bandwidth_min: 64, bandwidth_max: 64, allocation: [I1, fh]}
    served_dimensions: [D1, D2]
operational_array:
  unit_energy: 0.04 # pJ
  unit_area: 1
  dimensions: [D1, D2]
  sizes: [16, 8]
"""


def test_a_zigzag_hardware_file_becomes_a_profile(tmp_path, tables):
    path = tmp_path / "tiny_like.yaml"
    path.write_text(ZIGZAG_V3)
    p = load_target(f"zigzag:{path}")
    assert p.name == "tiny_like" and p.peak_macs_per_cycle == 128 and p.fabric.kind == "roofline"
    assert p.precisions[0].energy_per_mac_pj == 0.04
    sram = p.memory[1]
    assert sram.size_bytes == 2097152 / 8 and sram.holds == ["inputs", "outputs"] and not sram.off_chip
    assert sram.bandwidth_bytes_per_s == 512 / 8 * 1e9  # bits per cycle at the assumed 1 GHz
    assert sram.energy_pj_per_byte == pytest.approx((40 + 60) / 2 / (512 / 8))
    assert p.memory[2].off_chip and p.memory[2].energy_pj_per_byte == pytest.approx(725 / 8)
    assert "clock_hz" in p.assumed
    # the 1-byte weight register fits no layer: weights come from DRAM; activations from the SRAM
    table = tables["mobilenet_v2"]
    layers = CostModel(table, p).cost(CompressionConfig().with_default_bits(table, 8, 8), detail=True).layers
    assert set(layers["weights_at"]) == {"dram"} and layers["inputs_at"][-1] == "sram_256KB"
    # the older format (r_bw instead of ports) reads the same
    old = yaml.safe_load(ZIGZAG_V3)
    for m in old["memories"].values():
        m["r_bw"] = max(port["bandwidth_max"] for port in m.pop("ports"))
    path.write_text(yaml.safe_dump(old, sort_keys=False))  # ZigZag lists memories lowest first
    assert load_target(f"zigzag:{path}").memory == p.memory


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("operational_array"), "operational_array needs 'sizes'"),
    (lambda d: d["memories"]["dram"].update(operands=["I3"]), r"memories.dram.operands must list I1"),
    (lambda d: d["memories"]["dram"].pop("r_cost"), "has no r_cost / w_cost"),
    (lambda d: d["memories"]["sram_256KB"].update(size=-1), "memories.sram_256KB.size must be a positive number"),
    (lambda d: d.update(memories=[]), "not a ZigZag hardware file"),
])
def test_a_bad_zigzag_file_is_one_line(tmp_path, change, message):
    data = yaml.safe_load(ZIGZAG_V3)
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(UserError, match=message) as e:
        load_target(f"zigzag:{path}")
    assert "\n" not in str(e.value)


# -- the shipped figures corrected in issue #15, and the Target interface -------------------------------
def test_corrected_figures_follow_their_cited_arithmetic():
    assert load_target("tpu-v1").memory[1].bandwidth_bytes_per_s == 256 * 700e6  # 256 bytes/cycle x 700 MHz
    assert load_target("eyeriss").memory[0].bandwidth_bytes_per_s == 64 / 8 * 60e6  # 64-bit bus at 60 MHz
    power = load_target("bitfusion").power.source
    assert "16 nm" in power and "Assumed" in power  # 895 mW is the 16 nm scaling, not the 45 nm design


def test_a_profile_is_a_target_that_costs_configs(tables):
    from autocompress.hardware import Target

    table = tables["vgg11_bn"]
    p = load_target("edge-tpu")
    assert isinstance(p, Target) and p.origin == "modeled:edge-tpu" and p.origin_kind == "modeled"
    configs = [CompressionConfig().with_default_bits(table, 8, 8), CompressionConfig(
        layers={"features.25": {"prune": 0.5}}).with_default_bits(table, 8, 8)]
    latency, energy = p.cost_many(table, configs)
    direct = CostModel(table, p).cost_many(configs)
    assert (latency == direct[0]).all() and (energy == direct[1]).all() and latency[1] < latency[0]
    assert p.cost(table, configs[0]).latency_s == pytest.approx(latency[0], rel=1e-12)
    calibrated = p.model_copy(update={"sources": {"calibration": "fitted"}})
    assert calibrated.origin_kind == "calibrated" and calibrated.origin == "modeled:edge-tpu"
    assert any("weights kept between inferences" in line for line in p.describe())
