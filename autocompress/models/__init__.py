"""Built-in model zoo and resolution of ``name``, ``module.path:callable`` and weight files."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autocompress._errors import UserError, unknown_name
from autocompress.models._mobilenet import MobileNetV2, mobilenet_v2
from autocompress.models._resnet import ResNet, resnet18, resnet34, resnet50
from autocompress.models._vgg import VGG, vgg11_bn

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "vgg11_bn": vgg11_bn,
}

#: inputs of this many pixels or fewer get the CIFAR stem (see DESIGN.md, "Meaning of resnet18")
SMALL_INPUT_PX = 64

__all__ = ["ZOO", "build_model", "load_weights", "MobileNetV2", "ResNet", "VGG", "default_stem"]


def default_stem(input_shape: tuple[int, ...]) -> str:
    return "cifar" if max(input_shape[-2:]) <= SMALL_INPUT_PX else "imagenet"


def build_model(spec: str, *, num_classes: int, input_shape: tuple[int, ...],
                stem: str | None = None, width_mult: float = 1.0) -> tuple[nn.Module, str]:
    """Build a model from a zoo name or ``module.path:callable``; returns (model, description).

    Zoo models get ``num_classes``, the input's channel count and a stem chosen from the input
    size (or forced by ``stem``). A user callable gets ``num_classes`` if it accepts it.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
            raise UserError(f"cannot import model module {module_name!r}: {e}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise UserError(f"module {module_name!r} has no callable {attr!r}")
        kwargs = {}
        try:
            if "num_classes" in inspect.signature(factory).parameters:
                kwargs["num_classes"] = num_classes
        except (TypeError, ValueError):
            pass
        try:
            model = factory(**kwargs)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{spec} raised while building the model: {e}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        return model, f"{spec} (user model)"
    if spec not in ZOO:
        raise unknown_name("model", spec, list(ZOO))
    stem = stem or default_stem(input_shape)
    model = ZOO[spec](num_classes=num_classes, stem=stem, in_channels=input_shape[0],
                      width_mult=width_mult)
    px = "x".join(map(str, input_shape[-2:]))
    return model, f"{spec} ({stem} stem for {px} input, {num_classes} classes)"


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (a torchvision checkpoint, or a dict with 'state_dict'/'model')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read weights file {str(path)!r}: {e}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise UserError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        what = "missing from the file" if missing else "not in the model"
        raise UserError(f"weights in {path.name} do not match the model: key {first!r} is {what} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise UserError(f"weights in {path.name} do not match the model: {k!r} has shape "
                            f"{tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model "
                            "(check --num-classes / the stem / the input shape)")
    model.load_state_dict(state)
