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
    for bits in (2, 3, 4, 8):
        q = w.clone()
        scale = quantize_weight_(q, bits)
        ints = (q.reshape(8, -1) / scale[:, None]).round()
        assert ints.abs().max() <= 2 ** (bits - 1) - 1
        assert torch.allclose(ints * scale[:, None], q.reshape(8, -1), atol=1e-6)
        if bits >= 3:  # max-abs grid: every weight within half a step
            assert torch.allclose(scale, w.reshape(8, -1).abs().amax(1) / (2 ** (bits - 1) - 1))
            assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_2_bit_weights_are_clipped_to_the_least_l4_error_and_training_keeps_that_grid():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    q = w.clone()
    scale = quantize_weight_(q, 2)
    amax = w.abs().amax(1)
    assert (scale < amax).all()  # clipped: a max-abs ternary grid rounds nearly everything to 0
    l4 = lambda a: ((a - w) ** 4).sum(1)  # noqa: E731
    plain = w.clone()
    quantize_weight_(plain, 2, ratio=torch.ones(16))
    assert (l4(q) <= l4(plain) + 1e-6).all() and l4(q).sum() < 0.8 * l4(plain).sum()
    assert (plain == 0).float().mean() > 0.8 and (q == 0).float().mean() < 0.6
    # quantisation-aware training searches the ratios once and the export rounds with them
    from autocompress.compress.quantize import WeightFakeQuant, clip_ratios
    fq = WeightFakeQuant(2)
    trained = w * 1.3  # the weights move while training: the ratio found on the first ones stays
    fq(w)
    exported = trained.clone()
    quantize_weight_(exported, 2, ratio=fq.ratio)
    assert torch.equal(fq(trained), exported)
    assert torch.equal(fq.ratio, clip_ratios(w, 2))


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
