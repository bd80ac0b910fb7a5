"""Recovery after compression: quantisation-aware fine-tuning, the teacher-logit cache and
least-squares reconstruction, on the tiny ResNet trained on digits."""
import copy
import dataclasses
import importlib

import pytest
import torch
from torch.nn.utils import parametrize

from autocompress.compress import Recovery, apply
from autocompress.compress.prune import prune_channels
from autocompress.compress.quantize import (ActQuant, WeightFakeQuant, quantize_weight_, quantize_weights,
                                            weight_integers)
from autocompress.compress.recover import distillation_loss, predict, teacher_logits, train
from autocompress.config import CompressionConfig, LayerConfig
from autocompress.graph import trace

# the package, not the autocompress.compress() function that the top-level package re-exports
compress_pkg = importlib.import_module("autocompress.compress")


@pytest.fixture(scope="module")
def table(trained_tiny, digits):
    return trace(trained_tiny, digits.val_x[:1])


def _accuracy(model, data):
    return (predict(model, data.val_x).argmax(1) == data.val_y).float().mean().item()


def _pruned_config(table, ratio):
    groups = [g for g, grp in table.groups.items() if table.names[0] not in grp.producers]
    return CompressionConfig(layers={table.groups[g].name: LayerConfig(prune=ratio) for g in groups})


def test_fake_quant_forward_is_the_export_grid_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    fq = WeightFakeQuant(3)(w)
    exact = w.detach().clone()
    quantize_weight_(exact, 3)
    assert torch.allclose(fq, exact, atol=1e-6)
    fq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    q = ActQuant(3)
    q(torch.tensor([-1.0, 2.0]))
    q.observing = False
    x = torch.tensor([-3.0, -0.4, 0.3, 1.7, 5.0], requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))  # zero outside the range
    with torch.no_grad():
        assert torch.equal(y, q(x))  # training forward = the exact one


@pytest.mark.slow
def test_quantisation_aware_finetuning_beats_finetune_then_quantise_at_2_bits(trained_tiny, table, digits):
    cfg = CompressionConfig(layers={n: LayerConfig(wbits=2, abits=4) for n in table.names})
    acc = {}
    for qat in (True, False):
        rec = Recovery(finetune_steps=60, batch_size=64, qat=qat)
        acc[qat] = _accuracy(apply(trained_tiny, table, cfg, data=digits, recovery=rec, seed=0), digits)
    # 97% against 78% here; with the max-abs ternary grid (before clipping) the gap was larger
    assert acc[True] > acc[False] + 0.1, acc


@pytest.mark.slow
def test_the_finished_qat_model_holds_exactly_the_integers_quantize_weights_gives(trained_tiny, table, digits,
                                                                                  monkeypatch):
    cfg = CompressionConfig(layers={n: LayerConfig(wbits=3, abits=6) for n in table.names}, fold_batchnorm=True)
    trained_floats = []
    real = compress_pkg.quantize_weights

    def spy(model, wbits, clip=None):
        trained_floats.append((copy.deepcopy(model), dict(wbits), clip))
        return real(model, wbits, clip)

    monkeypatch.setattr(compress_pkg, "quantize_weights", spy)
    out = apply(trained_tiny, table, cfg, data=digits, recovery=Recovery(finetune_steps=20, batch_size=64), seed=0)
    (floats, wbits, clip), = trained_floats
    assert not any(parametrize.is_parametrized(m) for m in floats.modules())  # trained float weights
    quantize_weights(floats, wbits, clip)
    ours, theirs = dict(out.named_modules()), dict(floats.named_modules())
    checked = 0
    for name, layer in ours.items():
        if getattr(layer, "weight_bits", None) is None:
            continue
        assert torch.equal(layer.weight, theirs[name].weight) and torch.equal(layer.weight_scale, theirs[name].weight_scale)
        ints = weight_integers(layer)
        assert ints.abs().max() <= 3
        scale = layer.weight_scale.reshape(-1, *([1] * (layer.weight.dim() - 1)))
        assert torch.equal(ints * scale, layer.weight)
        checked += 1
    assert checked == len(table.names)
    quantizers = [m for m in out.modules() if isinstance(m, ActQuant)]
    assert quantizers and not any(q.observing for q in quantizers)
    assert out(digits.val_x[:4]).shape == (4, 10)


def test_cached_teacher_logits_and_loss_equal_the_live_teachers(trained_tiny, digits):
    teacher = trained_tiny
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        flipped_data = dataclasses.replace(digits, augment=True)
        pool = teacher_logits(teacher, flipped_data, 300, flips=True)
        assert sum(calls) == 600  # each image and its flip, once
        again = teacher_logits(teacher, flipped_data, 200, flips=True)  # a prefix of the pool: no forward
        assert sum(calls) == 600 and torch.equal(again.logits, pool.logits[:200])
    finally:
        handle.remove()
    x = digits.train_x[pool.index]
    with torch.no_grad():
        assert torch.allclose(pool.logits, teacher(x), atol=1e-5)
        assert torch.allclose(pool.flipped, teacher(x.flip(-1)), atol=1e-5)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        s = student(x[:64]) * 0.5
        live = distillation_loss(s, digits.train_y[pool.index[:64]], teacher(x[:64]))
    cached = distillation_loss(s, digits.train_y[pool.index[:64]], pool.logits[:64])
    assert torch.allclose(live, cached, atol=1e-6)

    # the first training step's loss with the cache is the live teacher's loss on that batch
    seen = []
    model = copy.deepcopy(teacher)
    reference = copy.deepcopy(teacher).train()
    train(model, digits, steps=1, lr=0.01, batch_size=64, teacher=teacher, seed=3, bf16=False,
          teacher_cache=True, teacher_pool=300, progress=lambda step, steps, loss: seen.append(loss))
    small = teacher_logits(teacher, digits, 64, flips=False)  # the pool train() used: min(1 x 64, 300)
    first = small.index[torch.randperm(64, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        expected = distillation_loss(reference(digits.train_x[first]), digits.train_y[first],
                                     teacher(digits.train_x[first]))
    assert seen[0] == pytest.approx(float(expected), abs=1e-5)


def test_pruning_records_the_kept_output_channels(trained_tiny, table, digits):
    model = copy.deepcopy(trained_tiny)
    prune_channels(model, table, _pruned_config(table, 0.5), digits.val_x[:1])
    kept = model.kept_out_channels["layer1.0.conv1"]  # its inputs (the stem's group) are not pruned
    assert len(kept) == model.layer1[0].conv1.out_channels < trained_tiny.layer1[0].conv1.out_channels
    assert torch.equal(model.layer1[0].conv1.weight, trained_tiny.layer1[0].conv1.weight[kept])
    assert torch.equal(model.layer1[0].bn1.running_mean, trained_tiny.layer1[0].bn1.running_mean[kept])


def test_reconstruction_recovers_what_batchnorm_reestimation_alone_does_not(trained_tiny, table, digits):
    cfg = _pruned_config(table, 0.5)
    base = predict(trained_tiny, digits.val_x)
    out = {}
    for rec in (False, True):
        model = apply(trained_tiny, table, cfg, data=digits, recovery=Recovery(reconstruct=rec), seed=0)
        logits = predict(model, digits.val_x)
        out[rec] = (_accuracy(model, digits), float(((logits - base) ** 2).mean()))
    assert out[True][1] < 0.5 * out[False][1], out  # output error against the uncompressed model
    assert out[True][0] > out[False][0] + 0.1, out
