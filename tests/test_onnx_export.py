"""ONNX QDQ export: integer weights per channel, activation QDQ, and outputs that match PyTorch."""
import numpy as np
import pytest
import torch

from autocompress.compress import apply
from autocompress.compress.quantize import ActQuant
from autocompress.config import CompressionConfig, LayerConfig
from autocompress.graph import trace


@pytest.fixture(scope="module")
def exported(trained_tiny, digits, tmp_path_factory):
    """The trained tiny ResNet, pruned and quantised with every kind of weight width, exported twice."""
    import autocompress

    table = trace(trained_tiny, torch.zeros((1, *digits.input_shape)))
    bits = [2, 3, 4, 5, 6, 8]
    layers = {}
    for i, name in enumerate(table.names):
        lc = {"wbits": bits[i % len(bits)], "abits": 8 if i else None}  # the first layer sees raw pixels
        if name.endswith("conv1") and name.startswith("layer"):
            lc["prune"] = 0.25
        layers[name] = LayerConfig(**lc)
    model = apply(trained_tiny, table, CompressionConfig(layers=layers), data=digits)
    out = tmp_path_factory.mktemp("onnx")
    info = autocompress.export_onnx(model, out / "m.onnx", input_shape="3x8x8")
    info8 = autocompress.export_onnx(model, out / "m8.onnx", input_shape="3x8x8", int4=False)
    return model, table, info, info8


def _run(path, x, optimize=True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def test_each_quantised_layer_is_integers_per_channel(exported):
    import onnx
    from onnx import TensorProto, numpy_helper

    model, table, info, _ = exported
    proto = onnx.load(str(info.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    inits = {t.name: t for t in proto.graph.initializer}
    dq = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    modules = dict(model.named_modules())
    for name in table.names:
        layer = modules[name]
        node = dq[f"{name}.weight"]  # the Conv / Gemm weight is the output of a DequantizeLinear
        q, scale = inits[node.input[0]], numpy_helper.to_array(inits[node.input[1]])
        expected = TensorProto.INT4 if layer.weight_bits <= 4 else TensorProto.INT8
        assert q.data_type == expected, name
        assert [a.i for a in node.attribute if a.name == "axis"] == [0]
        assert scale.shape == (layer.weight.shape[0],)  # one scale per (kept) output channel
        values = numpy_helper.to_array(q).astype(np.int64)
        qmax = 2 ** (layer.weight_bits - 1) - 1
        assert values.shape == tuple(layer.weight.shape)
        assert np.abs(values).max() == qmax  # clipped to the true width, and using all of it
    assert sorted(info.weights.values()).count("INT4") == sum(modules[n].weight_bits <= 4 for n in table.names)

    # activations: one Q -> DQ pair per quantised input, with the calibrated scale
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant)]
    qnodes = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qnodes) == len(quantizers) == len(table) - 1
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"}
    consts.update({k: numpy_helper.to_array(v) for k, v in inits.items()})
    onnx_scales = sorted(float(consts[n.input[1]]) for n in qnodes)
    torch_scales = sorted(float(q.qparams()[0]) for q in quantizers)
    assert np.allclose(onnx_scales, torch_scales, rtol=1e-7)


def test_onnxruntime_matches_the_fake_quantised_model(exported, digits):
    model, _, info, info8 = exported
    x = torch.cat([digits.val_x, digits.test_x])  # every held-out image: a point is ~6 of them
    y = torch.cat([digits.val_y, digits.test_y])
    with torch.no_grad():
        ref = model(x).numpy()
    plain = _run(info.path, x, optimize=False)  # the graph's own semantics
    fused = _run(info.path, x)  # onnxruntime's integer kernels where it fuses QDQ
    scale = np.abs(ref).max()
    # not bit-exact: biases become INT32 at scale (input scale x weight scale), as integer kernels
    # need, which moves them by up to half a step; that can carry a value over a rounding step
    # of the next quantiser
    assert np.median(np.abs(plain - ref)) < 0.01 * scale
    assert np.abs(plain - ref).max() < 0.05 * scale
    assert np.abs(fused - ref).max() < 0.05 * scale
    top1 = lambda out: float((out.argmax(1) == y.numpy()).mean()) * 100  # noqa: E731
    # a 2-bit layer puts some logits near ties, where that rounding flips about 1 image in 100
    assert abs(top1(plain) - top1(ref)) <= 1.0 and abs(top1(fused) - top1(ref)) <= 1.0
    # INT32 biases are within half a step of the float ones
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(info.path)).graph.initializer}
    assert info.integer_bias
    for name in info.integer_bias:
        bias = dict(model.named_modules())[name].bias
        step = inits[f"{name}.bias_scale"].astype(np.float64)
        if bias is not None:  # a Linear's own bias; a conv's comes from its folded batch norm
            error = np.abs(inits[f"{name}.bias_quantized"] * step - bias.detach().numpy())
            assert (error <= 0.5 * step * (1 + 1e-5)).all()
    # INT8 containers hold the same values as the INT4 ones
    assert np.array_equal(_run(info8.path, x, optimize=False), plain)
    assert set(info8.weights.values()) == {"INT8"}


def test_equal_biases_each_get_their_own_integer_bias(digits, tmp_path):
    """An untrained network's folded biases are all zero; the exporter merges equal initializers,
    and a bias shared by two convs kept onnxruntime from fusing them (4 to 8 of ResNet-18's
    block convs became integer kernels depending on the config). Each layer now owns its bias."""
    import onnx

    import autocompress
    from autocompress.hardware.measure import _integer_nodes
    from autocompress.onnx_export import onnx_session
    from tests.tiny_models import tiny_resnet

    model = tiny_resnet().eval()  # untrained: BN mean 0, var 1, beta 0 -> every folded bias is 0
    table = trace(model, torch.zeros((1, *digits.input_shape)))
    inner = table.names[1:-1]
    config = CompressionConfig(layers={n: LayerConfig(wbits=8, abits=8) for n in inner})
    from autocompress.compress import Recovery

    compressed = apply(model, table, config, data=digits, recovery=Recovery(bn_batches=0))
    info = autocompress.export_onnx(compressed, tmp_path / "m.onnx", input_shape="3x8x8", int4=False)
    proto = onnx.load(str(info.path))
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    biases = [n.input[2] for n in convs if len(n.input) > 2]
    assert len(biases) == len(set(biases)) == len(inner) + 1  # the first conv keeps its float bias
    assert sorted(info.integer_bias) == sorted(inner)
    onnx_session(info.path, 1, optimized_path=tmp_path / "opt.onnx")
    fused = _integer_nodes(tmp_path / "opt.onnx")
    # every block's first conv (ReLU in, ReLU out) runs on an integer kernel; convs ending in the
    # residual Add do not (onnxruntime's QDQ fusion), so this is the number of blocks
    assert fused == sum(n.endswith("conv1") and n.startswith("layer") for n in inner)
    x = digits.val_x[:16]
    with torch.no_grad():
        ref = compressed(x).numpy()
    assert np.abs(_run(info.path, x) - ref).max() < 0.05 * np.abs(ref).max()
