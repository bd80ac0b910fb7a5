"""Surrogate-assisted search: propose what the accuracy predictor says is best.

Rather than optimising on the surrogate with a full evolutionary run, each :meth:`ask` scores a
pool of a few thousand candidates at once (uniform random ones, which keep exploring, and
one- to three-param mutations of the best measured and predicted configs, which refine) with
the vectorised predictor and cost model, keeps those whose predicted final accuracy drop is
within the limit, and proposes the one of highest modeled energy reduction; one ask in five
instead takes a random member of the predicted Pareto front (exploration). When the search
fine-tunes its candidates, every other remaining ask stretches the limit by ``headroom`` points:
the finishing fine-tune (``autocompress finetune --race``, hundreds of steps where the search
gives 20) wins back part of what the search's short fine-tuning leaves, and its race takes
candidates up to a point beyond the limit, so those asks give it entrants that can finish within
the limit at a higher energy reduction; the other asks keep candidates within the limit as
measured by the search itself. Scoring costs
well under a second, a trial many; so the pool, not the optimiser, is where time goes.
Nothing already proposed is proposed again. The starting points (:meth:`enqueue`) come first.

The sampler learns through :meth:`observe` (run_search calls it with every record): the
predictor refits from the screened accuracy, and a map screened drop -> final drop
(final = k x screened, k the median share over fine-tuned trials that lost more than a
point at screening; 0.3 until 2 such pairs) learns
what fine-tuning wins back. It works on energy reduction and accuracy only.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from autocompress.search._sampler import Sampler
from autocompress.search.record import Trial
from autocompress.search.predictor import AccuracyPredictor
from autocompress.search.problem import MIN_INFORMATIVE_LOSS
from autocompress.space import Param

__all__ = ["SurrogateGuide", "SurrogateSampler", "build_guide"]

POOL = 2048  # candidates scored per ask
EXPLORE = 0.2  # share of asks that take a random member of the predicted front
PRIOR_K = 0.3  # share of the screened drop left after fine-tuning, until measured
MIN_PAIRS = 2
# points beyond the limit, as a share of it, that the stretching asks aim at: on the CIFAR-10
# ResNet-18 (tpu-v1, 100,000-image budget), search-fidelity drops of 0.9-1.3 points on 1,000
# validation images finished at 0.3-0.6 points on the 10,000-image test split
FINISH_HEADROOM = 0.5


@dataclass
class SurrogateGuide:
    """What the surrogate sampler needs besides the params: the accuracy predictor, the
    modeled energy reduction of many value dicts at once, and the accuracy-drop limit."""

    predictor: AccuracyPredictor
    energy_reduction: Callable[[list[dict]], np.ndarray]
    max_drop: float | None  # percentage points below the baseline; None: no floor
    finetuned: bool = False  # measured accuracy is after fine-tuning (metrics hold accuracy_screen too)
    headroom: float = 0.0  # points beyond max_drop that every other proposal aims at (a finish wins them back)

    @property
    def floor(self) -> float | None:
        return None if self.max_drop is None else self.predictor.baseline - self.max_drop / 100


def _key(values: dict) -> str:
    return json.dumps({k: float(v) for k, v in values.items()}, sort_keys=True)


class SurrogateSampler(Sampler):
    def __init__(self, params: list[Param], directions: list[str], seed: int, algorithm: str = "surrogate",
                 population_size: int | None = None, guide: SurrogateGuide | None = None):
        super().__init__(params, directions, seed)
        if guide is None:
            raise ValueError("the surrogate sampler needs a guide (run_search builds it)")
        self.guide = guide
        self.rng = np.random.default_rng(seed)
        self.queue: list[dict] = []
        self.seen: set[str] = set()
        self.pending: dict[int, dict] = {}
        self.predicted: dict[str, dict] = {}  # key -> the prediction made when it was proposed
        self.archive: list[tuple[dict, float, float]] = []  # measured: values, energy reduction, final drop
        self.pairs: list[tuple[float, float]] = []  # (screened drop, final drop), fine-tuned trials
        self._next = 0
        self._last: dict | None = None
        self._proposals = 0

    # -- the screened -> final map ----------------------------------------------------------------
    @property
    def k(self) -> float:
        if not self.guide.finetuned:
            return 1.0
        # as the screening rule (problem.MIN_INFORMATIVE_LOSS): a candidate that lost under a
        # point at screening has nothing to win back, and its share (~1) says nothing about
        # what fine-tuning does for structure; those pairs once pinned k at 1.0
        pairs = [(s, f) for s, f in self.pairs if s > 100 * MIN_INFORMATIVE_LOSS]
        if len(pairs) < MIN_PAIRS:
            return PRIOR_K
        # the median share, not a least-squares slope: a slope through the origin is set by the
        # largest screened drop, and one collapsed candidate (screened at 14%, fine-tuned to 3.4
        # points: share 0.04) made every later candidate look recoverable, so a search spent
        # its trials on 4-5x configs that then lost 5-11 points
        s, f = np.array(pairs).T
        return float(np.clip(np.median(np.maximum(f, 0) / s), 0.0, 1.5))

    def predict(self, values_list: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted screened accuracy and final accuracy drop (points) per value dict."""
        screened = self.guide.predictor.predict_drop(values_list)
        return self.guide.predictor.baseline - screened / 100, screened * self.k

    # -- candidates -------------------------------------------------------------------------------
    def _value(self, p: Param):
        if p.categorical:
            return p.choices[self.rng.integers(len(p.choices))]
        if p.step:
            steps = int(round((p.high - p.low) / p.step))
            return min(p.high, p.low + int(self.rng.integers(steps + 1)) * p.step)
        return float(self.rng.uniform(p.low, p.high))

    def _random(self, n: int) -> list[dict]:
        return [{p.name: self._value(p) for p in self.params} for _ in range(n)]

    def _mutants(self, bases: list[dict], n: int) -> list[dict]:
        out = []
        for i in range(n):
            v = dict(bases[i % len(bases)])
            for j in self.rng.choice(len(self.params), size=min(len(self.params), 1 + int(self.rng.integers(3))),
                                     replace=False):
                v[self.params[j].name] = self._value(self.params[j])
            out.append(v)
        return out

    def _bases(self, limit: float | None) -> list[dict]:
        ok = [(e, v) for v, e, d in self.archive if limit is None or d <= limit]
        ok.sort(key=lambda t: -t[0])
        bases = [v for _, v in ok[:8]]
        if self._last is not None:
            bases.append(self._last)
        return bases or self._random(4)

    def _propose(self) -> dict:
        limit = self.guide.max_drop
        stretch = limit is not None and self.guide.headroom > 0 and self._proposals % 2 == 1
        self._proposals += 1
        if stretch:
            limit += self.guide.headroom
        pool, keys = [], set()
        for v in self._random(POOL // 2) + self._mutants(self._bases(limit), POOL - POOL // 2):
            key = _key(v)
            if key not in self.seen and key not in keys:
                keys.add(key)
                pool.append(v)
        if not pool:  # a tiny space, every candidate already proposed: accept a repeat
            return self._random(1)[0]
        _, final = self.predict(pool)
        energy = np.asarray(self.guide.energy_reduction(pool), dtype=float)
        within = final <= (np.inf if limit is None else limit)
        if not within.any():  # nothing predicted feasible: the least damaging candidate
            return pool[int(final.argmin())]
        idx = np.flatnonzero(within)
        front = _front(energy[idx], final[idx])
        if not stretch and (self.rng.random() < EXPLORE or limit is None):
            choice = idx[front[self.rng.integers(len(front))]]
        else:  # the most energy-saving candidate the predictor trusts within the limit
            best = energy[idx].max()
            tied = idx[energy[idx] >= best * (1 - 1e-9)]
            choice = tied[final[tied].argmin()]
        return pool[int(choice)]

    # -- Sampler ----------------------------------------------------------------------------------
    def ask(self):
        values = None
        while self.queue and values is None:
            v = self.queue.pop(0)
            if _key(v) not in self.seen:
                values = v
        if values is None:
            values = self._propose()
            self._last = values
        key = _key(values)
        self.seen.add(key)
        acc, final = self.predict([values])
        self.predicted[key] = {"predicted_accuracy": round(float(acc[0]), 6),
                               "predicted_drop_final": round(float(final[0]), 4)}
        handle = self._next
        self._next += 1
        self.pending[handle] = values
        return handle, dict(values)

    def tell(self, handle, values, constraints) -> None:
        # the predictor learns from the record (observe), which holds the screened accuracy
        self.pending.pop(handle, None)

    def replay(self, values_in, values, constraints) -> None:
        self.seen.add(_key({k: v for k, v in values_in.items() if k in {p.name for p in self.params}}))

    def enqueue(self, values) -> None:
        self.queue.append(dict(values))

    def prediction(self, values: dict) -> dict:
        """What was predicted for ``values`` when it was proposed (predicted now if it was not)."""
        got = self.predicted.get(_key({k: v for k, v in values.items() if k in {p.name for p in self.params}}))
        if got is None:
            acc, final = self.predict([values])
            got = {"predicted_accuracy": float(acc[0]), "predicted_drop_final": float(final[0])}
        return got

    def observe(self, record: dict) -> None:
        """Learn from a finished trial's record: its screened accuracy, and with fine-tuning,
        what fine-tuning won back."""
        record = Trial.of(record)
        m = record.metrics
        if record.failed or m.get("accuracy") is None or record.duplicate:
            return
        base = self.guide.predictor.baseline
        screen = m.get("accuracy_screen")
        if screen is None and record.screened_only:
            screen = m["accuracy"]
        if screen is not None:
            self.guide.predictor.update(record["params"], float(screen))
        final_drop = 100 * (base - float(m["accuracy"]))
        if record.fine_tuned and screen is not None:
            self.pairs.append((100 * (base - float(screen)), final_drop))
        if m.get("energy_reduction") is not None:
            self.archive.append((dict(record["params"]), float(m["energy_reduction"]), final_drop))


def _front(energy: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (energy max, drop min)."""
    order = np.lexsort((drop, -energy))
    out, best = [], np.inf
    for i in order:
        if drop[i] < best:
            out.append(i)
            best = drop[i]
    return np.array(out, dtype=int)


def build_guide(problem, log: Callable[[str], None] = print, **sensitivity_kwargs) -> SurrogateGuide:
    """The guide for ``problem``: its sensitivity table (cached, measured now if not), the
    predictor on it and the vectorised modeled energy reduction."""
    from autocompress._errors import UserError
    from autocompress.search.sensitivity import sensitivity

    ev, space = problem.evaluator, problem.space
    if ev.measured or ev.cost_model is None:
        raise UserError("--algorithm surrogate needs a modeled target (its energy is predicted for "
                        "thousands of candidates); use nsga2 on a measured one")
    t0 = time.perf_counter()
    # the table ranks knob values, not candidates: 5 batches of BN re-estimation and 256 images
    # keep it to a few minutes on a CIFAR ResNet-18 (20 batches and 512 took over 20)
    import copy
    from dataclasses import replace

    cheap = copy.copy(ev)
    cheap.recovery = replace(ev.recovery, bn_batches=min(ev.recovery.bn_batches, 5))
    cheap.seed = 0  # the table describes the model and data, not a search: every seed shares it
    sensitivity_kwargs.setdefault("samples", 256)
    sens = sensitivity(space, cheap, **sensitivity_kwargs)
    log(f"sensitivity of {len(space.searchable)} params ({len(sens.frame)} rows, {sens.images} images): "
        + ("read from the cache" if sens.cached else "measured")
        + f" in {time.perf_counter() - t0:.1f} s")
    predictor = AccuracyPredictor(sens, space.searchable, baseline_accuracy=ev.baseline_accuracy,
                                  num_classes=ev.data.num_classes)
    reference = ev.reference_cost.energy_j

    def energy_reduction(values_list: list[dict]) -> np.ndarray:
        configs = [problem.constraints.bound_bits(ev.complete(space.config(v)), space.table) for v in values_list]
        return reference / ev.cost_model.cost_many(configs)[1]

    limit, finetuned = problem.constraints.max_acc_drop, ev.recovery.finetune_steps > 0
    return SurrogateGuide(predictor, energy_reduction, limit, finetuned=finetuned,
                          headroom=FINISH_HEADROOM * limit if finetuned and limit is not None else 0.0)
