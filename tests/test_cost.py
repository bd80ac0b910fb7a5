import numpy as np
import pytest
import torch

from autocompress import UserError
from autocompress.config import CompressionConfig
from autocompress.graph import trace
from autocompress.hardware import CostModel, load_profile
from autocompress.models import build_model


@pytest.fixture(scope="module")
def r18_224():
    model, _ = build_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    return trace(model, torch.zeros(1, 3, 224, 224))


def test_tpu_v1_peak_is_92_tops_and_its_ridge_about_1350_macs_per_byte():
    p = load_profile("tpu-v1")
    assert p.peak_tops == pytest.approx(92, rel=0.01)
    weight_bw = next(m.bandwidth_bytes_per_s for m in p.memory if "weights" in m.holds)
    assert p.peak_macs_per_s / weight_bw == pytest.approx(1350, rel=0.01)


def test_resnet18_on_tpu_v1_is_weight_memory_bound(r18_224):
    cm = CostModel(r18_224, load_profile("tpu-v1"))
    cost = cm.cost(cm.reference(), detail=True)
    assert r18_224.total_macs / (r18_224.total_params) == pytest.approx(155, rel=0.02)
    weight_time = sum(layer.params for layer in r18_224.layers) / 34e9
    # at least the time to stream 11.7 MB at 34 GB/s (0.34 ms), plus compute-bound early layers
    assert weight_time == pytest.approx(0.34e-3, rel=0.02)
    assert weight_time <= cost.latency_s < 1.5 * weight_time
    bound = dict(zip(r18_224.names, cost.layers["bound"]))
    assert all(bound[n] == "memory" for n in r18_224.names if n.startswith("layer4"))


def test_fewer_bits_save_weight_traffic_only_when_packed_and_never_compute(r18_224):
    tpu = load_profile("tpu-v1")
    cm = CostModel(r18_224, tpu)
    c8 = cm.cost(CompressionConfig().with_default_bits(r18_224, 8, 8), detail=True)
    c4 = cm.cost(CompressionConfig().with_default_bits(r18_224, 4, 8), detail=True)
    assert (c4.layers["cycles"] == c8.layers["cycles"]).all()  # the array multiplies int8 anyway
    assert c4.layers["weight_bytes"].sum() < 0.51 * c8.layers["weight_bytes"].sum() + 4 * 1000
    assert c4.energy_j < c8.energy_j
    unpacked = CostModel(r18_224, tpu.model_copy(update={"packed_weight_storage": False}))
    assert unpacked.cost(CompressionConfig().with_default_bits(r18_224, 4, 8)).energy_j == pytest.approx(c8.energy_j)


def test_16_bit_operands_run_at_half_and_quarter_speed(r18_224):
    cm = CostModel(r18_224, load_profile("tpu-v1"))
    cyc = {wa: cm.cost(CompressionConfig().with_default_bits(r18_224, *wa), detail=True).layers["cycles"].sum()
           for wa in [(8, 8), (16, 8), (16, 16)]}
    assert cyc[(16, 8)] == pytest.approx(2 * cyc[(8, 8)])
    assert cyc[(16, 16)] == pytest.approx(4 * cyc[(8, 8)])


def test_pruning_cuts_modeled_energy(r18_224):
    cm = CostModel(r18_224, load_profile("tpu-v1"))
    ref = cm.cost(cm.reference())
    pruned = CompressionConfig(layers={"layer4.0.conv1": {"prune": 0.5}, "layer4.1.conv1": {"prune": 0.5}})
    cost = cm.cost(pruned.with_default_bits(r18_224, 8, 8))
    assert cost.energy_j < ref.energy_j and cost.latency_s < ref.latency_s


def test_systolic_cycles_follow_the_fold_formula(r18_224):
    cm = CostModel(r18_224, load_profile("tpu-v1"))
    cost = cm.cost(cm.reference(), detail=True)
    layer = r18_224["layer3.0.conv2"]  # K = 256*9 = 2304 -> 9 row folds; N = 256 -> 1 col fold
    m = layer.spatial  # 14 x 14 output positions
    expected = 9 * 1 * (max(m, 256) + 256 + 256 - 2)
    assert cost.layers["cycles"][r18_224.names.index("layer3.0.conv2")] == expected


