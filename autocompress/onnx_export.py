"""ONNX export of a compressed model in QDQ form (QuantizeLinear / DequantizeLinear).

* Weights of a quantised layer: an integer initializer (INT8 for 5-8 bits, INT4 for <= 4 bits,
  opset 21; INT16 for 16) -> DequantizeLinear with one scale per output channel (axis 0). The
  integers are exactly the ones the fake-quantised PyTorch model computes with; a 3-bit layer's
  values lie in [-3, 3] inside its INT4 container (ONNX does not record the true width).
* Activations of a layer with activation bits: QuantizeLinear -> DequantizeLinear per tensor
  with the calibrated scale (zero point 0; UINT8 after a ReLU, else INT8); below 8 bits a Clip
  to the true range comes first.
* Batch norm that directly follows a conv is folded into it. For a quantised conv this only
  rescales the per-channel scale (the integers stay), so the file is exact, and the conv's
  bias becomes INT32 (scale = input scale x weight scale): the pattern onnxruntime turns into
  integer kernels (QLinearConv) on CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress._errors import UserError
from autocompress.compress.fold import batchnorm_scale, fold_conv_bn
from autocompress.compress.quantize import ActQuant, weight_integers

__all__ = ["export_onnx", "export_ort_overrides", "ort_quantize_kwargs", "OnnxExport", "onnx_session",
           "INT4_OPSET"]

INT4_OPSET = 21  # INT4 / UINT4 tensors (and so INT4 DequantizeLinear inputs) need opset 21
EXPORT_OPSET = 18  # what torch's TorchScript exporter writes; raised to 21 afterwards (no op used changes meaning)


@dataclass
class OnnxExport:
    """What was written: per quantised layer, its storage type and bits."""

    path: Path
    opset: int
    weights: dict[str, str] = field(default_factory=dict)  # layer -> "INT8" / "INT4" / "INT16"
    activations: dict[str, str] = field(default_factory=dict)  # layer -> "UINT8" / "INT8" ...
    integer_bias: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = {}
        for t in self.weights.values():
            kinds[t] = kinds.get(t, 0) + 1
        w = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items())) or "none"
        return (f"ONNX opset {self.opset}, QDQ: quantised weights {w}; {len(self.activations)} activation "
                f"QDQ pairs; onnxruntime loads it without autocompress")


# -- activations: a custom autograd function whose ONNX form is [Clip] -> Q -> DQ -----------------
class _ActQDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float, qmin: int, qmax: int, bits: int):  # noqa: D102
        s = torch.tensor(scale, dtype=x.dtype)
        return torch.clamp(torch.round(x / s), qmin, qmax) * s

    @staticmethod
    def symbolic(g, x, scale: float, qmin: int, qmax: int, bits: int):  # noqa: D102
        signed = qmin < 0
        dtype = (torch.int8 if signed else torch.uint8) if bits <= 8 else torch.int16
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        zp = g.op("Constant", value_t=torch.tensor(0, dtype=dtype))
        type_min, type_max = torch.iinfo(dtype).min, torch.iinfo(dtype).max
        if qmin > type_min or qmax < type_max:  # narrower than the type (symmetric INT8 stops at -127)
            lo = g.op("Constant", value_t=torch.tensor(qmin * scale, dtype=torch.float32))
            hi = g.op("Constant", value_t=torch.tensor(qmax * scale, dtype=torch.float32))
            x = g.op("Clip", x, lo, hi)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, zp), s, zp)


class _ExportActQuant(nn.Module):
    def __init__(self, q: ActQuant):
        super().__init__()
        scale, self.qmin, self.qmax = q.qparams()
        self.scale, self.bits = float(scale), q.bits
        if not 0 < q.bits <= 16 or (not q.signed and q.bits > 8):
            raise UserError(f"activation bits {q.bits} (unsigned) have no ONNX QDQ type here; use <= 8")

    def forward(self, x):
        return _ActQDQ.apply(x, self.scale, self.qmin, self.qmax, self.bits)


# -- preparing the module: fold batch norm, remember integers and scales -------------------------
@dataclass
class _QLayer:
    q: torch.Tensor  # integer values (float tensor holding integers)
    scale: torch.Tensor  # per output channel, > 0
    bits: int
    input_scale: float | None  # the layer's input activation scale, if quantised


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, bn) pairs where the batch norm reads exactly the conv's output tensor."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), names[mod])))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o: pairs.append((produced[id(i[0])], names[mod])) if id(i[0]) in produced else None))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(pairs))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, qlayer: _QLayer | None) -> None:
    weight, bias = fold_conv_bn(conv.weight, conv.bias, bn)
    if qlayer is not None:  # the integers stay; the per-channel scale absorbs the BN factor
        scale = qlayer.scale.double() * batchnorm_scale(bn)
        sign = torch.where(scale < 0, -1.0, 1.0).double()
        qlayer.q = qlayer.q * sign.float().reshape(-1, 1, 1, 1)
        qlayer.scale = (scale * sign).clamp_min(1e-30).float()
        weight = qlayer.q * qlayer.scale.reshape(-1, 1, 1, 1)
    conv.weight = nn.Parameter(weight)
    conv.bias = nn.Parameter(bias)


def _prepare(model: nn.Module, example: torch.Tensor, *, activation_qdq: bool = True
             ) -> tuple[nn.Module, dict[str, _QLayer], dict[str, str]]:
    """A copy of ``model`` with batch norm folded and each activation quantiser replaced by its
    QDQ export (``activation_qdq``) or by nothing (a float graph another quantiser will fill);
    the quantised layers' integers and scales; the activation types."""
    m = copy.deepcopy(model).eval()
    modules = dict(m.named_modules())
    qlayers: dict[str, _QLayer] = {}
    acts: dict[str, str] = {}
    for name, mod in modules.items():
        if getattr(mod, "weight_bits", None) is not None:
            inq = getattr(mod, "input_quant", None)
            qlayers[name] = _QLayer(weight_integers(mod), mod.weight_scale.detach().clone(), mod.weight_bits,
                                    float(inq.qparams()[0]) if isinstance(inq, ActQuant) else None)
    for conv_name, bn_name in _conv_bn_pairs(m, example):
        _fold(modules[conv_name], modules[bn_name], qlayers.get(conv_name))
        m.set_submodule(bn_name, nn.Identity())
    for name, mod in modules.items():
        inq = getattr(mod, "input_quant", None)
        if isinstance(inq, ActQuant):
            if inq.observing:
                raise UserError(f"layer {name!r}: activation quantiser was never calibrated")
            mod.input_quant = _ExportActQuant(inq) if activation_qdq else nn.Identity()
            signed = inq.signed
            acts[name] = ("INT" if signed else "UINT") + ("8" if inq.bits <= 8 else "16")
    return m, qlayers, acts


