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

__all__ = ["Layer", "ChannelGroup", "Block", "LayerTable", "trace", "droppable"]


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
    out_groups: tuple[str, ...]  # channel groups of the outputs, concatenated (empty: not prunable)
    in_groups: tuple[str, ...]  # channel groups of the inputs (empty: the network input)
    in_per_channel: int = 1  # input features per input channel (a linear layer after a flatten)
    batchnorm: str | None = None  # the BatchNorm2d applied directly to this conv's output
    batchnorm_params_per_channel: int = 0

    @property
    def out_group(self) -> str | None:
        """The single group of the outputs (None when there is none, or a concatenation)."""
        return self.out_groups[0] if len(self.out_groups) == 1 else None

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
    extra_modules: tuple[tuple[str, int], ...] = ()  # (module, parameters per channel) making up the above


@dataclass(frozen=True)
class Block:
    """A residual block whose input and output shapes match: the depth knob may drop it (the
    block becomes the identity, its skip connection alone is left)."""

    name: str
    layers: tuple[str, ...]  # conv / linear layers inside it
    params: int  # every parameter inside it


@dataclass
class LayerTable:
    layers: list[Layer]
    groups: dict[str, ChannelGroup]
    input_shape: tuple[int, ...]
    total_params: int  # every parameter of the model, not only conv / linear
    other_params: int = 0  # parameters outside conv / linear layers and outside any group
    notes: list[str] = field(default_factory=list)
    blocks: dict[str, Block] = field(default_factory=dict)  # droppable residual blocks

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}
        self._names = [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def to_frame(self):
        import pandas as pd

        rows = [{**asdict(layer), "params": layer.params} for layer in self.layers]
        return pd.DataFrame(rows)

    # plain data for the run directory: the report costs any trial from it without the model
    def to_dict(self) -> dict:
        return {"layers": [asdict(layer) for layer in self.layers],
                "groups": {k: asdict(g) for k, g in self.groups.items()},
                "input_shape": list(self.input_shape), "total_params": self.total_params,
                "other_params": self.other_params, "notes": list(self.notes),
                "blocks": {k: asdict(b) for k, b in self.blocks.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerTable":
        def tuples(d: dict) -> dict:  # JSON turned the tuples (of tuples) into lists
            return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                    for k, v in d.items()}

        return cls(layers=[Layer(**tuples(x)) for x in data["layers"]],
                   groups={k: ChannelGroup(**tuples(g)) for k, g in data["groups"].items()},
                   input_shape=tuple(data["input_shape"]), total_params=data["total_params"],
                   other_params=data.get("other_params", 0), notes=list(data.get("notes", [])),
                   blocks={k: Block(**tuples(b)) for k, b in data.get("blocks", {}).items()})

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_by_name", None)
        state.pop("_names", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()


def _channel_groups(model: nn.Module, example: torch.Tensor, names: dict[nn.Module, str],
                    output_layer: nn.Module):
    """Channel groups from Torch-Pruning's dependency graph.

    Returns the groups, layer -> output groups, layer -> input groups (several where channels
    are concatenated), and the number of parameters of non-conv/linear modules in some group.
    """
    import torch_pruning as tp

    all_names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    groups: dict[str, ChannelGroup] = {}
    out_groups: dict[str, list[str]] = {}
    in_groups: dict[str, list[str]] = {}
    covered = 0.0
    order = {n: i for i, n in enumerate(names.values())}
    done: set[str] = set()
    # every layer, in execution order, roots the group of its output channels unless an earlier
    # layer's group already holds them; built with the same call the pruner uses
    for mod, name in names.items():
        if mod is output_layer or name in done or (isinstance(mod, nn.Conv2d) and 1 < mod.groups == mod.in_channels):
            continue
        fn = tp.prune_conv_out_channels if isinstance(mod, nn.Conv2d) else tp.prune_linear_out_channels
        g = dg.get_pruning_group(mod, fn, idxs=list(range(_out_channels(mod))))
        producers, consumers, extra, extra_modules = {}, set(), 0.0, []
        for dep, idxs in g:
            target = dep.target.module
            is_out = "out_channels" in str(dep.handler)
            if target in names:
                if is_out:
                    producers[names[target]] = len(idxs)
                else:
                    consumers.add(names[target])
            elif is_out:
                params = list(target.parameters(recurse=False))
                if params:  # e.g. batch norm: its parameters per channel, for this group's channels
                    per_channel = sum(p.numel() for p in params) / params[0].shape[0]
                    extra += per_channel * len(idxs)
                    extra_modules.append((all_names.get(target, ""), round(per_channel * len(idxs))))
        done.update(producers)
        if not producers or names[output_layer] in producers:
            continue  # channels that are (or are added to) the model's outputs stay
        lead = min(producers, key=order.__getitem__)
        channels = producers[lead]
        covered += extra
        groups[lead] = ChannelGroup(lead, channels, tuple(sorted(producers, key=order.__getitem__)),
                                    tuple(sorted(consumers, key=order.__getitem__)), round(extra / channels),
                                    tuple((m, round(n / channels)) for m, n in extra_modules))
        for p in producers:
            out_groups.setdefault(p, []).append(lead)
        for c in consumers:
            in_groups.setdefault(c, []).append(lead)
    return groups, out_groups, in_groups, int(round(covered))


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _ordered(names: list[str], channels: int, groups: dict[str, ChannelGroup]) -> tuple[str, ...]:
    """The groups, in order, if their channels add up to the layer's; else none (unprunable)."""
    names = list(dict.fromkeys(names))
    if names and sum(groups[g].channels for g in names) == channels:
        return tuple(names)
    return ()


def droppable(module: nn.Module) -> bool:
    """A residual block that can become the identity: torchvision-style ResNet blocks without a
    downsample, MobileNetV2 inverted residuals with their skip connection, or any module that
    says so with ``autocompress_droppable = True`` (its input and output shapes must match)."""
    flag = getattr(module, "autocompress_droppable", None)
    if flag is not None:
        return bool(flag)
    kind = type(module).__name__
    if kind in ("BasicBlock", "Bottleneck"):
        return getattr(module, "downsample", "missing") is None
    return kind == "InvertedResidual" and getattr(module, "use_res_connect", False) is True


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
    block_shapes: dict[str, tuple] = {}
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # conv outputs, kept alive so ids stay unique
    batchnorms: dict[str, str] = {}  # conv -> the batch norm reading its output
    for name, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            def bn_hook(m, inputs, output, name=name):
                producer = outputs.get(id(inputs[0]))
                if producer is not None and producer[1] is inputs[0]:
                    batchnorms.setdefault(producer[0], name)
            handles.append(mod.register_forward_hook(bn_hook))
        if name and droppable(mod):
            def block_hook(m, inputs, output, name=name):
                block_shapes.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))
            handles.append(mod.register_forward_hook(block_hook))
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            names[mod] = name

            def hook(m, inputs, output, name=name):
                if name not in records:
                    records[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
                    order.append(m)
                    outputs[id(output)] = (name, output)
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
    groups, out_groups, in_groups, covered = _channel_groups(model, example, exec_names, order[-1])

    modules = dict(model.named_modules())
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
        bn = batchnorms.get(name) if kind == "conv" else None
        bn_params = sum(p.numel() for p in modules[bn].parameters()) // cout if bn else 0
        og = _ordered(out_groups.get(name, []), cout, groups)
        ig = _ordered(in_groups.get(name, []), cin, groups)
        if isinstance(mod, nn.Conv2d) and 1 < mod.groups == mod.in_channels:
            ig = og  # depthwise: its inputs are its outputs' channels
        per_ch = 1
        if kind == "linear" and ig:  # a linear layer after a flatten: features per channel
            per_ch = cin // sum(groups[g].channels for g in ig)
        if ig and sum(groups[g].channels for g in ig) * per_ch != cin:
            ig = ()  # a mapping we cannot follow: treat the inputs as fixed
        layers.append(Layer(
            name=name, kind=kind, in_channels=cin, out_channels=cout, kernel=kernel, stride=stride,
            groups=groups_, in_shape=in_shape, out_shape=out_shape, macs=int(macs),
            weight_params=mod.weight.numel(),
            bias_params=mod.bias.numel() if mod.bias is not None else 0,
            out_groups=og, in_groups=ig, in_per_channel=per_ch, batchnorm=bn,
            batchnorm_params_per_channel=bn_params))
    total = sum(p.numel() for p in model.parameters())
    layer_params = sum(layer.params for layer in layers)
    notes = []
    unused = [n for n in names.values() if n not in records]
    if unused:
        notes.append(f"{len(unused)} layer(s) not reached by the forward pass: {', '.join(unused[:5])}")
    blocks = {}
    for name, (shape_in, shape_out) in block_shapes.items():
        inside = tuple(n for n in records if n.startswith(name + "."))
        if shape_in == shape_out and inside:
            blocks[name] = Block(name, inside, sum(p.numel() for p in modules[name].parameters()))
    return LayerTable(layers, groups, tuple(example.shape[1:]), total,
                      other_params=total - layer_params - covered, notes=notes, blocks=blocks)


def compute_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The conv / linear modules that carry layer ``name``: itself, or its two factors; none
    when the layer's block was dropped."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return []
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return [module]
    return [m for m in module.children() if isinstance(m, (nn.Conv2d, nn.Linear))]