def test_a_malformed_profile_names_the_file_and_field(tmp_path):
    text = (load_profile("tpu-v1").model_dump_json())
    import json
    data = json.loads(text)
    data["memory"][0]["bandwidth_bytes_per_s"] = -5
    bad = tmp_path / "mine.yaml"
    import yaml
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"mine.yaml: field 'memory.0.bandwidth_bytes_per_s'"):
        load_profile(str(bad))
    with pytest.raises(UserError, match="unknown target 'tpu-v2'. Did you mean 'tpu-v1'"):
        load_profile("tpu-v2")


def test_every_shipped_profile_loads_and_costs_resnet18(r18_224):
    from autocompress.hardware import list_profiles

    names = list_profiles()
    assert {"tpu-v1", "eyeriss", "bitfusion", "nvidia-t4", "cpu-haswell", "edge-tpu"} <= set(names)
    for name in names:
        cm = CostModel(r18_224, load_profile(name))
        cost = cm.cost(cm.reference())
        assert cost.latency_s > 0 and cost.energy_j > 0 and cost.origin == f"modeled:{name}"


def test_bitfusion_runs_4_bit_operands_at_4x_the_macs_per_cycle_of_8_bit(r18_224):
    p = load_profile("bitfusion")
    assert p.native(4, 4).relative_rate == 4 * p.native(8, 8).relative_rate
    assert p.native(3, 5).relative_rate == 2  # floor(8/3) x floor(8/5): runs as 4x8
    assert p.native(2, 2).relative_rate == 16
    cm = CostModel(r18_224, p)
    c8 = cm.cost(CompressionConfig().with_default_bits(r18_224, 8, 8), detail=True)
    c4 = cm.cost(CompressionConfig().with_default_bits(r18_224, 4, 4), detail=True)
    assert c4.layers["cycles"].sum() == pytest.approx(c8.layers["cycles"].sum() / 4)
    assert c4.energy_j < c8.energy_j / 2


def test_edge_tpu_streams_weights_that_do_not_fit_on_chip():
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    table = trace(model, torch.zeros(1, 3, 32, 32))
    cm = CostModel(table, load_profile("edge-tpu"))
    full = cm.cost(cm.reference())  # 11.2 MB of int8 weights > 8 MiB: streamed over PCIe
    assert full.latency_s > 11e6 / 500e6
    small = CompressionConfig(layers={n: {"prune": 0.5} for n in table.names if table[n].out_group
                                      and n.endswith("conv1") and n.startswith("layer")})
    fits = cm.cost(small.with_default_bits(table, 8, 8))
    assert fits.latency_s < full.latency_s / 5  # now they stay in the parameter SRAM


def test_cost_many_equals_one_at_a_time(r18_224):
    import random
    from autocompress.space import load_space

    space = load_space("resnet").bind(r18_224)
    rng = random.Random(3)
    configs = [space.config({p.name: rng.choice(p.choices) for p in space.params}).with_default_bits(r18_224, 8, 8)
               for _ in range(20)]
    for name in ("tpu-v1", "edge-tpu", "bitfusion", "nvidia-t4"):
        cm = CostModel(r18_224, load_profile(name))
        latency, energy = cm.cost_many(configs)
        for i, c in enumerate(configs):
            one = cm.cost(c)
            assert latency[i] == pytest.approx(one.latency_s, rel=1e-12)
            assert energy[i] == pytest.approx(one.energy_j, rel=1e-12)


def test_memory_that_does_not_overlap_compute_adds_to_it(r18_224):
    """memory_overlap: false (a runtime that dequantises weights before each kernel): every layer
    takes compute + memory + overhead, where a roofline takes the larger of the two."""
    haswell = load_profile("cpu-haswell")
    serial = haswell.model_copy(update={"memory_overlap": False})
    config = CompressionConfig().with_default_bits(r18_224, 8, 8)
    roof = CostModel(r18_224, haswell).cost(config, detail=True).layers
    add = CostModel(r18_224, serial).cost(config, detail=True).layers
    overhead_ms = haswell.layer_overhead_cycles / haswell.clock_hz * 1e3
    assert np.allclose(roof["latency_ms"], np.maximum(roof["compute_ms"], roof["memory_ms"]) + overhead_ms)
    assert np.allclose(add["latency_ms"], add["compute_ms"] + add["memory_ms"] + overhead_ms)
    assert np.allclose(add["compute_ms"], roof["compute_ms"]) and (add["memory_ms"] >= roof["memory_ms"]).all()
    assert (add["latency_ms"] > roof["latency_ms"]).all()
