"""Our systolic-array cycle counts against SCALE-Sim's, on every conv layer of ResNet-18 at 224.

SCALE-Sim's weight-stationary dataflow loads each weight tile without overlapping the stream
(per fold: 2R + C + T - 2 cycles). The shipped TPU v1 profile double-buffers weights as the
chip does, so the comparison turns double buffering off to model the same machine.

SCALE-Sim's compute cycles are the rows of its OFMAP demand matrix: its memory simulation
walks that matrix one row per cycle (stall cycles come on top, from memory). The memory
simulation itself fails under NumPy 2 (``int(max(ndarray))`` in scalesim 3.0.0's
double_buffered_scratchpad_mem.py and read_buffer.py), so only the compute model is run.
"""
import pytest
import torch

from autocompress.graph import trace
from autocompress.hardware import CostModel, load_profile
from autocompress.models import build_model

scalesim = pytest.importorskip("scalesim", reason="scalesim (test dependency) not installed")


def scalesim_compute_cycles(cfg, topo) -> dict[str, int]:
    """SCALE-Sim's compute cycles of every layer of a loaded ``topologies`` object on a
    ``scale_config``; the sub-layers SCALE-Sim makes of a depthwise ("DP") layer, one per
    channel, are summed back under the layer's name."""
    from scalesim.layout_utils import layouts
    from scalesim.single_layer_sim import single_layer_sim

    topo.topo_calc_hyperparams()
    out: dict[str, int] = {}
    for i in range(topo.get_num_layers()):
        sim = single_layer_sim()
        sim.set_params(layer_id=i, config_obj=cfg, topology_obj=topo, layout_obj=layouts(), verbose=False)
        op = sim.op_mat_obj
        cs = sim.compute_system
        cs.set_params(config_obj=cfg, ifmap_op_mat=op.get_ifmap_matrix()[1],
                      filter_op_mat=op.get_filter_matrix()[1], ofmap_op_mat=op.get_ofmap_matrix()[1])
        cs.create_demand_matrices()
        name = topo.topo_arrays[i][0].split("Channel_")[0]
        out[name] = out.get(name, 0) + cs.ofmap_demand_matrix.shape[0]
    return out


def scalesim_ws_cycles(layers, rows=256, cols=256):
    """SCALE-Sim's weight-stationary compute cycles per layer (name, ifmap h, w, filter h, w,
    channels, filters, stride) on a rows x cols array."""
    from scalesim.scale_config import scale_config
    from scalesim.topology_utils import topologies

    cfg = scale_config()
    cfg.set_arr_dims(rows=rows, cols=cols)
    cfg.set_dataflow("ws")
    cfg.set_buffer_sizes_kb(6144, 6144, 2048)
    cfg.force_valid()
    out = {}
    for name, ih, iw, fh, fw, ch, nf, s in layers:
        topo = topologies()
        topo.load_layer_params_from_list(name, [name, ih, iw, fh, fw, ch, nf, s, s, 1, 1])
        out.update(scalesim_compute_cycles(cfg, topo))
    return out


def conv_topology(layers):
    """SCALE-Sim's rows for conv layers: it takes the padded input, (out - 1) * stride + kernel."""
    rows = []
    for layer in layers:
        (kh, kw), (sh, _) = layer.kernel, layer.stride
        oh, ow = layer.out_shape[1:]
        rows.append((layer.name, (oh - 1) * sh + kh, (ow - 1) * sh + kw, kh, kw, layer.in_channels,
                     layer.out_channels, sh))
    return rows


@pytest.mark.slow
def test_systolic_cycles_agree_with_scalesim_on_every_resnet18_conv():
    model, _ = build_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    table = trace(model, torch.zeros(1, 3, 224, 224))
    profile = load_profile("tpu-v1")
    profile = profile.model_copy(update={"fabric": profile.fabric.model_copy(update={"double_buffering": False})})
    cm = CostModel(table, profile)
    ours = dict(zip(table.names, cm.cost(cm.reference(), detail=True).layers["cycles"]))
    theirs = scalesim_ws_cycles(conv_topology([layer for layer in table.layers if layer.kind == "conv"]))
    assert len(theirs) == 20
    for name, cycles in theirs.items():  # the fold model is SCALE-Sim's: equal to the cycle
        assert abs(ours[name] - cycles) <= 1, (name, ours[name], cycles)
