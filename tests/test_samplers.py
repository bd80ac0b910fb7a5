"""Every sampler ``make_sampler`` accepts, through ask and tell on synthetic params with a cheap
synthetic objective: no model, no Ray, well under a few seconds per test.

What is checked: proposals stay inside each Param's choices / range (on the step grid); the same
seed gives the same sequence and another seed another; ``enqueue``d points come out first;
``replay``ed results make a new sampler continue (its study holds them, its population is built
from them, or it does not propose them again); and, on a problem whose Pareto front is known by
hand, the multi-objective samplers find it.
"""
import itertools
import math

import numpy as np
import pytest

from autocompress._errors import UserError
from autocompress.search._algorithms import ALGORITHMS, make_sampler
from autocompress.search._sampler import ladder
from autocompress.search._surrogate import SurrogateGuide
from autocompress.space import Param

ALL = sorted(ALGORITHMS)
OPTUNA = ["nsga2", "tpe", "random"]
PYMOO = ["pymoo-nsga2", "pymoo-nsga3"]


def test_the_algorithms_are_the_ones_this_file_covers():
    assert ALL == ["nsga2", "pymoo-nsga2", "pymoo-nsga3", "random", "surrogate", "tpe"]


# --- a synthetic space and objective ------------------------------------------------------------------
PARAMS = [
    Param("prune:g1", "prune", ("g1",), choices=(0.0, 0.25, 0.5)),
    Param("wbits:l1", "wbits", ("l1",), choices=(2, 4, 8)),
    Param("prune:g2", "prune", ("g2",), low=0.1, high=0.6, step=0.05),
    Param("rank:l2", "rank", ("l2",), low=0.25, high=1.0),  # a range without a step
]


def _compression(v: dict) -> float:
    """0 for the least compressing assignment, larger the more it compresses."""
    return v["prune:g1"] + v["prune:g2"] + (8 - v["wbits:l1"]) / 8 + (1 - v["rank:l2"])


def score(v: dict):
    """(energy reduction, accuracy) to maximize, and one constraint (feasible when <= 0)."""
    c = _compression(v)
    return [1 + c, 0.9 - 0.05 * c * c], [0.05 * c * c - 0.08]


class FakePredictor:
    """The surrogate's accuracy predictor, reduced to what it reads: a baseline and drops."""

    baseline = 0.9

    def __init__(self, drop):
        self.drop, self.updates = drop, 0

    def predict_drop(self, values_list):
        return np.array([self.drop(v) for v in values_list], dtype=float)

    def update(self, values, accuracy):
        self.updates += 1


def guide_for(energy=lambda v: 1 + _compression(v), drop=lambda v: 100 * 0.05 * _compression(v) ** 2,
              max_drop=8.0):
    return SurrogateGuide(FakePredictor(drop), lambda vs: np.array([energy(v) for v in vs], dtype=float), max_drop)


def make(algorithm, seed=0, budget=24, params=PARAMS, guide=None):
    return make_sampler(algorithm, params, ["max", "max"], seed, budget, n_constraints=1,
                        guide=guide or guide_for())


def drive(sampler, n, objective=score, fail_every=0):
    """Ask and tell ``n`` times; every ``fail_every``-th trial is told it failed."""
    out = []
    for i in range(n):
        got = sampler.ask()
        assert got is not None, "a sampler told every result must have a proposal"
        handle, values = got
        out.append(dict(values))
        if fail_every and i % fail_every == fail_every - 1:
            sampler.tell(handle, None, None)
        else:
            sampler.tell(handle, *objective(values))
    return out


def _key(v: dict, params=PARAMS) -> tuple:
    return tuple(round(float(v[p.name]), 9) for p in params)


def _on_grid(value, p: Param) -> bool:
    k = (value - p.low) / p.step
    return abs(k - round(k)) < 1e-6


# --- proposals stay inside the space ----------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALL)
def test_proposals_stay_inside_every_params_choices_and_range(algorithm):
    n = 30 if algorithm == "surrogate" else 60  # the surrogate scores 2048 candidates per ask
    proposals = drive(make(algorithm), n, fail_every=7)  # failed trials included
    assert len(proposals) == n
    for v in proposals:
        assert set(v) == {p.name for p in PARAMS}
        for p in PARAMS:
            x = v[p.name]
            if p.categorical:
                assert x in p.choices, f"{p.name}={x} not among {p.choices}"
            else:
                assert p.low - 1e-9 <= x <= p.high + 1e-9, f"{p.name}={x} outside [{p.low}, {p.high}]"
                if p.step:
                    assert _on_grid(x, p), f"{p.name}={x} off the grid {p.low} + k x {p.step}"
    # not stuck on one point: a sampler explores
    assert len({_key(v) for v in proposals}) >= 20


