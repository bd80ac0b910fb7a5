"""The search problem's constraints beyond accuracy: bit-width bounds, quantisation error and a
quantisation clipping range, checked on real evaluations (no Ray)."""

import pytest
import torch

import autocompress.api as api
from autocompress._errors import UserError
from autocompress.compress import apply
from autocompress.compress.quantize import quantize_weight_
from autocompress.config import CompressionConfig, LayerConfig
from autocompress.search import Constraints, Problem
from tests.test_cli import TINY, cli
from tests.test_cli_errors import _one_line_error


@pytest.fixture(scope="module")
def prepared(trained_tiny, digits):
    from torch.utils.data import TensorDataset

    return api.prepare(trained_tiny, None, "tpu-v1", train_data=TensorDataset(digits.train_x, digits.train_y),
                       val_data=TensorDataset(digits.val_x, digits.val_y), log=lambda s: None)


def _problem(prepared, constraints: Constraints) -> Problem:
    space = prepared.space("default").restrict_bits(constraints.min_bits, constraints.max_bits)
    return Problem(space, prepared.evaluator(), constraints=constraints)


def test_bit_bounds_move_the_space_and_every_layer_inside_them(prepared):
    problem = _problem(prepared, Constraints(max_bits=4, max_acc_drop=None))
    assert {c for p in problem.space.params if p.knob == "wbits" for c in p.choices} == {4}
    record = problem.evaluate(0, {p.name: p.choices[-1] for p in problem.space.params})
    bits = [lc["wbits"] for lc in record["config"]["layers"].values()]
    # tpu-v1 would give the layers the space leaves alone 8 bits: the bound wins
    assert len(bits) == len(prepared.table) and max(bits) == 4
    assert record["metrics"]["weight_bits_max"] == 4 and record["status"] == "ok"

    low = _problem(prepared, Constraints(min_bits=6, max_acc_drop=None))
    assert {c for p in low.space.params if p.knob == "wbits" for c in p.choices} == {6, 8}


def test_bit_bounds_are_checked_from_the_config_alone(prepared):
    c = Constraints(max_bits=6, min_bits=4, max_acc_drop=None)
    m = prepared.evaluator().cost_metrics(CompressionConfig(layers={"conv1": LayerConfig(wbits=3)}))
    assert m.accuracy is None and m.weight_bits_min == 3 and m.weight_bits_max == 32  # float counts as 32
    assert c.violations(m)["max_bits"] == 32 - 6 and c.violations(m)["min_bits"] == 4 - 3
    assert {"max_bits", "min_bits"} <= set(Constraints.DATA_FREE)


def test_quant_error_is_the_logits_noise_ratio_and_bounds_feasibility(prepared):
    values = {p.name: p.choices[0] for p in prepared.space("default").params}  # 4-bit weights
    loose = _problem(prepared, Constraints(max_quant_error=1.0, max_acc_drop=None)).evaluate(0, values)
    m = loose["metrics"]
    assert m["quant_error"] == pytest.approx(10 ** (-m["sqnr_db"] / 10))
    assert 0 < m["quant_error"] < 1.0 and loose["status"] == "ok"
    tight = _problem(prepared, Constraints(max_quant_error=m["quant_error"] / 2, max_acc_drop=None)).evaluate(0, values)
    assert tight["status"] == "infeasible" and tight["violations"]["max_quant_error"] == pytest.approx(1.0)


def test_clipping_range_saturates_weights_and_activations_and_is_part_of_the_config(prepared, digits):
    w = torch.tensor([[-3.0, -0.5, 0.25, 2.0]])
    scale = quantize_weight_(w, 8, clip=(-1.0, 1.0))
    assert w.abs().max() == pytest.approx(1.0) and scale.item() == pytest.approx(1.0 / 127)

    layers = {n: LayerConfig(wbits=8, abits=8) for n in prepared.table.names}
    plain = CompressionConfig(layers=layers)
    clipped = CompressionConfig(layers=layers, clip=(-0.05, 0.05))
    model = apply(prepared.model, prepared.table, clipped, data=prepared.data)
    conv = model.get_submodule(prepared.table.names[1])
    assert conv.weight.abs().max() <= 0.05 + 1e-7
    assert conv.input_quant.hi <= 0.05
    ev = prepared.evaluator()
    assert ev.evaluate(clipped).accuracy < ev.evaluate(plain).accuracy - 0.2  # a range that tight hurts
    assert CompressionConfig.from_dict(clipped.to_dict()).clip == (-0.05, 0.05)
    with pytest.raises(UserError, match="clip range must contain 0"):
        CompressionConfig.from_dict({"clip": [0.5, 1.0]})


def test_bad_bounds_are_one_line_errors():
    with pytest.raises(UserError, match="no supported bit-width"):
        Constraints(min_bits=7, max_bits=7)
    with pytest.raises(UserError, match="--max-bits must be a whole number"):
        Constraints(max_bits=1)


@pytest.mark.parametrize("args, expected", [
    (["--clip-range", "abc"], "--clip-range takes 2 comma-separated numbers"),
    (["--clip-range=0.5,2"], "--clip-range must contain 0"),
    (["--resources-per-trial", "gpu=1"], "asks for GPUs but this machine has none"),
    (["--resources-per-trial", "tpu=1"], "knows cpu and gpu, not 'tpu'"),
    (["--min-bits", "7", "--max-bits", "7"], "no supported bit-width lies in [7, 7]"),
])
def test_bad_search_options_through_the_cli(args, expected):
    if "gpu=1" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = _one_line_error(cli("search", "--model", TINY, "--trials", "1", *args))
    assert expected in line


def test_per_layer_weight_sqnr_follows_the_bits(prepared):
    """About 6 dB per bit for uniform quantisation: 8-bit layers score well above 4-bit ones."""
    names = prepared.table.names
    config = CompressionConfig(layers={n: LayerConfig(wbits=8 if i % 2 else 4) for i, n in enumerate(names)})
    m = prepared.evaluator().evaluate(config)
    assert set(m.weight_sqnr_db) == set(names)
    eight = [m.weight_sqnr_db[n] for i, n in enumerate(names) if i % 2]
    four = [m.weight_sqnr_db[n] for i, n in enumerate(names) if not i % 2]
    assert min(eight) > max(four) and 18 < sum(eight) / len(eight) - sum(four) / len(four) < 30
    assert m.weight_sqnr_min_db == min(four)
