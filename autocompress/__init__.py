"""autocompress: find the best way to compress a neural network for a given piece of hardware."""
from autocompress._errors import NothingFeasible, UserError
from autocompress.api import (Constraints, Prepared, Recovery, SearchResult, calibrate, compress, export_onnx,
                              finetune, load_target, prepare, profile, search)
from autocompress.config import CompressionConfig, LayerConfig
from autocompress.graph import LayerTable, trace
from autocompress.hardware import HardwareProfile, MeasuredTarget, list_profiles, load_profile

__version__ = "0.1.0"

__all__ = ["search", "finetune", "compress", "profile", "load_target", "calibrate", "export_onnx", "prepare", "SearchResult", "Prepared",
           "Constraints", "Recovery", "CompressionConfig", "LayerConfig", "LayerTable", "trace",
           "HardwareProfile", "MeasuredTarget", "list_profiles", "load_profile", "UserError", "NothingFeasible"]