# -- writing the graph ---------------------------------------------------------------------------
def _weight_type(bits: int, int4: bool):
    from onnx import TensorProto

    if bits <= 4 and int4:
        return TensorProto.INT4, "INT4"
    if bits <= 8:
        return TensorProto.INT8, "INT8"
    return TensorProto.INT16, "INT16"


def _int_tensor(name: str, onnx_type: int, values: np.ndarray):
    """An integer initializer as raw bytes (a list of millions of ints is slow to build); INT4
    packs two values per byte, the first in the low nibble, as the ONNX spec says."""
    from onnx import TensorProto, helper

    flat = values.reshape(-1)
    if onnx_type == TensorProto.INT4:
        nibbles = (flat.astype(np.int8).view(np.uint8) & 0x0F).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        raw = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
    else:
        dtype = {TensorProto.INT8: np.int8, TensorProto.INT16: np.int16}[onnx_type]
        raw = flat.astype(dtype).tobytes()
    return helper.make_tensor(name, onnx_type, list(values.shape), raw, raw=True)


def _quantise_graph(proto, qlayers: dict[str, _QLayer], int4: bool, info: OnnxExport) -> None:
    """Replace each quantised layer's float weight initializer by integers -> DequantizeLinear,
    and its bias by INT32 -> DequantizeLinear where the input is quantised too."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    new_nodes = []
    for name, ql in qlayers.items():
        wname = f"{name}.weight"
        if wname not in inits:
            raise RuntimeError(f"ONNX export: no initializer {wname!r} (the exporter renamed it)")
        onnx_type, label = _weight_type(ql.bits, int4)
        ints = ql.q.numpy().astype(np.int64)
        cout = ints.shape[0]
        graph.initializer.remove(inits[wname])
        q_t = _int_tensor(f"{wname}_quantized", onnx_type, ints)
        s_t = numpy_helper.from_array(ql.scale.numpy().astype(np.float32), f"{wname}_scale")
        z_t = _int_tensor(f"{wname}_zero_point", onnx_type, np.zeros(cout, np.int64))
        graph.initializer.extend([q_t, s_t, z_t])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_t.name, s_t.name, z_t.name], [wname],
                                          name=f"{wname}_DequantizeLinear", axis=0))
        info.weights[name] = label
        # the bias by the node that reads it, through Identity aliases: the exporter merges
        # equal initializers (the all-zero biases of an untrained BN), and a bias shared by two
        # convs cannot carry both scales, which kept onnxruntime from fusing either
        node = consumers.get(wname)
        bname = node.input[2] if node is not None and len(node.input) > 2 else ""
        while bname in aliases:
            bname = aliases[bname]
        if ql.input_scale is not None and bname in inits:
            bias = numpy_helper.to_array(inits[bname]).astype(np.float64)
            bscale = (ql.input_scale * ql.scale.double().numpy()).astype(np.float32)
            bint = np.clip(np.round(bias / bscale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
            own = f"{name}.bias"
            graph.initializer.extend([numpy_helper.from_array(bint, f"{own}_quantized"),
                                      numpy_helper.from_array(bscale, f"{own}_scale"),
                                      numpy_helper.from_array(np.zeros(cout, np.int32), f"{own}_zero_point")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{own}_quantized", f"{own}_scale",
                                                                   f"{own}_zero_point"], [f"{own}_dequantized"],
                                              name=f"{own}_DequantizeLinear", axis=0))
            node.input[2] = f"{own}_dequantized"
            info.integer_bias.append(name)
    # nodes must stay topologically sorted: the dequantisers go first (they read initializers only)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old)
    _drop_unused(graph)


def _drop_unused(graph) -> None:
    """Remove Identity nodes and initializers nothing reads any more (the float biases replaced)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in read]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def _to_onnx(prepared: nn.Module, example: torch.Tensor, path: Path):
    """``prepared`` as an ONNX ModelProto (written beside ``path`` for a moment)."""
    import warnings

    import onnx

    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(prepared, (example[:1],), str(tmp), dynamo=False, opset_version=EXPORT_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    try:
        return onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, int4: bool = True) -> OnnxExport:
    """Write ``model`` (a compressed model from :func:`autocompress.compress.apply`) as QDQ ONNX.

    ``int4=False`` stores <= 4-bit weights in INT8 containers (same values): onnxruntime's CPU
    kernels then compute those layers in integers too, where INT4 ones run as float convs."""
    import onnx

    path = Path(path)
    prepared, qlayers, acts = _prepare(model, example[:1])
    proto = _to_onnx(prepared, example, path)
    info = OnnxExport(path, INT4_OPSET, activations=acts)
    _quantise_graph(proto, qlayers, int4, info)
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = INT4_OPSET
    proto.producer_name = "autocompress"
    onnx.checker.check_model(proto, full_check=True)
    from autocompress.utils import _atomic

    _atomic(path, lambda f: f.write(proto.SerializeToString()))
    return info


