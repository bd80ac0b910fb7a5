"""The search engine: what to search (:class:`SearchSettings`) and how to run it
(:class:`RunSettings`), kept apart as Ray Tune keeps TuneConfig and RunConfig apart.

:func:`run_search` runs the trials still owed to a run directory (all of them for a new run,
the rest for a resumed one), recording each as it ends.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from autocompress._errors import UserError
from autocompress.search._algorithms import ALGORITHMS, make_sampler
from autocompress.search._sampler import starting_points
from autocompress.search.problem import OBJECTIVES, Constraints, Problem
from autocompress.search.rundir import RunDirectory

__all__ = ["SearchSettings", "RunSettings", "Constraints", "Problem", "RunDirectory", "run_search",
           "ALGORITHMS", "OBJECTIVES"]


@dataclass
class SearchSettings:
    """What to search. Every value is checked here, where it enters (one line per bad value):
    ``objectives`` may be names (``["energy_reduction", "accuracy"]``) or name -> "max"/"min";
    ``constraints`` a :class:`Constraints` or a dict of its fields."""

    trials: int = 32
    algorithm: str = "nsga2"
    seed: int = 0
    objectives: dict[str, str] = field(default_factory=lambda: {"energy_reduction": "max", "accuracy": "max"})
    constraints: Constraints = field(default_factory=Constraints)
    clip_range: tuple[float, float] | None = None  # quantisation range every candidate clips to

    def __post_init__(self):
        if self.objectives is None:
            self.objectives = {"energy_reduction": "max", "accuracy": "max"}
        names = list(self.objectives)
        unknown = [o for o in names if o not in OBJECTIVES]
        if unknown:
            raise UserError(f"unknown objective {unknown[0]!r}; valid: {', '.join(OBJECTIVES)}")
        if not isinstance(self.objectives, dict):
            self.objectives = {o: OBJECTIVES[o] for o in names}
        if self.constraints is None:
            self.constraints = Constraints()
        elif isinstance(self.constraints, dict):
            from dataclasses import fields

            valid = [f.name for f in fields(Constraints)]
            unknown = [k for k in self.constraints if k not in valid]
            if unknown:
                raise UserError(f"unknown constraint {unknown[0]!r}; valid: {', '.join(valid)}")
            self.constraints = Constraints(**self.constraints)
        if not isinstance(self.trials, int) or self.trials < 1:
            raise UserError(f"--trials must be at least 1, not {self.trials}")
        if self.algorithm not in ALGORITHMS:
            from autocompress._errors import unknown_name
            raise unknown_name("algorithm", self.algorithm, list(ALGORITHMS))
        if self.clip_range is not None:
            lo, hi = self.clip_range
            if not lo < 0 < hi:
                raise UserError(f"--clip-range must contain 0 (MIN < 0 < MAX), not {lo},{hi}")
            self.clip_range = (float(lo), float(hi))


@dataclass
class RunSettings:
    """How to run it."""

    workers: int | None = None  # concurrent trials; default: the free cores
    cpus_per_trial: float | None = None  # default: the cores shared out among the workers
    gpus_per_trial: float = 0
    ray_address: str | None = None  # default: $RAY_ADDRESS (as under `ray job submit`), else a local Ray
    storage: str | None = None  # the Optuna study's storage URL; default: sqlite:///RUN/study.db

    def __post_init__(self):  # checked where the values enter, before any model is loaded or trained
        if self.workers is not None and self.workers < 1:  # 0 is an error, not "the default"
            raise UserError(f"--workers must be at least 1, not {self.workers}")
        if (self.cpus_per_trial is not None and self.cpus_per_trial <= 0) or self.gpus_per_trial < 0:
            raise UserError("--resources-per-trial: cpu must be above 0 and gpu at least 0")

    def resolved(self) -> "RunSettings":
        cores = os.cpu_count() or 1
        workers = cores if self.workers is None else self.workers
        cpus = self.cpus_per_trial or max(1, cores // workers)
        if self.gpus_per_trial > 0 and self.ray_address is None:
            import torch
            if not torch.cuda.is_available():
                raise UserError("--resources-per-trial asks for GPUs but this machine has none "
                                "(torch.cuda.is_available() is False); use --ray-address for a cluster with GPUs")
        address = self.ray_address or os.environ.get("RAY_ADDRESS") or None
        return RunSettings(workers, cpus, self.gpus_per_trial, address, self.storage)


def reference_point(problem: Problem, baseline: dict) -> dict[str, float]:
    """The hypervolume's reference point of ``problem`` (:func:`~autocompress.search.rundir.hypervolume_reference`)."""
    from autocompress.search.rundir import hypervolume_reference

    return hypervolume_reference(problem.objectives, problem.constraints.max_acc_drop, baseline)


