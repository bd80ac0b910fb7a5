"""pymoo's NSGA-II and NSGA-III as samplers, through pymoo's ask-and-tell interface.

pymoo works a generation at a time: :meth:`PymooSampler.ask` hands out the current
generation's candidates one by one and returns None while results are still out (Ray Tune
then asks again later); when the whole generation is told, the next one is asked for.
Variables are encoded in [0, 1]: a categorical knob picks the choice the value falls in.
"""
from __future__ import annotations

import numpy as np

from autocompress.search._sampler import Sampler
from autocompress.space import Param

_FAILED = 1e9


class PymooSampler(Sampler):
    def __init__(self, params: list[Param], directions: list[str], seed: int, algorithm: str = "pymoo-nsga2",
                 population_size: int | None = None, n_constraints: int = 1):
        super().__init__(params, directions, seed)
        self.pop_size = population_size or 16
        self.algorithm_name = algorithm
        self.n_constraints = max(1, n_constraints)
        self.algorithm = None
        self.history: list[tuple[np.ndarray, list[float] | None, list[float] | None]] = []  # replayed
        self.generation = None  # the population being evaluated
        self.handed_out = 0
        self.results: dict[int, tuple[list[float] | None, list[float] | None]] = {}
        self.seeds: list[np.ndarray] = []  # starting points, in the first generation

    # -- encoding ---------------------------------------------------------------------------
    def decode(self, x: np.ndarray) -> dict[str, float]:
        values = {}
        for v, p in zip(x, self.params):
            v = float(min(max(v, 0.0), 1.0))
            if p.categorical:
                values[p.name] = p.choices[min(int(v * len(p.choices)), len(p.choices) - 1)]
            else:
                raw = p.low + v * (p.high - p.low)
                if p.step:
                    raw = min(p.high, p.low + round((raw - p.low) / p.step) * p.step)
                values[p.name] = raw
        return values

    def encode(self, values: dict[str, float]) -> np.ndarray:
        x = []
        for p in self.params:
            v = values.get(p.name)
            if p.categorical:
                i = p.choices.index(v) if v in p.choices else 0
                x.append((i + 0.5) / len(p.choices))
            else:
                x.append(0.0 if v is None else (v - p.low) / (p.high - p.low))
        return np.array(x)

    def enqueue(self, values: dict[str, float]) -> None:
        self.seeds.append(self.encode(values))

    # -- pymoo ------------------------------------------------------------------------------
    def _setup(self) -> None:
        from pymoo.core.problem import Problem

        problem = Problem(n_var=len(self.params), n_obj=len(self.directions), n_ieq_constr=self.n_constraints,
                          xl=0.0, xu=1.0)
        sampling = np.array([x for x, _, _ in self.history]) if self.history else None
        if sampling is None and self.seeds:  # the starting points, then uniform random ones
            rng = np.random.default_rng(self.seed)
            rest = rng.random((max(0, self.pop_size - len(self.seeds)), len(self.params)))
            sampling = np.vstack([np.array(self.seeds), rest])
        kwargs = {"sampling": sampling} if sampling is not None else {}
        if self.algorithm_name == "pymoo-nsga3":
            from pymoo.algorithms.moo.nsga3 import NSGA3
            from pymoo.util.ref_dirs import get_reference_directions

            ref_dirs = get_reference_directions("das-dennis", len(self.directions),
                                                n_partitions=max(1, self.pop_size - 1) if len(self.directions) == 2 else 4)
            algo = NSGA3(ref_dirs=ref_dirs, pop_size=max(self.pop_size, len(ref_dirs)), **kwargs)
        else:
            from pymoo.algorithms.moo.nsga2 import NSGA2

            algo = NSGA2(pop_size=self.pop_size, **kwargs)
        algo.setup(problem, termination=("n_gen", 10**9), seed=self.seed, verbose=False)
        self.algorithm = algo
        if self.history:  # resume: the trials already done are the first generation
            pop = algo.ask()
            self._tell_population(pop, [(f, g) for _, f, g in self.history])

    def _objectives(self, values: list[float] | None) -> list[float]:
        if values is None:
            return [_FAILED] * len(self.directions)
        return [(-v if d == "max" else v) for v, d in zip(values, self.directions)]

    def _constraints(self, constraints: list[float] | None, failed: bool) -> list[float]:
        if failed:
            return [_FAILED] * self.n_constraints
        c = list(constraints or [])
        return (c + [-1.0] * self.n_constraints)[: self.n_constraints]

    def _tell_population(self, pop, results) -> None:
        F = np.array([self._objectives(v) for v, _ in results], dtype=float)
        G = np.array([self._constraints(c, v is None) for v, c in results], dtype=float)
        F[~np.isfinite(F)] = _FAILED
        pop.set("F", F, "G", G)
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        Evaluator().eval(StaticProblem(self.algorithm.problem, F=F, G=G), pop)
        self.algorithm.tell(infills=pop)

    def ask(self):
        if self.algorithm is None:
            self._setup()
        if self.generation is None:
            self.generation = self.algorithm.ask()
            self.handed_out = 0
            self.results = {}
        if self.handed_out >= len(self.generation):
            return None  # wait for this generation's results
        i = self.handed_out
        self.handed_out += 1
        return i, self.decode(self.generation.get("X")[i])

    def tell(self, handle, values, constraints) -> None:
        self.results[handle] = (values, constraints)
        if self.generation is not None and len(self.results) == len(self.generation):
            self._tell_population(self.generation, [self.results[i] for i in range(len(self.generation))])
            self.generation = None

    def replay(self, values_in, values, constraints) -> None:
        self.history.append((self.encode(values_in), values, constraints))
