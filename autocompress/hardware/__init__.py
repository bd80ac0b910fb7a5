"""Hardware targets: profile schema and loader, the analytic cost model, measured targets."""
from autocompress.hardware.cost import Cost, CostModel
from autocompress.hardware.measure import MeasuredTarget, is_measured, parse_measured
from autocompress.hardware.profile import HardwareProfile, list_profiles, load_profile

__all__ = ["Cost", "CostModel", "HardwareProfile", "MeasuredTarget", "list_profiles", "load_profile", "load_target"]


def load_target(target) -> HardwareProfile | MeasuredTarget:
    """A measured target (``cpu-local[:options]``, ``cuda-local``), a shipped profile by name, or
    a profile YAML by path."""
    if isinstance(target, (HardwareProfile, MeasuredTarget)):
        return target
    if is_measured(str(target)):
        return parse_measured(str(target))
    return load_profile(target)
