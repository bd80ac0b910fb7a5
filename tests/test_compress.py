import pytest
import torch

from autocompress.compress import apply
from autocompress.compress.quantize import quantize_weight_
from autocompress.compress.recover import predict
from autocompress.config import CompressionConfig, kept_channels, resolve
from autocompress.graph import trace
from autocompress.models import build_model
from autocompress import UserError


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    return model.eval(), trace(model, torch.zeros(1, 3, 32, 32))


def test_pruning_half_a_layer_halves_its_macs_and_the_next_layers_inputs(resnet):
    model, table = resnet
    cfg = CompressionConfig(layers={"layer1.0.conv1": {"prune": 0.5}})
    small = apply(model, table, cfg)
    after = trace(small, torch.zeros(1, 3, 32, 32))
    assert small.layer1[0].conv1.out_channels == 32
    assert small.layer1[0].conv2.in_channels == 32
    assert after["layer1.0.conv1"].macs == table["layer1.0.conv1"].macs // 2
    assert after["layer1.0.conv2"].macs == table["layer1.0.conv2"].macs // 2
    assert after["layer1.1.conv1"].macs == table["layer1.1.conv1"].macs  # untouched
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_residual_stage_prunes_consistently_and_config_alone_predicts_the_model(resnet):
    model, table = resnet
    cfg = CompressionConfig(layers={"layer3.0.conv2": {"prune": 0.25, "wbits": 4}, "layer2.1.conv1": {"prune": 0.3}})
    small = apply(model, table, cfg)
    keep = kept_channels(256, 0.25)
    assert keep == 192
    for name in ("layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"):
        assert dict(small.named_modules())[name].out_channels == keep
    assert small.layer4[0].conv1.in_channels == keep
    assert small.layer2[1].conv1.out_channels == round(0.7 * 128)
    predicted = resolve(table, cfg)
    real = trace(small, torch.zeros(1, 3, 32, 32))
    assert predicted.params == sum(p.numel() for p in small.parameters())
    assert int(predicted.macs.sum()) == real.total_macs


def test_conflicting_ratios_in_one_group_and_unknown_layers_are_errors(resnet):
    _, table = resnet
    with pytest.raises(UserError, match="share channels"):
        resolve(table, CompressionConfig(layers={"layer3.0.conv2": {"prune": 0.25}, "layer3.1.conv2": {"prune": 0.5}}))
    with pytest.raises(UserError, match="nearest: layer3.0.conv2"):
        resolve(table, CompressionConfig(layers={"layer3.0.conv9": {"prune": 0.25}}))


def test_applying_a_config_twice_gives_identical_weights(resnet):
    model, table = resnet
    cfg = CompressionConfig(layers={"layer2.0.conv1": {"prune": 0.5, "wbits": 3}, "fc": {"wbits": 6}})
    a, b = apply(model, table, cfg), apply(model, table, cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_weight_quantisation_is_symmetric_per_channel_with_2_pow_b_minus_1_levels():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    for bits in (2, 4, 8):
        q = w.clone()
        scale = quantize_weight_(q, bits)
        ints = (q.reshape(8, -1) / scale[:, None]).round()
        assert ints.abs().max() <= 2 ** (bits - 1) - 1
        assert torch.allclose(ints * scale[:, None], q.reshape(8, -1), atol=1e-6)
        assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_8_bits_keep_accuracy_and_2_bits_visibly_degrade(trained_tiny, digits):
    table = trace(trained_tiny, digits.val_x[:1])
    base = (predict(trained_tiny, digits.val_x).argmax(1) == digits.val_y).float().mean().item()
    assert base > 0.8

    def acc(bits):
        cfg = CompressionConfig().with_default_bits(table, bits, 8)
        m = apply(trained_tiny, table, cfg, data=digits)
        return (predict(m, digits.val_x).argmax(1) == digits.val_y).float().mean().item()

    assert acc(8) >= base - 0.005
    assert acc(2) < base - 0.05


def test_user_model_with_branches_prunes_and_runs():
    from tests.tiny_models import BranchyNet

    model = BranchyNet().eval()
    table = trace(model, torch.zeros(1, 3, 8, 8))
    assert table["dw.0"].out_groups == ("left.0", "right.0")  # the concatenation's two halves
    cfg = CompressionConfig(layers={"left.0": {"prune": 0.5}, "right.0": {"prune": 0.25}})
    small = apply(model, table, cfg)
    kept = kept_channels(12, 0.5) + kept_channels(12, 0.25)
    assert small.dw[0].out_channels == small.dw[0].groups == kept
    assert small.project.in_channels == kept
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert resolve(table, cfg).params == sum(p.numel() for p in small.parameters())


def test_config_round_trips_through_json_and_yaml(tmp_path):
    cfg = CompressionConfig(layers={"a": {"prune": 0.25, "wbits": 4}}, channel_multiple=8, meta={"trial": 3})
    for suffix in (".json", ".yaml"):
        cfg.save(tmp_path / f"c{suffix}")
        assert CompressionConfig.load(tmp_path / f"c{suffix}") == cfg
    (tmp_path / "bad.yaml").write_text("layers: {a: {wbits: 7}}\n")
    with pytest.raises(UserError, match="layers.a.wbits"):
        CompressionConfig.load(tmp_path / "bad.yaml")


def test_kept_channels_rounds_to_the_profile_multiple():
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(100, 0.33) == 67
    assert kept_channels(64, 0.3, multiple=8) == 48  # 44.8 -> nearest multiple of 8
    assert kept_channels(64, 0.99, multiple=8) == 8  # never below one multiple
