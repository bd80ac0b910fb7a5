"""The search problem: a bound space, an evaluator, objectives and constraints.

Like a pymoo Problem, it evaluates one assignment of the space's parameters; unlike one, it
checks the constraints knowable without data first, so a candidate that breaks them is
recorded as infeasible without its accuracy ever being computed. On a measured target latency
and energy are known only after building: the candidate is built and timed first, and a
latency or energy failure is still rejected before accuracy.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field

from autocompress._errors import UserError
from autocompress.config import CompressionConfig, clamp_bits
from autocompress.evaluate import Evaluator, Metrics
from autocompress.space import BoundSpace

__all__ = ["Constraints", "Problem", "RecoveryEstimate", "OBJECTIVES"]

#: until this many candidates have been both screened and fine-tuned, fine-tuning is assumed able
#: to win back everything a candidate lost at screening: a fixed allowance refuses exactly the
#: candidates that need the budget most (50% pruning of the CIFAR-10 ResNet-18 screens 25 points
#: low and is back within 2 after 100 steps)
MIN_PAIRS = 3
#: the share of the observed recoveries the estimate assumes (optimistic, so a candidate is
#: refused only where most fine-tuned candidates so far would not have got it there)
RECOVERY_QUANTILE = 0.75
#: a pair teaches the recovered share only where screening lost more than this much accuracy:
#: below it the loss is within the noise of a validation subset (1,000 images: ~0.3-0.8 points
#: paired), and a ratio of two noisy near-zero numbers refused a 4.9x candidate that had lost 10
#: points on the CIFAR-10 ResNet-18 after three quantisation-only pairs had "recovered" 22-57%
MIN_INFORMATIVE_LOSS = 0.01

#: objective -> direction
OBJECTIVES = {"energy_reduction": "max", "accuracy": "max", "size_bytes": "min", "latency_ms": "min"}


@dataclass
class Constraints:
    """Feasibility limits. None switches a limit off."""

    max_acc_drop: float | None = 1.0  # percentage points
    max_size_mb: float | None = None
    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None
    min_energy_reduction: float | None = None
    min_sqnr_db: float | None = None
    max_quant_error: float | None = None  # logits' noise power / signal power (10^(-SQNR/10))
    max_bits: int | None = None  # weight bit-width bounds; layers the space leaves alone get max_bits
    min_bits: int | None = None

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value is None:
                continue
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise UserError(f"--{name.replace('_', '-')} must be a number, not {value!r}")
            if name != "min_sqnr_db" and value < 0:
                raise UserError(f"--{name.replace('_', '-')} {value} is negative: no candidate could meet it")
        if self.min_energy_reduction is not None and self.min_energy_reduction <= 0:
            raise UserError("--min-energy-reduction must be above 0 (1 means no reduction)")
        for name in ("max_bits", "min_bits"):
            v = getattr(self, name)
            if v is not None and (v != int(v) or not 2 <= v <= 32):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number of bits from 2 to 32, not {v}")
        if self.max_bits is not None and self.min_bits is not None:
            clamp_bits(8, self.min_bits, self.max_bits)  # a one-line error when no width fits

    def bound_bits(self, config: CompressionConfig, table) -> CompressionConfig:
        """The config with every weight bit-width inside [min_bits, max_bits]: layers without
        bits get max_bits (the bound is on every weight of the model)."""
        if self.max_bits is None and self.min_bits is None:
            return config
        layers = {}
        for name in table.names:
            lc = config.layer(name)
            layers[name] = lc.model_copy(update={"wbits": clamp_bits(lc.wbits, self.min_bits, self.max_bits)})
        return config.model_copy(update={"layers": layers})

    def drop_confidence(self, m: Metrics) -> float | None:
        """How sure the accuracy-drop decision is: the probability that the true drop (on images
        like these) is within the limit, from the paired comparison's standard error (normal
        approximation). Near 0.5 the candidate sits on the limit and more images would decide."""
        if self.max_acc_drop is None or m.accuracy_drop is None or m.accuracy_drop_se is None:
            return None
        if m.accuracy_drop_se == 0:
            return 1.0 if m.accuracy_drop <= self.max_acc_drop else 0.0
        z = (self.max_acc_drop - m.accuracy_drop) / m.accuracy_drop_se
        return round(0.5 * (1 + math.erf(z / math.sqrt(2))), 4)

    @property
    def active(self) -> list[str]:
        return [k for k, v in asdict(self).items() if v is not None]

    # violation amounts: > 0 means broken, scaled so that 1 is "twice the limit"-ish
    def _violation(self, name: str, m: Metrics) -> float | None:
        limit = getattr(self, name)
        if name == "max_acc_drop":
            return None if m.accuracy_drop is None else m.accuracy_drop - limit
        if name == "max_size_mb":
            return m.size_bytes / 1e6 - limit
        if name == "max_params":
            return (m.params - limit) / max(limit, 1)
        if name == "max_macs":
            return (m.macs - limit) / max(limit, 1)
        if name == "max_latency_ms":  # None: a measured target has not timed it yet
            return None if m.latency_ms is None else m.latency_ms - limit
        if name == "min_energy_reduction":
            return None if m.energy_reduction is None else limit - m.energy_reduction
        if name == "min_sqnr_db":
            return None if m.sqnr_db is None else limit - min(m.sqnr_db, 999.0)
        if name == "max_quant_error":
            return None if m.quant_error is None else (m.quant_error - limit) / max(limit, 1e-12)
        if name == "max_bits":
            return m.weight_bits_max - limit
        if name == "min_bits":
            return limit - m.weight_bits_min
        raise KeyError(name)

    def violations(self, m: Metrics) -> dict[str, float | None]:
        """Per active constraint: amount of violation (> 0 broken), None if not yet known."""
        return {k: self._violation(k, m) for k in self.active}

    DATA_FREE = ("max_size_mb", "max_params", "max_macs", "max_latency_ms", "min_energy_reduction",
                 "max_bits", "min_bits")

    def data_free_broken(self, m: Metrics) -> tuple[dict[str, float | None], bool]:
        """Violations, and whether a constraint knowable without data is already broken."""
        v = self.violations(m)
        return v, any(v[k] is not None and v[k] > 0 for k in self.DATA_FREE if k in v)


@dataclass(frozen=True)
class RecoveryEstimate:
    """How much of what a candidate loses at screening fine-tuning wins back, learned from the
    (screened, fine-tuned) accuracy pairs of the candidates fine-tuned so far.

    The share recovered, (full - screen) / (baseline - screen), is taken at its
    ``RECOVERY_QUANTILE`` over the pairs; before ``MIN_PAIRS`` pairs it is 1 (full recovery)."""

    baseline: float
    share: float = 1.0
    pairs: int = 0

    @classmethod
    def learn(cls, baseline: float, pairs: list[tuple[float, float]] | None) -> "RecoveryEstimate":
        import numpy as np

        shares = [(full - screen) / (baseline - screen) for screen, full in (pairs or [])
                  if baseline - screen > MIN_INFORMATIVE_LOSS]
        if len(shares) < MIN_PAIRS:
            return cls(baseline, 1.0, len(shares))
        share = float(np.clip(np.quantile(shares, RECOVERY_QUANTILE), 0.0, 1.0))
        return cls(baseline, share, len(shares))

    def best_case(self, screened_accuracy: float) -> float:
        return screened_accuracy + self.share * max(0.0, self.baseline - screened_accuracy)


@dataclass
class Problem:
    space: BoundSpace
    evaluator: Evaluator
    objectives: dict[str, str] = field(default_factory=lambda: {"energy_reduction": "max", "accuracy": "max"})
    constraints: Constraints = field(default_factory=Constraints)

    def __post_init__(self):
        for k in self.objectives:
            if k not in OBJECTIVES:
                raise UserError(f"unknown objective {k!r}; valid: {', '.join(OBJECTIVES)}")

    def maximised(self, metrics: Metrics | dict) -> tuple[float, ...]:
        """The objective values of ``metrics`` (a Metrics or a record's metrics), in the order of
        :attr:`objectives`, each turned so that more is better (a missing one is the worst):
        the points of the front a trial is compared with."""
        out = []
        for k, sense in self.objectives.items():
            v = metrics.get(k) if isinstance(metrics, dict) else getattr(metrics, k, None)
            v = float(v) if v is not None else -math.inf
            out.append(v if sense == "max" or v == -math.inf else -v)
        return tuple(out)

    def promising(self, screened: Metrics, front: list[tuple[float, ...]],
                  pairs: list[tuple[float, float]] | None = None) -> bool:
        """Could fine-tuning bring a screened candidate onto the Pareto set? Not if, even with
        the gain the candidates fine-tuned so far (``pairs`` of screened and fine-tuned accuracy)
        make plausible, it stays below the accuracy floor, or a member of ``front`` (points of
        :meth:`maximised`, over the search's own objectives) is at least as good on each."""
        best_case = RecoveryEstimate.learn(self.evaluator.baseline_accuracy, pairs).best_case(screened.accuracy)
        drop = self.constraints.max_acc_drop
        if drop is not None and best_case < self.evaluator.baseline_accuracy - drop / 100:
            return False
        candidate = self.maximised({**asdict(screened), "accuracy": best_case})
        return not any(all(m >= c for m, c in zip(member, candidate)) for member in front)

    def evaluate(self, index: int, values: dict[str, float], front: list[tuple[float, ...]] | None = None,
                 pairs: list[tuple[float, float]] | None = None) -> dict:
        """One trial, as the record the run directory keeps. Never raises: a failure is a record.

        With a fine-tuning budget, the candidate is screened first and fine-tuned only when it
        could still enter the Pareto set ``front``."""
        t0 = time.perf_counter()
        record = {"trial": index, "params": values, "status": "failed", "threads": _threads()}
        try:
            config = self.evaluator.complete(self.space.config(values, meta={"trial": index}))
            config = self.constraints.bound_bits(config, self.space.table)
            record["config"] = config.to_dict()
            metrics = self.evaluator.cost_metrics(config)
            violations, broken = self.constraints.data_free_broken(metrics)
            built = None
            if not broken and self.evaluator.measured:  # latency and energy: build and time it first
                built = self.evaluator.build(config, self.evaluator.screening)
                metrics = self.evaluator.measure(built, metrics)
                violations, broken = self.constraints.data_free_broken(metrics)
            if broken:
                record["status"] = "infeasible"
                record["screened"] = True  # no accuracy computed
            else:
                two_fidelities = self.evaluator.recovery.finetune_steps > 0
                metrics = self.evaluator.evaluate(config, metrics, fidelity="screen", compressed=built)
                if two_fidelities and self.promising(metrics, front or [], pairs):
                    screen = metrics.accuracy
                    metrics = self.evaluator.evaluate(config, metrics, fidelity="full")
                    metrics.accuracy_screen = screen
                violations = self.constraints.violations(metrics)
                record["status"] = "ok" if all(v is None or v <= 0 for v in violations.values()) else "infeasible"
                record["within_limit_confidence"] = self.constraints.drop_confidence(metrics)
            record["metrics"] = metrics.to_dict()
            record["violations"] = violations
        except Exception as e:  # noqa: BLE001 - a failing candidate must not stop the search
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc(limit=6)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return record

    # what samplers are told
    def objective_values(self, record: dict) -> list[float] | None:
        if record["status"] == "failed":
            return None
        m = record["metrics"]
        worst = {"max": -1e9, "min": 1e18}
        return [float(m[k]) if m.get(k) is not None else worst[d] for k, d in self.objectives.items()]

    def constraint_values(self, record: dict) -> list[float]:
        v = record.get("violations") or {}
        # unknown (not computed because screened out): count as broken
        return [float(v[k]) if v.get(k) is not None else 1.0 for k in self.constraints.active]


def _threads() -> int:
    import torch
    return torch.get_num_threads() if "OMP_NUM_THREADS" not in os.environ else int(os.environ["OMP_NUM_THREADS"])
