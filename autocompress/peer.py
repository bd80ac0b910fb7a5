"""Recipes for the tools people hand a compressed model to: NNCF and Intel Neural Compressor.

Neither tool prunes structurally, lowers ranks or drops blocks, and both quantise in fewer ways
than a search chooses, so a recipe has two halves: the **structure** (the searched model with its
pruned channels, factorised layers and dropped blocks, in float: :func:`float_structure`) and
what the tool should **quantise** on it, layer by layer, in the tool's own terms. What the tool
cannot take as searched is said in the recipe's ``notes`` (e.g. NNCF's post-training quantisation
is 8-bit only: a 4-bit conv goes to NNCF as int8).

* ``nncf``: ``nncf.quantize`` (int8 per channel) with an ``IgnoredScope`` of the layers the search
  kept in float; NNCF names a layer's op ``<module path with "/">/<function>/<call>``, so the
  scope holds anchored patterns of the module paths (:func:`nncf_quantize` applies it).
* ``inc``: Intel Neural Compressor 3.x's per-op dicts: ``static`` for ``StaticQuantConfig.from_dict``
  (int8, the float layers kept ``fp32`` by exact module name) and ``weight_only`` for
  ``RTNConfig.from_dict`` (each Linear at its searched bits, keys anchored regexes: INC matches
  them with ``re.match``). INC weight-only never touches convolutions.

Checked with NNCF 3.4 and neural-compressor-pt 3.10 (``tests/test_peer.py`` feeds both).
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from autocompress.config import FLOAT_BITS, CompressionConfig, resolve
from autocompress.graph import LayerTable

__all__ = ["float_structure", "nncf_recipe", "inc_recipe", "nncf_quantize", "inc_static", "inc_weight_only",
           "NNCF_RECIPE", "INC_RECIPE"]

NNCF_RECIPE = "autocompress nncf v1"
INC_RECIPE = "autocompress inc v1"
_STRUCTURE = ("the searched structure in float: autocompress.load(RUN).apply(TRIAL, structure_only=True), or "
              "autocompress.compress(model, autocompress.peer.float_structure(config))")


def float_structure(config: CompressionConfig) -> CompressionConfig:
    """``config`` with every layer's bits removed: pruning, ranks, width and dropped blocks only."""
    layers = {name: lc.model_copy(update={"wbits": None, "abits": None}) for name, lc in config.layers.items()}
    return config.model_copy(update={"layers": layers})


def _layers(table: LayerTable, config: CompressionConfig) -> list[tuple[str, str, int | None, int | None]]:
    """(name, kind, weight bits or None for float, activation bits or None) of the layers left."""
    r = resolve(table, config)
    out = []
    for i, layer in enumerate(table.layers):
        if not r.present[i]:
            continue
        w = None if r.wbits[i] >= FLOAT_BITS else int(r.wbits[i])
        a = None if r.abits[i] >= FLOAT_BITS else int(r.abits[i])
        out.append((layer.name, layer.kind, w, a))
    return out


def _dropped(table: LayerTable, config: CompressionConfig) -> list[str]:
    r = resolve(table, config)
    return [layer.name for i, layer in enumerate(table.layers) if not r.present[i]]


def _structure_notes(table: LayerTable, config: CompressionConfig, tool: str) -> list[str]:
    notes = []
    if any(lc.prune > 0 for lc in config.layers.values()) or config.arch.width < 1.0:
        notes.append(f"pruned channels are in the structure (the model {tool} is given), not in this recipe")
    ranked = [n for n, lc in config.layers.items() if lc.rank is not None]
    if ranked:
        notes.append(f"low-rank layers ({', '.join(ranked)}) are two layers each in the structure; both "
                     f"get the recipe's setting for the layer")
    if _dropped(table, config):
        notes.append(f"dropped blocks are absent from the structure: {', '.join(config.arch.drop)}")
    return notes


