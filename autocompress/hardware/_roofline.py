"""Compute cycles on a roofline: MACs at the peak rate, no mapping losses (an upper bound)."""
from __future__ import annotations


class Roofline:
    def __init__(self, peak_macs_per_cycle: float):
        self.peak = peak_macs_per_cycle

    def cycles(self, m, k, n, groups, macs):
        return macs / self.peak

    def describe(self) -> str:
        return f"roofline at {self.peak:g} MACs per cycle (mapping losses not modeled: an upper bound)"
