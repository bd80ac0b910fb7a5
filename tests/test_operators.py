"""Every operator on every built-in model: pruning, low rank, depth and width compose, and the
config alone predicts the compressed model's parameters and MACs."""
import pytest
import torch
from torch import nn

from autocompress.compress import apply, factorize
from autocompress.config import CompressionConfig, LayerConfig, kept_channels, resolve
from autocompress.graph import trace
from autocompress.models import build_model

ZOO = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn"]
SHAPE = (3, 32, 32)


def _compute_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request):
    torch.manual_seed(0)
    net, _ = build_model(request.param, num_classes=10, input_shape=SHAPE, width_mult=0.25)
    return request.param, net.eval(), trace(net, torch.zeros(1, *SHAPE))


def _mixed_config(table) -> CompressionConfig:
    """Prune one group, factorise one dense conv, drop one block, narrow everything, 8-bit weights."""
    layers = {n: LayerConfig(wbits=8) for n in table.names}
    prunable = next(n for n in table.names[1:] if table[n].out_group and table[n].groups == 1)
    layers[prunable] = LayerConfig(prune=0.5, wbits=8)
    dropped = list(table.blocks)[:1]
    dense = next(n for n in reversed(table.names[:-1]) if table[n].groups == 1 and table[n].kernel[0] > 1
                 and not any(n.startswith(b + ".") for b in dropped))
    layers[dense] = LayerConfig(rank=0.5, wbits=8)
    return CompressionConfig(layers=layers, arch={"width": 0.75, "drop": dropped}, fold_batchnorm=True)


def test_pruning_ratio_sets_output_channels_and_the_forward_pass_runs(zoo_model):
    name, net, table = zoo_model
    layer = next(x for x in table.layers[1:] if x.out_group and x.groups == 1)
    config = CompressionConfig(layers={layer.name: LayerConfig(prune=0.3)})
    pruned = apply(net, table, config)
    assert pruned.get_submodule(layer.name).out_channels == round(0.7 * layer.out_channels)
    assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_all_operators_compose_and_the_config_alone_predicts_the_model(zoo_model):
    name, net, table = zoo_model
    config = _mixed_config(table)
    compressed = apply(net, table, config)
    assert compressed(torch.randn(2, *SHAPE)).shape == (2, 10)
    r = resolve(table, config)
    assert r.params == _compute_params(compressed)
    assert r.params < _compute_params(net)
    assert int(r.macs.sum()) == trace(compressed, torch.zeros(1, *SHAPE)).total_macs
    dense = next(n for n, lc in config.layers.items() if lc.rank)
    assert isinstance(compressed.get_submodule(dense), nn.Sequential)  # really two layers now
    for block in config.arch.drop:
        assert isinstance(compressed.get_submodule(block), nn.Identity)


def test_folding_batch_norms_keeps_the_function_and_leaves_a_bias(zoo_model):
    name, net, table = zoo_model
    for m in net.modules():  # give the batch norms statistics worth folding
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    config = CompressionConfig(fold_batchnorm=True)
    folded = apply(net, table, config)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)
    assert resolve(table, config).params == _compute_params(folded) < _compute_params(net)


