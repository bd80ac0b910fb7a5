"""Pareto set (non-dominated sorting) and hypervolume, both by pymoo."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["pareto_mask", "hypervolume", "to_minimisation"]


def to_minimisation(frame: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """Objective columns as a matrix to minimise (maximised ones negated)."""
    cols = [frame[k].to_numpy(dtype=float) * (-1 if sense == "max" else 1) for k, sense in objectives.items()]
    return np.column_stack(cols) if cols else np.zeros((len(frame), 0))


def pareto_mask(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``F`` (minimisation)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    mask = np.zeros(len(F), dtype=bool)
    if len(F):
        mask[NonDominatedSorting().do(F, only_non_dominated_front=True)] = True
    return mask


def hypervolume(F: np.ndarray, reference_point: np.ndarray) -> float:
    """Hypervolume dominated by ``F`` (minimisation) up to ``reference_point``."""
    from pymoo.indicators.hv import HV

    if not len(F):
        return 0.0
    inside = (F < reference_point).all(axis=1)
    return float(HV(ref_point=reference_point)(F[inside])) if inside.any() else 0.0
