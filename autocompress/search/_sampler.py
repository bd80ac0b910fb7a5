"""Samplers: propose parameter assignments, learn from results (ask and tell).

One small interface (:class:`Sampler`); one implementation per library. Samplers work on the
flat :class:`~autocompress.space.Param` list of a bound space and know nothing of models.
"""
from __future__ import annotations

import abc
from typing import Any

from autocompress import operators
from autocompress.space import Param


class Sampler(abc.ABC):
    """Ask for a parameter assignment; tell it what that assignment scored."""

    def __init__(self, params: list[Param], directions: list[str], seed: int):
        self.params, self.directions, self.seed = params, directions, seed

    @abc.abstractmethod
    def ask(self) -> tuple[Any, dict[str, float]] | None:
        """Returns a handle for :meth:`tell` and the proposed values, or None when the sampler
        must first hear back about candidates it has handed out (a generation)."""

    @abc.abstractmethod
    def tell(self, handle: Any, values: list[float] | None, constraints: list[float] | None) -> None:
        """``values`` None means the trial failed. Constraints: feasible when all <= 0."""

    @abc.abstractmethod
    def replay(self, values_in: dict[str, float], values: list[float] | None,
               constraints: list[float] | None) -> None:
        """Learn from a trial finished in an earlier run (resume)."""

    @abc.abstractmethod
    def enqueue(self, values: dict[str, float]) -> None:
        """Propose ``values`` among the first trials (a starting point of the search)."""


class OptunaSampler(Sampler):
    """Optuna's NSGA-II (default), TPE or random sampling through ask-and-tell."""

    def __init__(self, params: list[Param], directions: list[str], seed: int, algorithm: str = "nsga2",
                 population_size: int | None = None):
        super().__init__(params, directions, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if algorithm == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size or 16)
        elif algorithm == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        self.study = optuna.create_study(directions=[("maximize" if d == "max" else "minimize") for d in directions],
                                         sampler=sampler)
        self.distributions = {p.name: self._distribution(p) for p in params}

    @staticmethod
    def _distribution(p: Param):
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        if p.categorical:
            return CategoricalDistribution(list(p.choices))
        return FloatDistribution(p.low, p.high, step=p.step)

    def ask(self):
        trial = self.study.ask(self.distributions)
        return trial, dict(trial.params)

    def tell(self, handle, values, constraints):
        import optuna

        if values is None:
            self.study.tell(handle, state=optuna.trial.TrialState.FAIL)
            return
        for i, c in enumerate(constraints or []):
            handle.set_constraint(f"c{i}", float(c))
        self.study.tell(handle, values)

    def enqueue(self, values):
        self.study.enqueue_trial(values)

    def replay(self, values_in, values, constraints):
        import optuna

        params = {k: v for k, v in values_in.items() if k in self.distributions}
        if values is None:
            self.study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL, params=params,
                distributions={k: self.distributions[k] for k in params}))
            return
        self.study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: self.distributions[k] for k in params}, values=values,
            constraints={f"c{i}": float(c) for i, c in enumerate(constraints or [])}))




_BITS = ("wbits", "abits")


def ladder(p: Param) -> list[float]:
    """``p``'s values, least compressing first (a range: its low, middle and high end)."""
    if p.categorical:
        values = list(p.choices)
    else:
        mid = (p.low + p.high) / 2
        if p.step:  # on the range's grid
            mid = p.low + round((mid - p.low) / p.step) * p.step
        values = [p.low, mid, p.high]
    # the operator says which end compresses least (prune, drop: the smallest; bits, rank: the largest)
    return sorted(values, reverse=not operators.get(p.knob).more_is_smaller)


def starting_points(params: list[Param], budget: int) -> list[dict[str, float]]:
    """Where every search starts, at most a third of its budget: the structure left whole with
    the middle, then the lowest bit-widths of the space, then every pruning ratio one step above
    its least (the rest left whole), then the structure-heavy corner: every pruning ratio half-way
    up its ladder with the middle bit-widths. On a trained network without fine-tuning, most
    random candidates of a pruning space lose several points of accuracy; the first three give
    the samplers feasible candidates to improve on from the first generation, the last one the
    structure that targets paying for weight traffic need (with fine-tuning it can recover)."""
    ladders = {p.name: ladder(p) for p in params}

    def point(bits: str, prune_steps: int | str) -> dict[str, float]:
        out = {}
        for p in params:
            steps = ladders[p.name]
            if p.knob in _BITS:
                i = {"whole": 0, "middle": (len(steps) - 1) // 2, "lowest": len(steps) - 1}[bits]
            elif p.knob == "prune":
                i = len(steps) // 2 if prune_steps == "half" else min(prune_steps, len(steps) - 1)
            else:
                i = 0
            out[p.name] = steps[i]
        return out

    least = point("whole", 0)
    points = []
    for candidate in (point("middle", 0), point("lowest", 0), point("whole", 1), point("middle", "half")):
        if candidate != least and candidate not in points:
            points.append(candidate)
    return points[:budget // 3]
