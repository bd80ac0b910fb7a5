"""Architecture changes: depth (drop residual blocks). Width is a multiplier on every channel
group's kept channels, applied by the pruner (see :func:`autocompress.config.effective_ratios`)."""
from __future__ import annotations

from torch import nn

from autocompress.config import CompressionConfig, check_blocks
from autocompress.graph import LayerTable

__all__ = ["drop_blocks"]


def drop_blocks(model: nn.Module, table: LayerTable, config: CompressionConfig) -> nn.Module:
    """Replace each block the config drops by the identity (its skip connection), in place."""
    for name in check_blocks(table, config):
        model.set_submodule(name, nn.Identity())
    return model
