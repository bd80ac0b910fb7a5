"""Evaluator and its metric functions: accuracy, the paired standard error of a drop, SQNR,
modeled cost, and accuracy on the trained tiny model. No Ray; a few seconds in all (the trained
model is the session's ``trained_tiny``)."""
import math

import pytest
import torch

from autocompress.compress import Recovery
from autocompress.config import FLOAT_BITS, CompressionConfig, LayerConfig
from autocompress.evaluate import Evaluator, Metrics, accuracy, paired_drop_se, sqnr_db
from autocompress.graph import trace
from autocompress.hardware import load_profile

# --- accuracy ----------------------------------------------------------------------------------------
LOGITS = torch.tensor([[0.1, 0.9, 0.0],  # predicts 1
                       [2.0, 1.0, 0.0],  # predicts 0
                       [0.0, 0.0, 1.0],  # predicts 2
                       [1.0, 3.0, 2.0]])  # predicts 1
LABELS = torch.tensor([1, 1, 2, 2])  # right, wrong, right, wrong


def test_top1_is_the_share_of_argmax_hits():
    assert accuracy(LOGITS, LABELS) == 0.5
    assert accuracy(LOGITS, torch.tensor([1, 0, 2, 1])) == 1.0
    assert accuracy(LOGITS, torch.tensor([0, 1, 0, 0])) == 0.0


def test_top5_counts_a_label_among_the_five_highest():
    # 7 classes; row 0 ranks class 6 lowest, row 1 ranks class 0 fifth, row 2 ranks class 3 sixth
    logits = torch.tensor([[7., 6, 5, 4, 3, 2, 1],
                           [3., 7, 6, 5, 4, 2, 1],
                           [7., 6, 5, 2, 4, 3, 1]])
    labels = torch.tensor([6, 0, 3])
    assert accuracy(logits, labels, "top5") == pytest.approx(1 / 3)
    assert accuracy(logits, labels, "top1") == 0.0
    # fewer than 5 classes: every label is within the top k = all classes
    assert accuracy(LOGITS, LABELS, "top5") == 1.0


def test_macro_f1_averages_per_class_f1():
    # labels 0 0 1 1, predictions 0 1 1 1: class 0 P=1 R=1/2 F1=2/3; class 1 P=2/3 R=1 F1=4/5
    logits = torch.tensor([[1., 0], [0, 1], [0, 1], [0, 1]])
    assert accuracy(logits, torch.tensor([0, 0, 1, 1]), "macro_f1") == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric 'top3'"):
        accuracy(LOGITS, LABELS, "top3")


# --- paired standard error --------------------------------------------------------------------------
def _one_hot(preds, classes=3):
    return torch.nn.functional.one_hot(torch.tensor(preds), classes).float()


def test_paired_drop_se_is_the_standard_error_of_per_image_differences():
    labels = torch.tensor([0, 1, 2, 0, 1])
    reference = _one_hot([0, 1, 2, 0, 2])  # right, right, right, right, wrong
    other = _one_hot([0, 0, 2, 1, 2])  # right, wrong, right, wrong, wrong
    # differences 0 1 0 1 0: mean 0.4, sample variance (3 x 0.16 + 2 x 0.36) / 4 = 0.3
    expected = 100 * math.sqrt(0.3) / math.sqrt(5)
    assert paired_drop_se(reference, other, labels) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(24.4949, abs=1e-4)
    # a model that flips the same images the other way has the same error
    assert paired_drop_se(other, reference, labels) == pytest.approx(expected, rel=1e-6)


def test_paired_drop_se_is_zero_for_agreeing_models_and_none_for_macro_f1():
    labels = torch.tensor([0, 1, 2, 0])
    a = _one_hot([0, 1, 1, 0])
    b = _one_hot([0, 1, 0, 0])  # wrong on the same image, with another class: same correctness
    assert paired_drop_se(a, b, labels) == 0.0
    assert paired_drop_se(a, a, labels[:1].repeat(4)) == 0.0
    assert paired_drop_se(a[:1], b[:1], labels[:1]) == 0.0  # one image: no spread to estimate
    assert paired_drop_se(a, b, labels, "macro_f1") is None


def test_paired_drop_se_top5_uses_top5_correctness():
    labels = torch.tensor([6, 6])
    ref = torch.tensor([[1., 2, 3, 4, 5, 6, 7], [1., 2, 3, 4, 5, 6, 7]])  # 6 is top: both right
    other = torch.tensor([[7., 6, 5, 4, 3, 2, 1], [1., 2, 3, 4, 5, 6, 7]])  # first: 6 is last
    # differences 1, 0: mean 1/2, sample variance 1/2, se = 100 sqrt(1/2) / sqrt(2) = 50
    assert paired_drop_se(ref, other, labels, "top5") == pytest.approx(50.0)