def run_search(problem: Problem, search: SearchSettings, run: RunSettings, rundir: RunDirectory, *,
               on_trial: Callable[[dict, list[dict]], None] | None = None,
               log: Callable[[str], None] = print) -> list[dict]:
    """Run the trials the run directory still owes; returns every trial's record."""
    run = run.resolved()
    records = rundir.trials()
    baseline = rundir.baseline
    ref = reference_point(problem, baseline)
    directions = list(problem.objectives.values())
    study = _open_study(problem, run, rundir, records, log)
    if search.trials <= len(records):  # a finished run resumed: nothing owed, no sampler to build
        rundir.write_tables(records, problem.objectives, ref)
        return records
    guide = None
    if search.algorithm == "surrogate":
        from autocompress.search._surrogate import build_guide
        guide = build_guide(problem, log)  # the sensitivity table, here in the driver, before any trial
        _keep_sensitivity(guide.predictor.sens, rundir)
    sampler = make_sampler(search.algorithm, problem.space.searchable, directions, search.seed, search.trials,
                           n_constraints=len(problem.constraints.active), guide=guide)
    for r in records:  # resume: the sampler learns from the finished trials
        sampler.replay(r["params"], problem.objective_values(r), problem.constraint_values(r))
        if guide is not None:
            sampler.observe(r)
    if not records:
        for point in starting_points(problem.space.searchable, search.trials):
            sampler.enqueue(point)
    remaining = search.trials - len(records)
    rundir.write_tables(records, problem.objectives, ref)  # rebuilt from trials.jsonl
    if remaining <= 0:
        return records

    def on_record(record: dict) -> None:
        if guide is not None:  # what the surrogate predicted, next to what was measured
            record.update(sampler.prediction(record["params"]))
            sampler.observe(record)
        records.append(record)
        rundir.append(record)
        rundir.add_to_tables(record)  # a flat cost per trial; rebuilt in full at the end
        _add_to_study(study, problem, record, log)
        if on_trial:
            on_trial(record, records)

    from autocompress.search._tune import run_trials

    first = max((int(r["trial"]) for r in records), default=-1) + 1
    try:
        run_trials(problem, sampler, budget=remaining, first_index=first, workers=run.workers,
                   cpus_per_trial=run.cpus_per_trial, gpus_per_trial=run.gpus_per_trial,
                   ray_address=run.ray_address, on_record=on_record, done=list(records),
                   tune_dir=rundir.path / "tune")
    except BaseException:  # Ctrl-C may land between a trial's line and its table row
        with contextlib.suppress(OSError):  # a run directory that cannot be written says so itself
            rundir.write_tables(rundir.trials(), problem.objectives, ref)
        raise
    rundir.write_tables(rundir.trials(), problem.objectives, ref)  # rebuilt from trials.jsonl
    return records


def _open_study(problem: Problem, run: RunSettings, rundir: RunDirectory, records: list[dict], log):
    """The run's Optuna study (every trial, whatever the sampler), brought up to trials.jsonl."""
    from autocompress.search._study import StudyRecorder, default_storage

    study = StudyRecorder(run.storage or default_storage(rundir.path), problem.space.searchable,
                          problem.objectives, problem.constraints.active)
    try:
        study.sync(records, problem.objective_values, problem.constraint_values)
    except Exception as e:  # noqa: BLE001 - the study mirrors trials.jsonl; a search never stops for it
        log(f"warning: the Optuna study could not take the finished trials ({' '.join(str(e).split())[:160]})")
    return study


def _add_to_study(study, problem: Problem, record: dict, log) -> None:
    try:
        study.add(record, problem.objective_values(record), problem.constraint_values(record))
    except Exception as e:  # noqa: BLE001 - trials.jsonl has it; the next start adds it to the study
        log(f"warning: trial {record['trial']} is not in the Optuna study yet ({' '.join(str(e).split())[:160]}); "
            "it is added when the run is resumed")


def _keep_sensitivity(sens, rundir: RunDirectory) -> None:
    """The sensitivity table and its plot in the run directory, for the report."""
    import io

    from autocompress.search.sensitivity import plot_sensitivity
    from autocompress.utils import atomic_write_text

    atomic_write_text(rundir.path / "sensitivity.csv", sens.frame.to_csv(index=False))
    fig = plot_sensitivity(sens)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    (rundir.path / "sensitivity.png").write_bytes(buf.getvalue())


def settings_dict(search: SearchSettings, run: RunSettings) -> dict:
    return {"search": {**asdict(search), "constraints": asdict(search.constraints)},
            "run": asdict(run)}
