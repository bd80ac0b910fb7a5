"""Getting a chosen candidate out: its config (JSON / YAML), a per-layer table (CSV) and the
compressed model itself (TorchScript, which loads with plain ``torch.jit.load``, or ONNX with
QuantizeLinear / DequantizeLinear, which onnxruntime and TensorRT read)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from autocompress._errors import UserError
from autocompress.compress import plugin_layers
from autocompress.config import FLOAT_BITS, CompressionConfig, effective_ratios, resolve
from autocompress.graph import LayerTable
from autocompress.utils import atomic_write_text

FORMATS = ("json", "yaml", "csv", "torch", "onnx", "ort-overrides", "nncf", "inc")


def layer_table(table: LayerTable, config: CompressionConfig) -> pd.DataFrame:
    """One row per layer: pruning ratio of its output channels (width multiplier included), kept
    channels, bits, rank of a factorised layer, plug-in operators' columns (e.g. sparsity) where
    the config uses them, whether its block is dropped, MACs, parameters: the table tools that
    take per-layer settings read."""
    r = resolve(table, config)
    ratios = effective_ratios(table, config)
    rows = []
    for i, layer in enumerate(table.layers):
        ratio = ratios.get(layer.out_groups[0], 0.0) if len(layer.out_groups) == 1 else None
        rows.append({"layer": layer.name, "kind": layer.kind, "prune_ratio": ratio,
                     "out_channels": int(r.out_channels[i]), "original_out_channels": layer.out_channels,
                     "in_channels": int(r.in_channels[i]),
                     "weight_bits": None if r.wbits[i] >= FLOAT_BITS else int(r.wbits[i]),
                     "activation_bits": None if r.abits[i] >= FLOAT_BITS else int(r.abits[i]),
                     "rank": int(r.rank[i]) or None, "dropped": not bool(r.present[i]),
                     "macs": int(r.macs[i]), "params": int(r.weight_params[i] + r.bias_params[i])})
    frame = pd.DataFrame(rows)
    for op, layers in plugin_layers(config):  # a plug-in operator's column, where the config uses it
        if op.column:
            frame.insert(frame.columns.get_loc("dropped"), op.column[0],
                         [op.cell(layers.get(name)) if name in layers else None for name in frame["layer"]])
    return frame


def _storage(bits: int) -> tuple[int, torch.dtype]:
    """(values per byte, container) of a ``bits``-bit weight: 2-bit four to a byte, 3-4 bit two to a
    byte (offset binary in the unsigned byte), 5-8 bit int8, wider int16."""
    if bits <= 2:
        return 4, torch.uint8
    if bits <= 4:
        return 2, torch.uint8
    return 1, torch.int8 if bits <= 8 else torch.int16


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """The integers ``q`` (a float tensor holding them) in their :func:`_storage` container, flat."""
    per, dtype = _storage(bits)
    flat = q.reshape(-1).to(torch.int32)
    if per == 1:
        return flat.to(dtype)
    width = 8 // per
    flat = flat + (1 << (width - 1))  # offset binary: [-2^(w-1), 2^(w-1)) -> [0, 2^w)
    flat = torch.cat([flat, flat.new_zeros((-len(flat)) % per)]).reshape(-1, per)
    return sum(flat[:, i] << (width * i) for i in range(per)).to(torch.uint8)


def _unpack(packed: torch.Tensor, per: int, count: int) -> torch.Tensor:
    if per == 1:
        return packed.float()
    width = 8 // per
    mask = (1 << width) - 1
    parts = [((packed >> (width * i)) & mask).float() for i in range(per)]
    return (torch.stack(parts, dim=1).reshape(-1)[:count] - (1 << (width - 1)))


def _integer_weight_hook(module: nn.Module, args):
    q = _unpack(module.weight_packed, module.weight_values_per_byte, module.weight_scale_.numel() * module.weight_row)
    module.weight = (q.reshape(module.weight_shape) * module.weight_scale_.reshape(-1, *[1] * (len(module.weight_shape) - 1)))


def with_integer_weights(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A copy of ``model`` whose quantised layers (those :func:`~autocompress.compress.quantize.quantize_weights`
    quantised) hold their weights as the integers the model computes with, packed
    (:func:`_storage`), and one fp32 scale per output channel, and rebuild the float weight at
    each forward; returns it and each such layer's bits. Outputs are the model's to float rounding."""
    import copy

    from autocompress.compress.quantize import weight_integers

    model = copy.deepcopy(model)
    done = {}
    for name, mod in model.named_modules():
        if getattr(mod, "weight_bits", None) is None or not isinstance(mod.weight, nn.Parameter):
            continue
        q, scale, bits = weight_integers(mod), mod.weight_scale.detach().float().reshape(-1), int(mod.weight_bits)
        shape = tuple(mod.weight.shape)
        del mod.weight  # the parameter goes; the hook sets a plain tensor in its place
        mod.register_buffer("weight_packed", _pack(q, bits))
        mod.register_buffer("weight_scale_", scale.clone())
        mod.weight_shape, mod.weight_row = shape, int(q[0].numel())
        mod.weight_values_per_byte = _storage(bits)[0]
        mod.register_forward_pre_hook(_integer_weight_hook)
        done[name] = bits
    return model, done


