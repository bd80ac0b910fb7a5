"""2:4 semi-structured sparsity, added through the operator interface alone
(autocompress/operators/sparse24.py): real masks that fine-tuning keeps and the exports carry,
costed at the rate a profile states (nvidia-a100) and at no gain where a profile states none."""
import numpy as np
import pytest
import torch

from autocompress._errors import UserError
from autocompress.compress import Recovery, apply
from autocompress.config import CompressionConfig, LayerConfig, resolve
from autocompress.graph import trace
from autocompress.hardware import CostModel, load_profile
from autocompress.operators.sparse24 import mask_2_4
from autocompress.space import SearchSpace
from tests.tiny_models import tiny_resnet

SHAPE = (3, 8, 8)  # digits as the tiny models take them


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    return model, trace(model, torch.zeros(1, *SHAPE))


def _is_2_4(weight: torch.Tensor) -> bool:
    """Every four consecutive input channels (at each kernel position) of every output hold at
    least two zeros."""
    lay = weight.detach().permute(0, 2, 3, 1) if weight.dim() == 4 else weight.detach()
    n = lay.shape[-1] // 4 * 4
    quads = lay[..., :n].reshape(*lay.shape[:-1], n // 4, 4)
    return bool(((quads == 0).sum(-1) >= 2).all())


def test_the_mask_keeps_the_two_largest_of_every_four_inputs():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.0, 3.0, -2.0, 1.0, 0.5, 7.0]])  # 9 inputs: the 9th has no group
    assert mask_2_4(w).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0, 1]]
    conv = torch.randn(6, 8, 3, 3)  # groups run along the input channels at each kernel position
    m = mask_2_4(conv)
    assert m.shape == conv.shape and m.sum().item() == conv.numel() / 2
    assert _is_2_4(conv * m) and not _is_2_4(conv)
    kept = (conv.abs() * m).permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4)
    dropped = (conv.abs() * (1 - m)).permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4)
    assert (kept.topk(2, -1).values.min(-1).values >= dropped.max(-1).values).all()


def test_a_space_turns_the_knob_and_the_config_names_it(tiny):
    model, table = tiny
    space = SearchSpace.model_validate({"name": "s", "exclude": ["first"], "knobs": [
        {"knob": "sparse24", "per": "layer", "layers": ["layer4.*"], "choices": [0, 1]}]}).bind(table)
    assert {p.knob for p in space.params} == {"sparse24"} and all(p.layers[0].startswith("layer4.") for p in space.params)
    config = space.config({p.name: 1 for p in space.params})
    assert {n: lc.value("sparse24") for n, lc in config.layers.items()} == {p.layers[0]: True for p in space.params}
    assert not space.config({p.name: 0 for p in space.params}).layers  # dense: nothing written
    again = CompressionConfig.from_dict(config.to_dict())  # serialised and read back
    assert again == config
    from autocompress.search._sampler import ladder
    assert ladder(space.params[0]) == [0, 1]  # dense compresses least


def test_bad_values_and_layers_are_one_line_errors(tiny):
    model, table = tiny
    with pytest.raises(ValueError, match="sparse24 takes choices 0"):
        SearchSpace.model_validate({"name": "s", "knobs": [{"knob": "sparse24", "choices": [0.5]}]})
    with pytest.raises(UserError, match="sparse24 is true or false"):
        CompressionConfig.from_dict({"layers": {"conv1": {"sparse24": 2}}})
    first = table.names[0]  # 3 input channels: no group of four
    with pytest.raises(UserError, match=f"layer '{first}' cannot take sparse24"):
        resolve(table, CompressionConfig(layers={first: LayerConfig(sparse24=True)}))


