"""Predict a config's screened accuracy from the sensitivity table, without building it.

Each param's value contributes the KL divergence it caused alone (above the reference config,
every param at its least-compressing value); contributions add up per knob, each knob's sum
weighted by a scale (1 at first), into a total KL ``K``. The accuracy drop is the saturating map

    drop = cap * (1 - exp(-c * K))       cap = points between the baseline and chance

with ``c`` fitted first to the sensitivity rows themselves (single-value (KL, drop) pairs) and
refitted online, with the per-knob scales, from the candidates measured (:meth:`update`).
KL rather than the rows' accuracy drops: at 256 images a drop moves in steps of 0.4 points
and the small ones, which add up in a real config, read as 0.
"""
from __future__ import annotations

import numpy as np

from autocompress.space import Param

__all__ = ["AccuracyPredictor"]

_C_GRID = np.logspace(-3, 3.5, 521)
_PRIOR_WEIGHT = 2.0  # the sensitivity rows together weigh as much as this many measured trials


class AccuracyPredictor:
    """``predict_drop`` / ``predict_accuracy`` for many value dicts at once; ``update`` learns."""

    def __init__(self, sens, params: list[Param], *, baseline_accuracy: float | None = None,
                 num_classes: int = 10):
        self.sens = sens
        self.params = [p for p in params if not sens.lookup(p.name).empty]
        self.baseline = float(sens.baseline_accuracy if baseline_accuracy is None else baseline_accuracy)
        self.cap = max(1e-6, 100.0 * (self.baseline - 1.0 / max(2, num_classes)))
        ref = sens.reference
        self.ref_kl = float(ref["kl"])
        self.knobs = sorted({p.knob for p in self.params})
        self._grid, self._dkl = [], []
        for p in self.params:
            rows = sens.lookup(p.name)
            self._grid.append(rows["value"].to_numpy(float))
            self._dkl.append(np.maximum(0.0, rows["kl"].to_numpy(float) - self.ref_kl))
        self._knob_of = np.array([self.knobs.index(p.knob) for p in self.params], dtype=int)
        self.scales = np.ones(len(self.knobs))
        others = sens.frame[sens.frame["param"] != ""]
        # the prior: single-value rows, whose drop is against the calibration subset's baseline
        self._prior_k = others["kl"].to_numpy(float)
        self._prior_y = others["accuracy_drop"].to_numpy(float)
        self._X: list[np.ndarray] = []  # per measured config: its per-knob KL sums
        self._y: list[float] = []  # and its measured drop, points
        self.c = self._fit_c(np.zeros((0, len(self.knobs))), np.zeros(0))

    # -- features ---------------------------------------------------------------------------------
    def knob_kl(self, values_list: list[dict]) -> np.ndarray:
        """Per config and knob: the KL its params' values add above the reference config."""
        n = len(values_list)
        out = np.zeros((n, len(self.knobs)))
        for j, p in enumerate(self.params):
            grid, dkl = self._grid[j], self._dkl[j]
            default = p.choices[0] if p.categorical else p.low  # what space.config takes for it
            v = np.array([float(d.get(p.name, default)) for d in values_list])
            idx = np.abs(v[:, None] - grid[None, :]).argmin(1)  # nearest measured value (ranges)
            out[:, self._knob_of[j]] += dkl[idx]
        return out

    def total_kl(self, values_list: list[dict]) -> np.ndarray:
        return self.ref_kl + self.knob_kl(values_list) @ self.scales

    def _map(self, k: np.ndarray, c: float | np.ndarray) -> np.ndarray:
        return self.cap * (1.0 - np.exp(-np.multiply.outer(c, k)))

    # -- prediction -------------------------------------------------------------------------------
    def predict_drop(self, values_list: list[dict]) -> np.ndarray:
        """Predicted screened accuracy drop, percentage points, per value dict."""
        if not values_list:
            return np.zeros(0)
        return self._map(self.total_kl(values_list), self.c)

    def predict_accuracy(self, values_list: list[dict]) -> np.ndarray:
        return self.baseline - self.predict_drop(values_list) / 100.0

    # -- learning ---------------------------------------------------------------------------------
    def update(self, values: dict, measured_accuracy: float) -> None:
        """Learn from one measured (screened) accuracy: refit ``c`` and, from a handful of
        points on, the per-knob scales (ridge towards 1, so a few points move them little)."""
        self._X.append(self.knob_kl([values])[0])
        self._y.append(100.0 * (self.baseline - float(measured_accuracy)))
        X, y = np.array(self._X), np.array(self._y)
        self.c = self._fit_c(X, y)
        if len(y) >= 4:
            for _ in range(2):
                self.scales = self._fit_scales(X, y)
                self.c = self._fit_c(X, y)

    def _fit_c(self, X: np.ndarray, y: np.ndarray) -> float:
        """Least squares over a log grid of c: measured configs, plus the sensitivity rows at
        a fixed total weight (they keep c sane while few configs are measured)."""
        err = np.zeros(len(_C_GRID))
        if len(self._prior_k):
            pred = self._map(self._prior_k, _C_GRID)
            err += _PRIOR_WEIGHT * ((pred - self._prior_y) ** 2).mean(1)
        if len(y):
            pred = self._map(self.ref_kl + X @ self.scales, _C_GRID)
            err += ((pred - y) ** 2).sum(1)
        return float(_C_GRID[int(err.argmin())])

    def _fit_scales(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        # the map inverted: the total KL each measured drop implies, linear in the scales
        frac = np.clip(y / self.cap, 0.0, 0.98)
        target = -np.log1p(-frac) / self.c - self.ref_kl
        used = X.any(0)
        A = X[:, used]
        gram = A.T @ A
        lam = max(1e-12, float(np.trace(gram)) / max(1, used.sum())) * 2.0 / max(1, len(y)) ** 0.5
        s = np.linalg.solve(gram + lam * np.eye(used.sum()), A.T @ target + lam * np.ones(used.sum()))
        out = self.scales.copy()
        out[used] = np.clip(s, 0.05, 20.0)
        return out

    @property
    def observations(self) -> int:
        return len(self._y)
