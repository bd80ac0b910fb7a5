"""Structured channel pruning through Torch-Pruning's dependency graph.

Each channel group of the LayerTable loses the channels of lowest group magnitude; the graph
keeps residual adds, concatenations and depthwise convs consistent, so the result is a smaller
model for real (fewer parameters and MACs), not a masked one. Which output channels of each
conv / linear layer survive is recorded on the model (``kept_out_channels``), for the
reconstruction that refits the next layers to the uncompressed model's outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.config import CompressionConfig, effective_ratios, kept_channels
from autocompress.graph import LayerTable


def prune_channels(model: nn.Module, table: LayerTable, config: CompressionConfig,
                   example: torch.Tensor) -> nn.Module:
    """Prune ``model`` in place as ``config`` says; returns it. Sets ``model.kept_out_channels``
    (a plain attribute): conv / linear layer name -> the original indices of its output channels
    left, for every layer pruning touched."""
    import torch_pruning as tp

    ratios = effective_ratios(table, config)
    if not ratios:
        return model
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    names = {m: n for n, m in modules.items()}
    kept = {n: torch.arange(m.weight.shape[0]) for n, m in modules.items()}
    touched: set[str] = set()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1], verbose=False)
    importance = tp.importance.GroupMagnitudeImportance(p=2 if config.importance == "l2" else 1)
    for group_name in table.groups:  # a fixed order, so the result is reproducible
        if group_name not in ratios:
            continue
        present = [p for p in table.groups[group_name].producers if p in modules]
        if not present:  # every producer sits in a dropped block
            continue
        lead = modules[present[0]]
        channels = table.groups[group_name].channels
        keep = kept_channels(channels, ratios[group_name], config.channel_multiple)
        if keep >= channels:
            continue
        fn = tp.prune_conv_out_channels if isinstance(lead, nn.Conv2d) else tp.prune_linear_out_channels
        with torch.no_grad():
            scores = importance(dg.get_pruning_group(lead, fn, idxs=list(range(channels))))
        # stable sort: ties go to the lower index, so the same weights always prune the same way
        order = torch.sort(scores.float(), stable=True).indices
        drop = sorted(order[: channels - keep].tolist())
        group = dg.get_pruning_group(lead, fn, idxs=drop)
        for dep, idxs in group:  # each coupled layer's own output indices (concatenations offset them)
            name = names.get(dep.target.module)
            if name is not None and dg.is_out_channel_pruning_fn(dep.handler):
                gone = torch.tensor([int(getattr(i, "idx", i)) for i in idxs], dtype=torch.long)
                mask = torch.ones(len(kept[name]), dtype=torch.bool)
                mask[gone] = False
                kept[name] = kept[name][mask]
                touched.add(name)
        group.prune()
    model.kept_out_channels = {n: kept[n] for n in sorted(touched)}
    return model
