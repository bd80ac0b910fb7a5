"""The searchers by name: ``--algorithm`` picks one (Optuna's samplers, pymoo's algorithms and
the sensitivity-guided surrogate), each a :class:`~autocompress.search._sampler.Sampler`."""
from __future__ import annotations

from autocompress._errors import unknown_name
from autocompress.search._sampler import OptunaSampler, Sampler
from autocompress.space import Param

__all__ = ["ALGORITHMS", "make_sampler"]


def _pymoo(*args, **kwargs):
    from autocompress.search._pymoo import PymooSampler
    return PymooSampler(*args, **kwargs)


def _surrogate(*args, **kwargs):
    from autocompress.search._surrogate import SurrogateSampler
    return SurrogateSampler(*args, **kwargs)


#: --algorithm names: Optuna's samplers, pymoo's algorithms and the sensitivity-guided surrogate
ALGORITHMS = {"nsga2": OptunaSampler, "tpe": OptunaSampler, "random": OptunaSampler,
              "pymoo-nsga2": _pymoo, "pymoo-nsga3": _pymoo, "surrogate": _surrogate}


def make_sampler(algorithm: str, params: list[Param], directions: list[str], seed: int,
                 budget: int, n_constraints: int = 1, guide=None) -> Sampler:
    """``guide``: the surrogate sampler's predictor and objectives (a SurrogateGuide)."""
    if algorithm not in ALGORITHMS:
        raise unknown_name("algorithm", algorithm, list(ALGORITHMS))
    population = max(8, min(32, budget // 3))
    kwargs = {"n_constraints": n_constraints} if algorithm.startswith("pymoo") else {}
    if algorithm == "surrogate":
        kwargs = {"guide": guide}
    return ALGORITHMS[algorithm](params, directions, seed, algorithm=algorithm, population_size=population, **kwargs)