def onnx_session(path: str | Path, threads: int | None = None, *, optimized_path: str | Path | None = None):
    """An onnxruntime CPU session with every graph optimisation (QDQ -> integer kernels);
    ``optimized_path`` keeps the graph it will run (to see which kernels it chose)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# -- onnxruntime's own quantiser: a float graph and the overrides that make it write our integers --
ORT_RECIPE = "autocompress ort-overrides v1"


def _ort_weight_type(bits: int) -> str:
    return "QInt4" if bits <= 4 else "QInt8" if bits <= 8 else "QInt16"


def export_ort_overrides(model: nn.Module, example: torch.Tensor, path: str | Path) -> tuple[Path, list[str]]:
    """Write ``model`` as a float ONNX graph (pruned shapes, batch norm folded, weights on their
    grids) beside ``path``, and at ``path`` a JSON recipe for onnxruntime's
    ``quantize_static``: which Conv/Gemm nodes to quantise, and per tensor the
    ``TensorQuantOverrides`` (type, per-channel scales, zero points) that make it write the same
    integers as this model computes with. Returns the graph's path and what onnxruntime cannot
    take as the model has it. :func:`ort_quantize_kwargs` reads the recipe back."""
    path = Path(path)
    graph_path = path.with_suffix(".onnx") if path.suffix == ".json" else path.with_name(path.name + ".onnx")
    prepared, qlayers, _ = _prepare(model, example[:1], activation_qdq=False)
    proto = _to_onnx(prepared, example, graph_path)
    for imp in proto.opset_import:  # the quantiser keeps the opset, and INT4 needs 21
        if imp.domain in ("", "ai.onnx"):
            imp.version = INT4_OPSET
    consumers = {n.input[1]: n for n in proto.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    modules = dict(model.named_modules())
    overrides: dict[str, list[dict]] = {}
    nodes, notes = [], []
    for name, ql in qlayers.items():
        node = consumers.get(f"{name}.weight")
        if node is None:
            raise RuntimeError(f"ONNX export: no Conv/Gemm reads {name}.weight (the exporter renamed it)")
        nodes.append(node.name)
        overrides[f"{name}.weight"] = [{"quant_type": _ort_weight_type(ql.bits), "axis": 0, "scale": float(s),
                                        "zero_point": 0} for s in ql.scale.tolist()]
        if ql.bits not in (4, 8, 16):
            notes.append(f"{name}: {ql.bits}-bit weights in a {_ort_weight_type(ql.bits)[1:]} container "
                         "(the integers are exact; the file does not record the narrower width)")
        inq = getattr(modules[name], "input_quant", None)
        if isinstance(inq, ActQuant):
            scale, qmin, _ = inq.qparams()
            act = [{"quant_type": ("QInt" if qmin < 0 else "QUInt") + ("8" if inq.bits <= 8 else "16"),
                    "scale": float(scale), "zero_point": 0}]
            if inq.bits not in (8, 16):
                notes.append(f"{name}: {inq.bits}-bit input activations in an 8-bit container (its scale, "
                             "but onnxruntime clips at the container's range)")
            if overrides.setdefault(node.input[0], act) != act:
                notes.append(f"{name}: its input is shared with another layer quantised differently; "
                             "onnxruntime takes the first layer's")
        else:
            notes.append(f"{name}: float input activations, which onnxruntime's static quantiser quantises "
                         "to 8 bits with its own calibration")
    from autocompress.utils import _atomic, atomic_write_json

    _atomic(graph_path, lambda f: f.write(proto.SerializeToString()))
    atomic_write_json(path, {
        "format": ORT_RECIPE, "model_input": graph_path.name,
        "usage": "onnxruntime.quantization.quantize_static(model_input, model_output, calibration_data_reader, "
                 "**quantize_static) after turning quant type names into QuantType and scales into float32 "
                 "arrays (autocompress.onnx_export.ort_quantize_kwargs does both)",
        "quantize_static": {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
                            "weight_type": "QInt8", "op_types_to_quantize": ["Conv", "Gemm"],
                            "nodes_to_quantize": nodes, "extra_options": {
                                "TensorQuantOverrides": overrides,
                                "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"]}},  # as the model: inputs only
        "notes": notes})
    return graph_path, notes


def ort_quantize_kwargs(path: str | Path) -> tuple[Path, dict]:
    """(float graph, keyword arguments of ``onnxruntime.quantization.quantize_static``) from a
    recipe :func:`export_ort_overrides` wrote: quant types as ``QuantType``, scales as float32
    and zero points as arrays of the tensor's type, as onnxruntime expects them."""
    import json

    from onnxruntime.quantization import QuantFormat, QuantType

    path = Path(path)
    recipe = json.loads(path.read_text())
    if recipe.get("format") != ORT_RECIPE:
        raise UserError(f"{path} is not an autocompress ort-overrides recipe")
    kwargs = dict(recipe["quantize_static"])
    kwargs["quant_format"] = QuantFormat[kwargs["quant_format"]]
    for key in ("activation_type", "weight_type"):
        kwargs[key] = QuantType[kwargs[key]]
    overrides = {}
    for tensor, entries in kwargs["extra_options"]["TensorQuantOverrides"].items():
        overrides[tensor] = [{**e, "quant_type": QuantType[e["quant_type"]],
                              "scale": np.array(e["scale"], dtype=np.float32),
                              "zero_point": np.array(e["zero_point"], dtype=_ORT_NP[e["quant_type"]])}
                             for e in entries]
    kwargs["extra_options"] = {**kwargs["extra_options"], "TensorQuantOverrides": overrides}
    return path.with_name(recipe["model_input"]), kwargs


_ORT_NP = {"QInt4": np.int8, "QUInt4": np.uint8, "QInt8": np.int8, "QUInt8": np.uint8, "QInt16": np.int16,
           "QUInt16": np.uint16}