# --- seeds ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALL)
def test_the_same_seed_gives_the_same_sequence_and_another_seed_another(algorithm):
    n = 20 if algorithm == "surrogate" else 40
    first = [_key(v) for v in drive(make(algorithm, seed=3), n)]
    again = [_key(v) for v in drive(make(algorithm, seed=3), n)]
    other = [_key(v) for v in drive(make(algorithm, seed=4), n)]
    assert first == again
    assert first != other


def _ties(v):
    """Most candidates break the constraint by exactly the same amount."""
    return [v["a"], -v["b"] - v["c"]], [1.0 if v["a"] >= 1 else -1.0]


SMALL = [Param("a", "prune", ("a",), choices=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0)),
         Param("b", "wbits", ("b",), choices=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0)),
         Param("c", "prune", ("c",), low=0.0, high=5.0, step=1.0)]


@pytest.mark.parametrize("algorithm", [
    a if a != "pymoo-nsga3" else pytest.param(a, marks=pytest.mark.xfail(strict=True, reason=(
        "pymoo 0.6.2's NSGA-III tournament (nsga3.comp_by_cv_then_random) breaks ties between two "
        "infeasible candidates of equal violation with compare(..., return_random_if_equal=True) "
        "without passing the algorithm's random_state, i.e. with an unseeded np.random.default_rng(): "
        "--algorithm pymoo-nsga3 --seed N is not reproducible once candidates tie on a constraint")))
    for a in ALL])
def test_a_seeded_search_is_reproducible_when_infeasible_candidates_tie(algorithm):
    # 4 runs of 96 trials: an unseeded tie-break shows in one of them (in 40 tries it always did)
    n, repeats = (24, 2) if algorithm == "surrogate" else (96, 4)  # the surrogate reads no constraint
    runs = []
    for _ in range(repeats):
        g = guide_for(energy=lambda v: v["a"], drop=lambda v: v["a"] + v["b"] + v["c"], max_drop=4.0)
        runs.append([_key(v, SMALL) for v in drive(make(algorithm, seed=3, budget=24, params=SMALL, guide=g), n,
                                                   objective=_ties)])
    assert all(run == runs[0] for run in runs)


# --- starting points -----------------------------------------------------------------------------------
START = [{"prune:g1": 0.5, "wbits:l1": 2, "prune:g2": 0.45, "rank:l2": 0.5},
         {"prune:g1": 0.0, "wbits:l1": 8, "prune:g2": 0.1, "rank:l2": 1.0}]


@pytest.mark.parametrize("algorithm", ALL)
def test_enqueued_points_come_out_first(algorithm):
    sampler = make(algorithm)
    for point in START:
        sampler.enqueue(point)
    proposals = drive(sampler, 4)
    for got, want in zip(proposals[:2], START):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-9), name
    assert all(_key(v) not in {_key(s) for s in START} for v in proposals[2:4])


# --- resume: replay -----------------------------------------------------------------------------------
def _grid(params=SMALL):
    values = [p.choices if p.categorical else np.arange(p.low, p.high + p.step / 2, p.step) for p in params]
    return [dict(zip([p.name for p in params], map(float, x))) for x in itertools.product(*values)]


def _records(n, seed=0):
    grid = _grid()
    rng = np.random.default_rng(seed)
    return [grid[i] for i in rng.choice(len(grid), n, replace=False)]


def _front_problem(v):
    """energy = a, accuracy = 10 - a - b - c, both maximized; feasible when a <= 4."""
    return [v["a"], 10 - v["a"] - v["b"] - v["c"]], [v["a"] - 4]


@pytest.mark.parametrize("algorithm", OPTUNA)
def test_replayed_trials_are_in_the_optuna_study_with_their_values_and_constraints(algorithm):
    import optuna

    records = _records(10)
    sampler = make(algorithm, params=SMALL, budget=30)
    for i, v in enumerate(records):
        if i == 3:
            sampler.replay(v, None, None)  # a trial that failed in the earlier run
        else:
            sampler.replay(v, *_front_problem(v))
    trials = sampler.study.trials
    assert len(trials) == 10
    assert trials[3].state == optuna.trial.TrialState.FAIL
    for i, (t, v) in enumerate(zip(trials, records)):
        assert t.params == v
        if i != 3:
            objectives, constraints = _front_problem(v)
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values == objectives
            assert t.constraints == {"c0": constraints[0]}  # where Optuna's samplers read them
    handle, _ = sampler.ask()
    assert handle.number == 10  # continues after the replayed trials, not from trial 0


