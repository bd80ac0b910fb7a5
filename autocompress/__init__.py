"""autocompress: find the best way to compress a neural network for a given piece of hardware.

The public names are imported on first use (PEP 562), so ``autocompress --help`` and the
commands that need no model do not pay for torch, Ray and pandas."""
from __future__ import annotations

import sys
import types
from importlib import import_module

from autocompress._errors import NothingFeasible, UserError

try:  # the installed distribution's version (pyproject.toml), as `autocompress --version` prints it
    from importlib.metadata import version as _dist_version

    __version__ = _dist_version("autocompress")
except Exception:  # noqa: BLE001 - run from a tree that is not installed
    __version__ = "0.1.0"

_WHERE = {
    **{name: "autocompress.api" for name in ("search", "load", "finetune", "compress", "profile", "load_target", "calibrate",
                                             "export_onnx", "prepare", "SearchResult", "Prepared", "Constraints",
                                             "Recovery")},
    "CompressionConfig": "autocompress.config", "LayerConfig": "autocompress.config",
    "LayerTable": "autocompress.graph", "trace": "autocompress.graph",
    **{name: "autocompress.hardware" for name in ("HardwareProfile", "MeasuredTarget", "list_profiles", "load_profile")},
}

__all__ = ["search", "load", "finetune", "compress", "profile", "load_target", "calibrate", "export_onnx", "prepare", "SearchResult", "Prepared",
           "Constraints", "Recovery", "CompressionConfig", "LayerConfig", "LayerTable", "trace",
           "HardwareProfile", "MeasuredTarget", "list_profiles", "load_profile", "UserError", "NothingFeasible"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    if not name.startswith("_"):  # a submodule (autocompress.api, .finish, ...), as before the lazy names
        from importlib.util import find_spec

        if find_spec(f"{__name__}.{name}") is not None:
            return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``autocompress.search`` and ``autocompress.compress`` are the API functions, although
    subpackages of the same names exist: importing a subpackage must not rebind them."""

    def __setattr__(self, name, value):
        if name in ("search", "compress") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