# --- SQNR -----------------------------------------------------------------------------------------------
def test_sqnr_of_noise_at_a_hundredth_of_the_signal_power_is_20_db():
    signal = torch.tensor([[3.0, 4.0]])  # power 25
    noise = torch.tensor([[0.3, 0.4]])  # power 0.25
    assert sqnr_db(signal, signal + noise) == pytest.approx(20.0, abs=1e-5)
    assert sqnr_db(signal, signal - noise) == pytest.approx(20.0, abs=1e-5)
    assert sqnr_db(signal, signal + noise / math.sqrt(10)) == pytest.approx(30.0, abs=1e-5)
    assert sqnr_db(signal, torch.zeros_like(signal)) == pytest.approx(0.0, abs=1e-6)  # noise = signal
    assert sqnr_db(signal, signal.clone()) == math.inf


def test_metrics_to_dict_writes_infinite_sqnr_as_999():
    assert Metrics(sqnr_db=math.inf).to_dict()["sqnr_db"] == 999.0
    assert Metrics(sqnr_db=12.5).to_dict()["sqnr_db"] == 12.5


# --- the Evaluator ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(trained_tiny, digits):
    return trace(trained_tiny, digits.val_x[:1])


def _evaluator(model, table, data, target="tpu-v1"):
    # a small recovery budget: what is asserted here does not depend on it, the test time does
    return Evaluator(model, table, data, load_profile(target), recovery=Recovery(bn_batches=2, reconstruct_images=64))


def _prune_every_group(table, ratio):
    return CompressionConfig(layers={g: LayerConfig(prune=ratio) for g in table.groups})


def test_the_baseline_costs_exactly_the_reference_and_says_it_is_modeled(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits)
    m = ev.cost_metrics(ev.reference_config)
    assert m.cost_origin == "modeled:tpu-v1"
    assert m.energy_reduction == 1.0
    assert m.macs == table.total_macs
    # tpu-v1 runs the uncompressed model in int8: every weight at 8 bits
    assert m.weight_bits_max == m.weight_bits_min == 8
    assert m.latency_ms > 0 and m.energy_mj > 0


def test_half_the_channels_costs_less_than_the_baseline(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits)
    base = ev.cost_metrics(ev.complete(CompressionConfig()))
    half = ev.cost_metrics(ev.complete(_prune_every_group(table, 0.5)))
    assert half.cost_origin == base.cost_origin == "modeled:tpu-v1"
    assert half.macs < base.macs and half.params < base.params and half.size_bytes < base.size_bytes
    assert half.energy_mj < base.energy_mj and half.latency_ms <= base.latency_ms
    assert half.energy_reduction == pytest.approx(base.energy_mj / half.energy_mj, rel=1e-9)
    assert half.energy_reduction > 1.0 and base.energy_reduction == pytest.approx(1.0)


def test_pruning_one_group_removes_the_macs_of_its_outputs_and_of_their_readers(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits)
    g = "layer4.0.conv1"  # 64 output channels, read only by layer4.0.conv2
    assert table.groups[g].producers == (g,) and table.groups[g].consumers == ("layer4.0.conv2",)
    m = ev.cost_metrics(CompressionConfig(layers={g: LayerConfig(prune=0.5)}))
    # 32 of 64 channels left: the producer and its only reader each do half their MACs
    removed = table[g].macs // 2 + table["layer4.0.conv2"].macs // 2
    assert m.macs == table.total_macs - removed


def test_eight_bit_weights_store_a_quarter_of_the_float_bytes_plus_scales(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits, "cpu-haswell")
    layer = table["layer4.1.conv2"]  # 64 x 64 x 3 x 3 weights, no bias
    assert layer.weight_params == 64 * 64 * 9 and layer.bias_params == 0
    float_size = ev.cost_metrics(CompressionConfig()).size_bytes
    q = ev.cost_metrics(CompressionConfig(layers={"layer4.1.conv2": LayerConfig(wbits=8)}))
    # 3 of every 4 bytes of its weights go, one fp32 scale per output channel comes
    assert float_size - q.size_bytes == 3 * 64 * 64 * 9 - 4 * 64
    assert q.weight_bits_min == 8 and q.weight_bits_max == FLOAT_BITS