def nncf_recipe(table: LayerTable, config: CompressionConfig) -> dict:
    """What NNCF 3.x's ``nncf.quantize`` should do to the float structure of ``config``."""
    layers, ignored, notes = {}, [], []
    for name, kind, w, a in _layers(table, config):
        if w is None:
            layers[name] = {"searched_weight_bits": None, "nncf": "float (ignored scope)"}
            ignored.append(re.escape(name.replace(".", "/")) + "/")
            continue
        layers[name] = {"searched_weight_bits": w, "searched_activation_bits": a, "nncf": "int8 per channel"}
        if w != 8:
            notes.append(f"{name}: {w}-bit weights go to NNCF as int8 (its post-training quantisation is 8-bit only)")
    notes += _structure_notes(table, config, "NNCF")
    return {"format": NNCF_RECIPE, "tool": "nncf>=3.4 (torch backend)", "model": _STRUCTURE,
            "quantize": {"ignored_scope": {"patterns": ignored, "validate": True}},
            "usage": "nncf.quantize(model, nncf.Dataset(loader), ignored_scope=nncf.IgnoredScope(**recipe['quantize']"
                     "['ignored_scope'])); autocompress.peer.nncf_quantize(model, recipe, batches) does it",
            "layers": layers, "notes": notes}


def inc_recipe(table: LayerTable, config: CompressionConfig) -> dict:
    """Intel Neural Compressor 3.x per-op configs for the float structure of ``config``."""
    fp32 = {"w_dtype": "fp32", "act_dtype": "fp32"}
    static_local, rtn_local, layers, notes = {}, {}, {}, []
    for name, kind, w, a in _layers(table, config):
        if w is None:
            static_local[name] = dict(fp32)
            layers[name] = {"searched_weight_bits": None, "static": "fp32", "weight_only": "fp32"}
            continue
        layers[name] = {"searched_weight_bits": w, "searched_activation_bits": a, "static": "int8"}
        if w != 8:
            notes.append(f"{name}: {w}-bit weights are int8 in static quantisation (INC's static path is int8 only)")
        if kind == "linear" and w <= 8:
            # anchored (INC matches with re.match, a prefix); "(.N)?": both factors of a low-rank layer
            rtn_local[re.escape(name) + r"(\.\d+)?$"] = {"bits": w, "group_size": -1, "use_layer_wise": False}
            layers[name]["weight_only"] = f"int{w} (RTN)"
        else:
            layers[name]["weight_only"] = "fp32 (INC's weight-only path takes Linear layers only)"
    notes += _structure_notes(table, config, "INC")
    return {"format": INC_RECIPE, "tool": "neural-compressor-pt>=3.10", "model": _STRUCTURE,
            "static": {"global": {}, "local": static_local},
            "weight_only": {"global": {"dtype": "fp32", "use_layer_wise": False}, "local": rtn_local},
            "usage": "StaticQuantConfig.from_dict(recipe['static']) for int8 static quantisation (prepare, "
                     "calibrate, convert); RTNConfig.from_dict(recipe['weight_only']) for the Linear layers' "
                     "searched bits (autocompress.peer.inc_weight_only does it); from_json_file is broken in INC "
                     "3.10: use from_dict(json.load(f))",
            "layers": layers, "notes": notes}


def _inputs(batches: Iterable) -> list:
    return [b[0] if isinstance(b, (tuple, list)) else b for b in batches]


def nncf_quantize(model: nn.Module, recipe: dict, batches: Iterable, *, subset_size: int = 300) -> nn.Module:
    """``model`` (the float structure) quantised by NNCF as ``recipe`` says; ``batches``: input
    tensors or (input, label) pairs for calibration."""
    import nncf

    inputs = _inputs(batches)
    return nncf.quantize(model.eval(), nncf.Dataset(inputs), subset_size=min(subset_size, len(inputs)),
                         ignored_scope=nncf.IgnoredScope(**recipe["quantize"]["ignored_scope"]))


def inc_weight_only(model: nn.Module, recipe: dict) -> nn.Module:
    """``model`` (the float structure) with INC's round-to-nearest weight-only quantisation at each
    Linear layer's searched bits."""
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    config = RTNConfig.from_dict(recipe["weight_only"])
    return convert(prepare(model.eval(), config))


def inc_static(model: nn.Module, recipe: dict, batches: Iterable) -> nn.Module:
    """``model`` (the float structure) through INC's static int8 quantisation (the PT2E path, with
    a dynamic batch size), the recipe's float layers kept fp32; ``batches`` calibrate it."""
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    inputs = _inputs(batches)
    example = inputs[0] if inputs[0].shape[0] > 1 else torch.cat([inputs[0]] * 2)  # a batch of 1 specialises
    exported = export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    prepared = prepare(exported, StaticQuantConfig.from_dict(recipe["static"]))
    for x in inputs:
        prepared(x)
    return convert(prepared)