def save_model(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """TorchScript (loads without autocompress); returns a line saying what was written. Quantised
    layers keep their integer weights (packed) and per-channel scales (:func:`with_integer_weights`)."""
    model = model.eval()
    try:
        import warnings

        packed, layers = with_integer_weights(model)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(packed.eval(), example, check_trace=False)
        scripted.save(str(path))
        ints = f", {len(layers)} layers with packed integer weights" if layers else ""
        return f"TorchScript{ints}: torch.jit.load({str(path)!r}) loads it without autocompress"
    except Exception as e:  # noqa: BLE001 - a model TorchScript cannot trace: pickle it instead
        torch.save(model, path)
        return (f"pickled module (TorchScript failed: {type(e).__name__}); loading it needs the model's "
                f"code: torch.load({str(path)!r}, weights_only=False)")


def export(config: CompressionConfig, table: LayerTable, fmt: str, out: str | Path, *,
           model_builder=None) -> str:
    """Write ``config`` (or, for the model formats, the model ``model_builder()`` builds) in ``fmt``."""
    out = Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt in ("json", "yaml"):
        text = config.to_json() if fmt == "json" else config.to_yaml()
        atomic_write_text(out, text + ("\n" if not text.endswith("\n") else ""))
        return f"{fmt.upper()} config ({config.format} v{config.version})"
    if fmt == "csv":
        atomic_write_text(out, layer_table(table, config).to_csv(index=False))
        return "per-layer table (CSV)"
    if fmt in ("nncf", "inc"):
        from autocompress import peer
        from autocompress.utils import atomic_write_json

        recipe = (peer.nncf_recipe if fmt == "nncf" else peer.inc_recipe)(table, config)
        atomic_write_json(out, recipe)
        tool = "NNCF" if fmt == "nncf" else "Intel Neural Compressor"
        cannot = f"; {len(recipe['notes'])} notes on what {tool} cannot take as searched (in the file)" \
            if recipe["notes"] else ""
        return f"{tool} recipe for the float structure (autocompress.peer){cannot}"
    model = model_builder()
    if fmt == "onnx":
        from autocompress.onnx_export import export_onnx

        return export_onnx(model, torch.zeros((1, *table.input_shape)), out).summary()
    if fmt == "ort-overrides":
        from autocompress.onnx_export import export_ort_overrides

        graph, notes = export_ort_overrides(model, torch.zeros((1, *table.input_shape)), out)
        cannot = f"; {len(notes)} notes on what onnxruntime cannot take as the model has it (in the file)" if notes else ""
        return (f"onnxruntime quantize_static recipe (nodes to quantise, TensorQuantOverrides) for the float graph "
                f"{graph.name}{cannot}")
    return save_model(model, torch.zeros((1, *table.input_shape)), out)
