"""LayerTable: the model traced once on an example input; the currency between the parts.

Every conv / linear layer gets its shapes, MACs and parameter count from a real forward pass
(hooks), and the channel groups come from Torch-Pruning's dependency graph: layers whose output
channels must be pruned together (a residual stage, a depthwise conv and its producer) share a
group. Compression, the cost model and the report all read this table, so the cost of a config
is computed from the table and the config alone, without building a model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from autocompress._errors import UserError

__all__ = ["Layer", "ChannelGroup", "LayerTable", "trace"]


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]
    macs: int  # per sample
    weight_params: int
    bias_params: int
    out_group: str | None  # channel group of the outputs (None: not prunable, e.g. the classifier)
    in_group: str | None  # channel group of the inputs (None: the network input)
    in_per_channel: int = 1  # input features per input channel (a linear layer after a flatten)

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    @property
    def spatial(self) -> int:
        """Output positions per sample: one GEMM row each (im2col)."""
        return math.prod(self.out_shape[1:]) if self.kind == "conv" else math.prod(self.out_shape[:-1])


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # the first layer (in execution order) that produces these channels
    channels: int
    producers: tuple[str, ...]  # layers whose output channels are these
    consumers: tuple[str, ...]  # layers that read them
    extra_params_per_channel: int = 0  # e.g. batch-norm weight and bias


@dataclass
class LayerTable:
    layers: list[Layer]
    groups: dict[str, ChannelGroup]
    input_shape: tuple[int, ...]
    total_params: int  # every parameter of the model, not only conv / linear
    other_params: int = 0  # parameters outside conv / linear layers and outside any group
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def group_of(self, layer_name: str) -> ChannelGroup | None:
        g = self[layer_name].out_group
        return self.groups[g] if g else None

    def to_frame(self):
        import pandas as pd

        rows = [{**asdict(layer), "params": layer.params} for layer in self.layers]
        return pd.DataFrame(rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_by_name", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()


def _channel_groups(model: nn.Module, example: torch.Tensor, names: dict[nn.Module, str],
                    output_layer: nn.Module) -> tuple[dict[str, ChannelGroup], dict[str, str], dict[str, str], int]:
    """Channel groups from Torch-Pruning's dependency graph.

    Returns the groups, layer -> output group, layer -> input group, and the number of
    parameters of non-conv/linear modules covered by some group.
    """
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    groups: dict[str, ChannelGroup] = {}
    out_group: dict[str, str] = {}
    in_group: dict[str, str] = {}
    covered = 0
    order = {n: i for i, n in enumerate(names.values())}
    for g in dg.get_all_groups(ignored_layers=[output_layer], root_module_types=(nn.Conv2d, nn.Linear)):
        producers, consumers, extras = set(), set(), set()
        for dep, _ in g:
            mod = dep.target.module
            is_out = "out_channels" in str(dep.handler)
            if mod in names:
                (producers if is_out else consumers).add(names[mod])
            elif is_out and any(True for _ in mod.parameters(recurse=False)):
                extras.add(mod)
        if not producers:
            continue
        lead = min(producers, key=order.__getitem__)
        channels = _out_channels(next(m for m, n in names.items() if n == lead))
        extra = sum(p.numel() for m in extras for p in m.parameters(recurse=False))
        covered += extra
        # a depthwise conv is both producer and consumer of its group
        groups[lead] = ChannelGroup(lead, channels, tuple(sorted(producers, key=order.__getitem__)),
                                    tuple(sorted(consumers, key=order.__getitem__)), extra // max(channels, 1))
        for p in producers:
            out_group[p] = lead
        for c in consumers:
            in_group[c] = lead
    return groups, out_group, in_group, covered


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def trace(model: nn.Module, example: torch.Tensor) -> LayerTable:
    """Trace ``model`` on ``example`` (a batch of one) and build its LayerTable."""
    if example.shape[0] != 1:
        example = example[:1]
    was_training = model.training
    model.eval()
    records: dict[str, tuple] = {}
    order: list[nn.Module] = []
    handles = []
    names = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            names[mod] = name

            def hook(m, inputs, output, name=name):
                if name not in records:
                    records[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
                    order.append(m)
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:  # noqa: BLE001 - the model is the user's; say what failed
        raise UserError(f"the model's forward pass fails on an input of shape "
                        f"{tuple(example.shape)}: {type(e).__name__}: {e}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise UserError("the model has no Conv2d or Linear layer that autocompress can compress")
    exec_names = {m: names[m] for m in order}  # execution order
    groups, out_group, in_group, covered = _channel_groups(model, example, exec_names, order[-1])

    layers = []
    for mod in order:
        name = names[mod]
        in_shape, out_shape = records[name]
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            cin, cout, groups_ = mod.in_channels, mod.out_channels, mod.groups
            macs = math.prod(out_shape[1:]) * cout * (cin // groups_) * kh * kw
            kind, kernel, stride = "conv", (kh, kw), tuple(mod.stride)
        else:
            cin, cout, groups_ = mod.in_features, mod.out_features, 1
            macs = math.prod(out_shape[:-1]) * cin * cout
            kind, kernel, stride = "linear", (1, 1), (1, 1)
        ig = in_group.get(name)
        if isinstance(mod, nn.Conv2d) and 1 < mod.groups == mod.in_channels:
            ig = out_group.get(name)  # depthwise: its inputs are its outputs' channels
        per_ch = cin // groups[ig].channels if ig and kind == "linear" else 1
        layers.append(Layer(
            name=name, kind=kind, in_channels=cin, out_channels=cout, kernel=kernel, stride=stride,
            groups=groups_, in_shape=in_shape, out_shape=out_shape, macs=int(macs),
            weight_params=mod.weight.numel(),
            bias_params=mod.bias.numel() if mod.bias is not None else 0,
            out_group=out_group.get(name), in_group=ig, in_per_channel=per_ch))
    total = sum(p.numel() for p in model.parameters())
    layer_params = sum(layer.params for layer in layers)
    notes = []
    unused = [n for n in names.values() if n not in records]
    if unused:
        notes.append(f"{len(unused)} layer(s) not reached by the forward pass: {', '.join(unused[:5])}")
    return LayerTable(layers, groups, tuple(example.shape[1:]), total,
                      other_params=total - layer_params - covered, notes=notes)