def test_complete_gives_an_integer_only_target_its_reference_precision(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits, "tpu-v1")  # no float arithmetic; folds batch norms
    done = ev.complete(CompressionConfig(layers={"fc": LayerConfig(wbits=4)}))
    assert done.fold_batchnorm is True
    assert set(done.layers) == set(table.names)
    assert done.layers["fc"].wbits == 4 and done.layers["fc"].abits == 8  # set bits are kept
    assert all(done.layers[n].wbits == 8 and done.layers[n].abits == 8 for n in table.names if n != "fc")


def test_complete_leaves_bits_alone_on_a_target_with_float_arithmetic(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits, "cpu-haswell")  # runs fp32 natively, folds batch norms
    config = CompressionConfig(layers={"fc": LayerConfig(wbits=8)})
    done = ev.complete(config)
    assert done.fold_batchnorm is True
    assert set(done.layers) == {"fc"} and done.layers["fc"].wbits == 8 and done.layers["fc"].abits is None


def test_a_measured_target_leaves_latency_and_energy_to_measurement(trained_tiny, table, digits):
    from autocompress.hardware import load_target

    ev = Evaluator(trained_tiny, table, digits, load_target("cpu-local"))
    m = ev.cost_metrics(_prune_every_group(table, 0.5))
    assert m.latency_ms is None and m.energy_mj is None and m.energy_reduction is None
    assert 0 < m.macs < table.total_macs


def _direct_accuracy(model, x, y):
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def test_baseline_accuracy_is_a_direct_forward_pass(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits)
    assert ev.baseline_accuracy == _direct_accuracy(trained_tiny, digits.val_x, digits.val_y)
    assert ev.baseline_accuracy > 0.5  # trained: far above the 10% of chance


def test_evaluating_the_uncompressed_config_reproduces_the_float_model(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits, "cpu-haswell")
    m = ev.evaluate(CompressionConfig(), fidelity="screen")
    assert m.accuracy == _direct_accuracy(trained_tiny, digits.val_x, digits.val_y)
    assert m.accuracy_drop == 0.0 and m.accuracy_drop_se == 0.0
    assert m.sqnr_db == math.inf and m.quant_error == 0.0
    assert m.eval_images == len(digits.val_y) and m.fidelity == "screen" and m.accuracy_screen == m.accuracy
    assert m.training_images == 0 and m.cost_origin == "modeled:cpu-haswell"


def test_evaluate_scores_the_model_it_builds_as_a_direct_forward_pass_would(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits)
    config = ev.complete(CompressionConfig(layers={"layer4.0.conv1": LayerConfig(prune=0.5),
                                                   "layer4.1.conv2": LayerConfig(wbits=4)}))
    built = ev.build(config, ev.screening)
    m = ev.evaluate(config, fidelity="screen", compressed=built)
    direct = _direct_accuracy(built, digits.val_x, digits.val_y)
    assert m.accuracy == direct
    base = _direct_accuracy(trained_tiny, digits.val_x, digits.val_y)
    assert m.accuracy_drop == pytest.approx(100 * (base - direct), abs=1e-9)
    with torch.no_grad():
        ref, out = trained_tiny(digits.val_x), built(digits.val_x)
    n = min(256, len(out))
    noise = ((ref[:n] - out[:n]) ** 2).sum().item()
    assert m.sqnr_db == pytest.approx(10 * math.log10((ref[:n] ** 2).sum().item() / noise), abs=1e-3)
    assert m.quant_error == pytest.approx(noise / (ref[:n] ** 2).sum().item(), rel=1e-3)
    a, b = (ref.argmax(1) == digits.val_y).float(), (out.argmax(1) == digits.val_y).float()
    assert m.accuracy_drop_se == pytest.approx(100 * (a - b).std().item() / math.sqrt(len(a)), rel=1e-6)
    # the same config built by evaluate itself gives the same model, hence the same figures
    again = ev.evaluate(config, fidelity="screen")
    assert again.accuracy == m.accuracy and again.sqnr_db == pytest.approx(m.sqnr_db, abs=1e-6)


def test_fewer_bits_lose_more_signal(trained_tiny, table, digits):
    ev = _evaluator(trained_tiny, table, digits, "cpu-haswell")
    sqnr = {}
    for bits in (8, 2):
        config = CompressionConfig(layers={n: LayerConfig(wbits=bits) for n in table.names})
        sqnr[bits] = ev.evaluate(config, fidelity="screen").sqnr_db
    assert math.isfinite(sqnr[8]) and sqnr[8] > 20  # 8-bit weights: logits within 1% of the power
    assert sqnr[2] < sqnr[8] - 10