@pytest.mark.xfail(strict=True, reason=(
    "OptunaSampler.replay adds trials without Optuna's 'NSGAIISampler:generation' system attribute, "
    "so NSGA-II counts none of them in any generation: a resumed nsga2 search starts again from a "
    "random generation 0 instead of breeding from the finished trials (fix: give replayed trials "
    "system_attrs={'NSGAIISampler:generation': i // population_size})"))
def test_a_resumed_optuna_nsga2_breeds_from_the_replayed_population():
    sampler = make("nsga2", params=SMALL, budget=24)
    for v in _records(sampler.study.sampler.population_size):
        sampler.replay(v, *_front_problem(v))
    sampler.ask()
    assert sampler.study.trials[-1].system_attrs["NSGAIISampler:generation"] == 1


@pytest.mark.parametrize("algorithm", PYMOO)
def test_pymoo_builds_its_population_from_the_replayed_trials(algorithm):
    records = _records(12)
    sampler = make(algorithm, params=SMALL, budget=24)
    for v in records:
        sampler.replay(v, *_front_problem(v))
    sampler.ask()
    # the replayed trials were the first generation: the proposal is from the second
    assert sampler.algorithm.n_gen == 2
    kept = sorted(_key(sampler.decode(x), SMALL) for x in sampler.algorithm.pop.get("X"))
    assert kept == sorted(_key(v, SMALL) for v in records)
    assert np.allclose(-sampler.algorithm.pop.get("F")[:, 0], [_key(sampler.decode(x), SMALL)[0]
                                                               for x in sampler.algorithm.pop.get("X")])
    fresh = make(algorithm, params=SMALL, budget=24)
    fresh.ask()
    assert fresh.algorithm.n_gen == 1  # without replay: the random first generation


def test_pymoo_waits_for_a_generation_before_the_next():
    sampler = make("pymoo-nsga2", params=SMALL, budget=24)
    handed = [sampler.ask() for _ in range(sampler.pop_size)]
    assert all(h is not None for h in handed) and sampler.pop_size == 8
    assert sampler.ask() is None  # results are out
    for handle, values in handed:
        sampler.tell(handle, *_front_problem(values))
    assert sampler.ask() is not None


def test_the_surrogate_never_proposes_a_replayed_point_again():
    params = SMALL[:2]  # 36 points
    grid = _grid(params)
    sampler = make("surrogate", params=params, guide=guide_for(energy=lambda v: v["a"], drop=lambda v: 0.0))
    left = grid.pop(17)
    for v in grid:
        sampler.replay(v, *_front_problem({**v, "c": 0.0}))
    sampler.enqueue(grid[0])  # a starting point already run: skipped
    _, proposed = sampler.ask()
    assert proposed == left  # the only point not yet run


def test_the_surrogate_proposes_the_highest_energy_within_the_predicted_limit():
    # predicted drop = a + b + c points, limit 4: the best feasible energy (= a) is (4, 0, 0)
    g = guide_for(energy=lambda v: v["a"], drop=lambda v: v["a"] + v["b"] + v["c"], max_drop=4.0)
    proposals = drive(make("surrogate", params=SMALL, guide=g, seed=0), 12, objective=_front_problem)
    assert all(v["a"] + v["b"] + v["c"] <= 4 + 1e-9 for v in proposals)
    assert {"a": 4.0, "b": 0.0, "c": 0.0} in proposals[:3]
    assert len({_key(v, SMALL) for v in proposals}) == 12  # nothing proposed twice


def test_with_headroom_every_other_proposal_aims_beyond_the_limit_for_the_finish():
    # predicted drop = a + b + c, limit 3, headroom 1.5: the plain asks propose a = 3 at most, the
    # stretching ones a = 4 (the highest energy within 4.5 points); without headroom, none beyond 3
    def proposals(headroom):
        g = guide_for(energy=lambda v: v["a"], drop=lambda v: v["a"] + v["b"] + v["c"], max_drop=3.0)
        g.headroom = headroom
        return drive(make("surrogate", params=SMALL, guide=g, seed=0), 8, objective=_front_problem)

    stretched = [v["a"] + v["b"] + v["c"] for v in proposals(1.5)]
    assert all(d <= 4.5 + 1e-9 for d in stretched)
    assert sum(d > 3 for d in stretched[1::2]) >= 3  # the stretching asks go beyond the limit
    assert all(d <= 3 + 1e-9 for d in stretched[0::2])  # the others stay within it
    assert all(v["a"] + v["b"] + v["c"] <= 3 + 1e-9 for v in proposals(0.0))


