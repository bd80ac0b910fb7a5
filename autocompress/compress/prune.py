"""Structured channel pruning through Torch-Pruning's dependency graph.

Each channel group of the LayerTable loses the channels of lowest group magnitude; the graph
keeps residual adds, concatenations and depthwise convs consistent, so the result is a smaller
model for real (fewer parameters and MACs), not a masked one.
"""
from __future__ import annotations

import torch
from torch import nn

from autocompress.config import CompressionConfig, effective_ratios, kept_channels
from autocompress.graph import LayerTable


def prune_channels(model: nn.Module, table: LayerTable, config: CompressionConfig,
                   example: torch.Tensor) -> nn.Module:
    """Prune ``model`` in place as ``config`` says; returns it."""
    import torch_pruning as tp

    ratios = effective_ratios(table, config)
    if not ratios:
        return model
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
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
        dg.get_pruning_group(lead, fn, idxs=drop).prune()
    return model
