"""Hardware targets: the Target interface, profile schema and loader (with importers for SCALE-Sim
and ZigZag files), the analytic cost model, measured targets."""
from autocompress.hardware.cost import Cost, CostModel
from autocompress.hardware.measure import MeasuredTarget, is_measured, parse_measured
from autocompress.hardware.profile import HardwareProfile, list_profiles, load_profile
from autocompress.hardware.target import Target

__all__ = ["Cost", "CostModel", "HardwareProfile", "MeasuredTarget", "Target", "list_profiles", "load_profile",
           "load_target"]


def load_target(target) -> Target:
    """A measured target (``cpu-local[:options]``, ``cuda-local``), a shipped profile by name, a
    profile YAML by path, or another tool's file: ``scalesim:array.cfg``, ``zigzag:accelerator.yaml``."""
    if isinstance(target, Target):
        return target
    if is_measured(str(target)):
        return parse_measured(str(target))
    return load_profile(target)