def test_the_surrogate_learns_only_through_observe():
    g = guide_for()
    sampler = make("surrogate", guide=g)
    handle, values = sampler.ask()
    sampler.tell(handle, *score(values))
    assert g.predictor.updates == 0
    sampler.observe({"trial": 0, "params": values, "status": "ok",
                     "metrics": {"accuracy": 0.85, "fidelity": "screen", "energy_reduction": 2.0}})
    assert g.predictor.updates == 1 and len(sampler.archive) == 1
    sampler.observe({"trial": 1, "params": values, "status": "failed", "metrics": {}})
    assert g.predictor.updates == 1  # a failed trial teaches nothing


# --- a problem whose Pareto front is known ------------------------------------------------------------
def _non_dominated(points):
    f = {p: (p[0], 10 - sum(p)) for p in points}
    return {p for p in points
            if not any(q != f[p] and q[0] >= f[p][0] and q[1] >= f[p][1] for q in f.values())}


# (a, 0, 0) dominates every (a, b, c) with b + c > 0, and a > 4 is infeasible: the feasible front is
# exactly the 5 points (a, 0, 0) for a = 0..4, of 216 in the space
TRUE_FRONT = {(float(a), 0.0, 0.0) for a in range(5)}


@pytest.mark.parametrize("algorithm, trials", [("nsga2", 300), ("tpe", 150), ("pymoo-nsga2", 300),
                                               ("pymoo-nsga3", 300), ("surrogate", 30)])
def test_multi_objective_samplers_find_the_known_front(algorithm, trials):
    g = guide_for(energy=lambda v: v["a"], drop=lambda v: v["a"] + v["b"] + v["c"], max_drop=4.0)
    proposals = drive(make(algorithm, params=SMALL, budget=trials, guide=g), trials, objective=_front_problem)
    feasible = {_key(v, SMALL) for v in proposals if v["a"] <= 4}
    front = _non_dominated(feasible)
    assert front <= TRUE_FRONT, f"dominated points left on the front: {sorted(front - TRUE_FRONT)}"
    assert (4.0, 0.0, 0.0) in front  # the feasible point of highest energy reduction
    assert len(front) >= 4


def test_random_sampling_does_not_pass_the_front_test():
    """The front test has teeth: 300 random trials leave dominated points on the found front."""
    proposals = drive(make("random", params=SMALL, budget=300), 300, objective=_front_problem)
    front = _non_dominated({_key(v, SMALL) for v in proposals if v["a"] <= 4})
    assert not front <= TRUE_FRONT or len(front) < 4


# --- make_sampler and ladder -----------------------------------------------------------------------------
def test_population_follows_the_budget():
    assert make("nsga2", budget=24).study.sampler.population_size == 8
    assert make("nsga2", budget=60).study.sampler.population_size == 20
    assert make("nsga2", budget=3000).study.sampler.population_size == 32
    assert make("pymoo-nsga2", budget=60).pop_size == 20


def test_unknown_algorithm_and_a_surrogate_without_guide_are_refused():
    with pytest.raises(UserError, match="unknown algorithm 'nsga'.*Did you mean 'nsga2'"):
        make_sampler("nsga", PARAMS, ["max", "max"], 0, 24)
    with pytest.raises(ValueError, match="needs a guide"):
        make_sampler("surrogate", PARAMS, ["max", "max"], 0, 24, guide=None)


def test_ladder_orders_values_least_compressing_first():
    assert ladder(PARAMS[0]) == [0.0, 0.25, 0.5]  # prune: smallest first
    assert ladder(PARAMS[1]) == [8, 4, 2]  # bits: largest first
    low, mid, high = ladder(PARAMS[2])  # a stepped range: its ends and the grid point nearest the middle
    assert (low, high) == (0.1, 0.6) and mid == pytest.approx(0.35) and _on_grid(mid, PARAMS[2])
    assert ladder(PARAMS[3]) == [1.0, pytest.approx(0.625), 0.25]  # rank: largest first, no grid
    assert math.isclose(sum(ladder(PARAMS[3])), 1.875)
