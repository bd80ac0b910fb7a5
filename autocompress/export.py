"""Getting a chosen candidate out: its config (JSON / YAML), a per-layer table (CSV) and the
compressed model itself (TorchScript, which loads with plain ``torch.jit.load``, or ONNX with
QuantizeLinear / DequantizeLinear, which onnxruntime and TensorRT read)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from autocompress._errors import UserError
from autocompress.config import FLOAT_BITS, CompressionConfig, effective_ratios, resolve
from autocompress.graph import LayerTable
from autocompress.utils import atomic_write_text

FORMATS = ("json", "yaml", "csv", "torch", "onnx")


def layer_table(table: LayerTable, config: CompressionConfig) -> pd.DataFrame:
    """One row per layer: pruning ratio of its output channels (width multiplier included), kept
    channels, bits, rank of a factorised layer, whether its block is dropped, MACs, parameters:
    the table tools that take per-layer settings read."""
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
    return pd.DataFrame(rows)


def save_model(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """TorchScript (loads without autocompress); returns a line saying what was written."""
    model = model.eval()
    try:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(model, example, check_trace=False)
        scripted.save(str(path))
        return f"TorchScript: torch.jit.load({str(path)!r}) loads it without autocompress"
    except Exception as e:  # noqa: BLE001 - a model TorchScript cannot trace: pickle it instead
        torch.save(model, path)
        return (f"pickled module (TorchScript failed: {type(e).__name__}); loading it needs the model's "
                f"code: torch.load({str(path)!r}, weights_only=False)")


def export(config: CompressionConfig, table: LayerTable, fmt: str, out: str | Path, *,
           model_builder=None) -> str:
    """Write ``config`` (or, for ``torch``, the model ``model_builder()`` builds) in ``fmt``."""
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
    model = model_builder()
    if fmt == "onnx":
        from autocompress.onnx_export import export_onnx

        return export_onnx(model, torch.zeros((1, *table.input_shape)), out).summary()
    return save_model(model, torch.zeros((1, *table.input_shape)), out)
