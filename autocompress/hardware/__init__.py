"""Hardware targets: profile schema and loader, and the analytic cost model."""
from autocompress.hardware.cost import Cost, CostModel
from autocompress.hardware.profile import HardwareProfile, list_profiles, load_profile

__all__ = ["Cost", "CostModel", "HardwareProfile", "list_profiles", "load_profile"]