def test_fine_tuning_keeps_the_mask_and_torchscript_keeps_the_zeros(tiny, digits, tmp_path):
    from autocompress.export import save_model

    model, _ = tiny
    table = trace(model, torch.zeros(1, *digits.input_shape))
    names = [n for n in table.names if n.startswith("layer4.")]
    config = CompressionConfig(layers={n: LayerConfig(sparse24=True, wbits=4) for n in names})
    finished = apply(model, table, config, data=digits, recovery=Recovery(finetune_steps=5, batch_size=32))
    for n in names:
        w = finished.get_submodule(n).weight
        assert _is_2_4(w) and (w == 0).float().mean().item() >= 0.5
        assert not torch.equal(w != 0, model.get_submodule(n).weight != 0)  # the dense layer had no such zeros
    # the float-weight path (no quantisation-aware training) bakes the same masks in
    dense_bits = CompressionConfig(layers={n: LayerConfig(sparse24=True) for n in names})
    assert all(_is_2_4(apply(model, table, dense_bits, data=digits).get_submodule(n).weight) for n in names)
    save_model(finished, digits.val_x[:1], tmp_path / "m.pt")
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert torch.allclose(scripted(digits.val_x[:64]), finished(digits.val_x[:64]), atol=1e-4)
    # the QDQ ONNX model's integer weights hold the same zeros
    import onnx
    from onnx import numpy_helper

    from autocompress.onnx_export import export_onnx

    export_onnx(finished, digits.val_x[:1], tmp_path / "m.onnx")
    ints = {i.name.split(".weight")[0]: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer
            if i.name.endswith("weight_quantized")}
    assert set(ints) == set(names) and all(_is_2_4(torch.from_numpy(ints[n].astype("float32"))) for n in names)


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_turns_the_knob_on_an_ampere_profile(tmp_path):
    import autocompress.api as api

    space = tmp_path / "s.yaml"
    space.write_text("name: s\nexclude: [first, last]\nknobs:\n"
                     "  - {knob: wbits, per: all, choices: [8]}\n"
                     "  - {knob: abits, per: all, choices: [8]}\n"
                     "  - {knob: sparse24, per: layer, layers: ['layer3.*', 'layer4.*'], choices: [0, 1]}\n")
    torch.manual_seed(0)
    # the default searcher: the sensitivity analysis and the predictor see the knob too
    result = api.search(tiny_resnet(), data="digits", target="nvidia-a100", space=str(space), trials=4, seed=0,
                        workers=1, out=tmp_path / "run", report=False, measure_energy=False,
                        constraints={"max_acc_drop": 100})
    records = [r for r in result.records if r.get("config") and r.get("duplicate_of") is None]
    sparse = [r for r in records if any(lc.get("sparse24") for lc in r["config"]["layers"].values())]
    assert sparse, "no candidate turned the knob"
    cm = CostModel(result.prepared.table, load_profile("nvidia-a100"))
    for r in sparse:  # the recorded energy is the profile's cost of the sparse config
        config = CompressionConfig.from_dict(r["config"])
        assert r["metrics"]["energy_mj"] == pytest.approx(cm.cost(config).energy_j * 1e3, rel=1e-6)
        dense = CompressionConfig.from_dict({**r["config"], "layers": {
            n: {k: v for k, v in lc.items() if k != "sparse24"} for n, lc in r["config"]["layers"].items()}})
        assert cm.cost(config).energy_j < cm.cost(dense).energy_j


def test_an_ampere_profile_runs_the_sparse_layers_at_twice_the_rate_and_reads_compressed_weights(tiny):
    model, table = tiny
    names = [n for n in table.names if n.startswith("layer4.") and table[n].in_channels % 4 == 0]
    dense = CompressionConfig(layers={n: LayerConfig(wbits=8, abits=8) for n in table.names})
    sparse = CompressionConfig(layers={n: LayerConfig(wbits=8, abits=8, sparse24=n in names) for n in table.names})
    a100 = CostModel(table, load_profile("nvidia-a100"))
    d, s = a100.cost(dense, detail=True), a100.cost(sparse, detail=True)
    rows = np.array([n in names for n in table.names])
    assert np.allclose(s.layers["cycles"][rows], d.layers["cycles"][rows] / 2)  # compute_speedup 2
    # int8 values halved, plus 2 index bits per kept value: 0.5 + 2 / 16 of the weight bytes (biases whole)
    bias = np.array([table[n].bias_params * 4 for n in table.names])[rows]
    assert np.allclose(s.layers["weight_bytes"][rows] - bias, (d.layers["weight_bytes"][rows] - bias) * 0.625)
    assert np.array_equal(s.layers["cycles"][~rows], d.layers["cycles"][~rows])
    assert s.energy_j < d.energy_j
    batch = a100.cost_many([dense, sparse])[1]  # the vectorised path agrees
    assert np.allclose(batch, [d.energy_j, s.energy_j])
    # a profile without sparse units computes the zeros: the same cost as dense
    tpu = CostModel(table, load_profile("tpu-v1"))
    assert tpu.cost(sparse).energy_j == tpu.cost(dense).energy_j


def test_the_shipped_full_space_turns_the_knob_only_where_the_target_has_sparse_units(tiny):
    from autocompress.space import load_space

    model, table = tiny
    on_a100 = load_space("resnet_full").bind(table).restrict_to(load_profile("nvidia-a100"))
    on_tpu = load_space("resnet_full").bind(table).restrict_to(load_profile("tpu-v1"))
    sparse = [p for p in on_a100.params if p.knob == "sparse24"]
    assert sparse and all(table[p.layers[0]].in_channels >= 4 for p in sparse)
    assert not any(p.knob == "sparse24" for p in on_tpu.params)
    assert any("sparse24 left out: tpu-v1 states no 2:4 sparse units" in n for n in on_tpu.notes)
    assert {p.name for p in on_a100.params} - {p.name for p in sparse} == {p.name for p in on_tpu.params}
