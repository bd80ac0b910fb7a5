"""The NNCF and Intel Neural Compressor recipes, fed to the tools themselves (skipped where the
tool is not installed; both are in the test extra)."""
import json

import pytest
import torch

from autocompress.config import CompressionConfig
from autocompress.graph import trace
from autocompress.peer import float_structure, inc_recipe, nncf_recipe
from tests.tiny_models import BranchyNet

# a float layer (stem), int8 and 4-bit convs, a 4-bit Linear, a pruned channel group
CONFIG = CompressionConfig.from_dict({"layers": {
    "stem": {"wbits": None}, "left.0": {"wbits": 8, "abits": 8, "prune": 0.5}, "right.0": {"wbits": 4, "abits": 8},
    "dw.0": {"wbits": 8, "abits": 8}, "project": {"wbits": 4, "abits": 8}, "head": {"wbits": 4, "abits": 8}}})


@pytest.fixture(scope="module")
def structure():
    from autocompress.compress import apply

    torch.manual_seed(0)
    model = BranchyNet().eval()
    table = trace(model, torch.zeros(1, 3, 16, 16))
    return table, apply(model, table, float_structure(CONFIG)).eval()


def test_recipes_say_what_each_tool_cannot_take(structure):
    table, model = structure
    nncf = nncf_recipe(table, CONFIG)
    assert nncf["quantize"]["ignored_scope"]["patterns"] == ["stem/"]
    assert {n for n in nncf["layers"] if "int8" in nncf["layers"][n]["nncf"]} == {"left.0", "right.0", "dw.0", "project",
                                                                                   "head"}
    assert sum("go to NNCF as int8" in n for n in nncf["notes"]) == 3  # right.0, project, head are 4-bit
    inc = inc_recipe(table, CONFIG)
    assert inc["static"]["local"] == {"stem": {"w_dtype": "fp32", "act_dtype": "fp32"}}
    assert inc["weight_only"]["local"] == {r"head(\.\d+)?$": {"bits": 4, "group_size": -1, "use_layer_wise": False}}
    assert any("pruned channels" in n for n in inc["notes"])
    # the structure is float and pruned: left.0 kept half its 12 channels, no layer quantised
    assert model.left[0].out_channels == 6 and getattr(model.left[0], "weight_bits", None) is None


def test_nncf_quantises_every_layer_but_the_float_one(structure, monkeypatch):
    nncf = pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'nncf>=3.4')")
    from nncf.torch.quantization import extensions

    # NNCF's C++ kernels take ~40 s to compile on first use; its own torch fallback computes the same
    monkeypatch.setattr(extensions.QuantizedFunctionsCPULoader, "load",
                        classmethod(lambda cls: extensions.ReferenceQuantizedFunctions))
    from autocompress.peer import nncf_quantize

    table, model = structure
    recipe = json.loads(json.dumps(nncf_recipe(table, CONFIG)))  # as read back from the file
    batches = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    q = nncf_quantize(model, recipe, batches)
    hooks = q.__nncf_hooks.pre_hooks
    op = {"stem": "conv2d", "left.0": "conv2d", "right.0": "conv2d", "dw.0": "conv2d", "project": "conv2d",
          "head": "linear"}
    quantised = {name for name, f in op.items() if f"{name.replace('.', '/')}/{f}/0__1" in hooks}
    assert quantised == set(op) - {"stem"}
    bits = {next(iter(hooks[f"{n.replace('.', '/')}/{op[n]}/0__1"].values())).num_bits for n in quantised}
    assert bits == {8}
    with torch.no_grad():
        x = torch.randn(4, 3, 16, 16)
        assert (q(x) - model(x)).abs().max() < 0.2 * model(x).abs().max()  # int8: close to the float structure
    del nncf


def test_inc_takes_the_weight_only_bits_and_the_static_float_layers(structure):
    pytest.importorskip("neural_compressor.torch", reason="Intel Neural Compressor is not installed "
                                                           "(pip install 'neural-compressor-pt>=3.10')")
    from neural_compressor.torch.quantization import StaticQuantConfig

    from autocompress.peer import inc_weight_only

    table, model = structure
    recipe = json.loads(json.dumps(inc_recipe(table, CONFIG)))
    import copy

    q = inc_weight_only(copy.deepcopy(model), recipe)
    assert type(q.head).__name__ == "INCWeightOnlyLinear" and q.head.bits == 4
    assert isinstance(q.project, torch.nn.Conv2d)  # INC's weight-only path leaves convs alone (the notes say so)
    static = StaticQuantConfig.from_dict(recipe["static"]).to_dict()
    assert {k: (v["w_dtype"], v["act_dtype"]) for k, v in static["local"].items()} == {"stem": ("fp32", "fp32")}


def test_inc_static_quantisation_keeps_the_float_layer_float(structure):
    pytest.importorskip("neural_compressor.torch", reason="Intel Neural Compressor is not installed")
    from autocompress.peer import inc_static

    table, model = structure
    recipe = json.loads(json.dumps(inc_recipe(table, CONFIG)))
    q = inc_static(model, recipe, [torch.randn(5, 3, 16, 16) for _ in range(3)])
    weights = {}  # layer -> does its conv/linear read a dequantised (int8) weight?
    for n in q.graph.nodes:
        if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            layer = list(n.meta["nn_module_stack"].values())[-1][0]
            weights[layer] = n.args[1].op == "call_function" and "dequantize" in str(n.args[1].target)
    assert weights == {"stem": False, "left.0": True, "right.0": True, "dw.0": True, "project": True, "head": True}


def test_inc_weight_only_reaches_both_factors_of_a_low_rank_linear():
    pytest.importorskip("neural_compressor.torch", reason="Intel Neural Compressor is not installed")
    from autocompress.compress import apply
    from autocompress.peer import inc_weight_only

    torch.manual_seed(0)
    model = BranchyNet().eval()
    table = trace(model, torch.zeros(1, 3, 16, 16))
    config = CompressionConfig.from_dict({"layers": {"head": {"wbits": 3, "abits": 8, "rank": 0.5}}})
    structure = apply(model, table, float_structure(config)).eval()
    q = inc_weight_only(structure, inc_recipe(table, config))
    factors = [m for n, m in q.named_modules() if n.startswith("head.")]
    assert len(factors) == 2 and all(type(m).__name__ == "INCWeightOnlyLinear" and m.bits == 3 for m in factors)