def test_applying_a_mixed_config_twice_gives_identical_weights(zoo_model):
    name, net, table = zoo_model
    config = _mixed_config(table)
    a, b = apply(net, table, config), apply(net, table, config)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layer, x", [
    (nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True), torch.randn(2, 16, 9, 9)),
    (nn.Conv2d(8, 40, 5, padding=2, bias=False), torch.randn(2, 8, 7, 7)),
    (nn.Linear(64, 10), torch.randn(3, 64)),
])
def test_factorisation_has_the_expected_parameters_and_is_exact_at_full_rank(layer, x):
    torch.manual_seed(0)
    out = layer.weight.shape[0]
    depth = layer.weight[0].numel()  # in x kernel area
    full = min(out, depth)
    bias = out if layer.bias is not None else 0
    for ratio in (0.25, 0.5):
        r = max(1, int(ratio * full + 0.5))  # half up, as for channels
        assert _compute_params(factorize(layer, ratio)) == r * depth + out * r + bias
    exact = factorize(layer, 1.0)
    torch.testing.assert_close(exact(x), layer(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(factorize(layer, 0.25)(x), layer(x), atol=1e-3)


def test_width_multiplier_and_block_dropping_are_what_the_config_says():
    net, _ = build_model("resnet18", num_classes=10, input_shape=SHAPE, width_mult=0.25)
    table = trace(net, torch.zeros(1, *SHAPE))
    assert list(table.blocks) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    config = CompressionConfig(layers={"layer2.0.conv1": LayerConfig(prune=0.5)},
                               arch={"width": 0.5, "drop": ["layer3.1"]})
    m = apply(net, table, config)
    c = table["layer2.0.conv1"].out_channels
    assert m.layer2[0].conv1.out_channels == kept_channels(c, 1 - 0.5 * 0.5)  # ratio and width multiply
    assert m.layer2[0].conv2.out_channels == kept_channels(c, 0.5)  # width alone
    assert isinstance(m.layer3[1], nn.Identity) and isinstance(m.layer3[0].conv1, nn.Conv2d)
    r = resolve(table, config)
    i = table.names.index("layer3.1.conv1")
    assert not r.present[i] and r.macs[i] == 0


def test_bad_rank_and_block_names_are_one_line_errors():
    from autocompress._errors import UserError

    net, _ = build_model("mobilenet_v2", num_classes=10, input_shape=SHAPE, width_mult=0.25)
    table = trace(net, torch.zeros(1, *SHAPE))
    depthwise = next(x.name for x in table.layers if x.depthwise)
    with pytest.raises(UserError, match="depthwise"):
        resolve(table, CompressionConfig(layers={depthwise: LayerConfig(rank=0.5)}))
    with pytest.raises(UserError, match="features.4"):
        resolve(table, CompressionConfig(arch={"drop": ["features.4"]}))  # it changes the shape
    with pytest.raises(Exception, match="rank"):
        LayerConfig(rank=1.5)


@pytest.fixture(scope="module")
def built_pair():
    net, _ = build_model("resnet18", num_classes=10, input_shape=SHAPE, width_mult=0.5)
    table = trace(net, torch.zeros(1, *SHAPE))
    config = CompressionConfig(layers={"layer3.0.conv2": LayerConfig(rank=0.25), "fc": LayerConfig(rank=0.5),
                                       "layer2.0.conv1": LayerConfig(prune=0.5)},
                               arch={"width": 0.75, "drop": ["layer1.1", "layer4.1"]})
    built_table = trace(apply(net, table, config), torch.zeros(1, *SHAPE))
    assert len(built_table) == len(table) - 4 + 2  # two blocks of two convs gone, two layers split
    return table, config, built_table


@pytest.mark.parametrize("target", ["tpu-v1", "eyeriss", "bitfusion", "nvidia-t4", "edge-tpu"])
def test_cost_of_a_config_equals_the_cost_of_the_model_it_builds(built_pair, target):
    """Factorised layers are priced as the two layers they become, dropped blocks as nothing,
    pruned and narrowed layers at their new shapes: the cost model on the original table and
    the config matches the cost model on the traced compressed model."""
    from autocompress.hardware import CostModel, load_profile

    table, config, built_table = built_pair
    profile = load_profile(target)
    modeled = CostModel(table, profile).cost(config)
    actual = CostModel(built_table, profile).cost(CompressionConfig())
    assert modeled.latency_s == pytest.approx(actual.latency_s, rel=1e-9)
    assert modeled.energy_j == pytest.approx(actual.energy_j, rel=1e-9)
    whole = CostModel(table, profile).cost(CompressionConfig())
    assert modeled.energy_j < whole.energy_j


@pytest.mark.parametrize("model, space", [("resnet18", "resnet_full"), ("mobilenet_v2", "mobilenet_v2_full")])
def test_full_spaces_turn_every_knob_into_a_model(model, space):
    from autocompress.space import load_space

    net, _ = build_model(model, num_classes=10, input_shape=SHAPE, width_mult=0.25)
    table = trace(net, torch.zeros(1, *SHAPE))
    bound = load_space(space).bind(table)
    knobs = {p.knob for p in bound.params}
    assert {"rank", "drop", "width"} <= knobs or model != "resnet18"
    assert {"drop", "width"} <= knobs
    assert all(table[layer].groups == 1 for p in bound.params if p.knob == "rank" for layer in p.layers)
    last = {p.name: (p.choices[-1] if p.knob != "drop" else 1) for p in bound.params}
    config = bound.config({**{p.name: p.choices[0] for p in bound.params}, **{
        k: v for k, v in last.items() if k.startswith(("drop:", "width"))}})
    assert sorted(config.arch.drop) == sorted(p.layers[0] for p in bound.params if p.knob == "drop")
    assert config.arch.width == 1.0
    whole = bound.config({p.name: (1.0 if p.knob == "rank" else p.choices[0]) for p in bound.params})
    assert all(lc.rank is None for lc in whole.layers.values())  # rank 1 keeps the layer whole
    weights_only = config.model_copy(update={"layers": {k: v.model_copy(update={"abits": None})
                                                        for k, v in config.layers.items()}})
    built = apply(net, table, weights_only)  # activation ranges would need calibration data
    assert resolve(table, config).params == _compute_params(built)


@pytest.mark.slow
@pytest.mark.parametrize("model", ZOO)
def test_8_bits_keep_top1_and_2_bits_visibly_move_the_logits_on_every_zoo_model(model, digits):
    """Each zoo model (narrow, trained briefly on digits; VGG on digits upsampled to 32 px, as its
    five pools need) quantised to 8 bits everywhere (weights and activations) stays within 0.5
    points of float top-1 on the held-out digits; 2-bit weights everywhere move the logits at
    least 5x as far as 8 bits do (12-22x on these nets; ~1x were the 2 bits not applied). Top-1
    is not asked to drop at 2 bits: with clipped 2-bit grids a small net on digits may lose under
    a point, and a test that wants it to lose more would fail for a better quantiser."""
    from dataclasses import replace

    import torch.nn.functional as F

    from autocompress.compress.recover import predict, train
    from autocompress.evaluate import accuracy

    # every held-out image (validation and test splits): half a point is ~3 of them
    data = replace(digits, val_x=torch.cat([digits.val_x, digits.test_x]), val_y=torch.cat([digits.val_y, digits.test_y]))
    if model == "vgg11_bn":
        data = replace(data, train_x=F.interpolate(data.train_x, size=32), val_x=F.interpolate(data.val_x, size=32))
    shape = tuple(data.train_x.shape[1:])
    torch.manual_seed(0)
    net, _ = build_model(model, num_classes=10, input_shape=shape, width_mult=0.25 if model == "mobilenet_v2" else 0.125)
    train(net, data, steps=100, lr=0.05, batch_size=64, seed=0, bf16=False)  # the same net on every CPU
    net.eval()
    table = trace(net, data.train_x[:1])
    top1 = lambda m: accuracy(predict(m, data.val_x), data.val_y)  # noqa: E731
    float_top1 = top1(net)
    assert float_top1 > 0.8  # a model worth quantising
    eight = apply(net, table, CompressionConfig(layers={n: LayerConfig(wbits=8, abits=8) for n in table.names}),
                  data=data)
    two = apply(net, table, CompressionConfig(layers={n: LayerConfig(wbits=2, abits=8) for n in table.names}),
                data=data)
    assert top1(eight) >= float_top1 - 0.005
    reference = predict(net, data.val_x)
    moved = lambda m: (predict(m, data.val_x) - reference).abs().mean().item()  # noqa: E731
    assert moved(two) >= 5 * moved(eight), (moved(two), moved(eight))
