"""Every trial of a search, whatever its sampler, as an Optuna study that Optuna's own tools open:
``optuna.load_study(study_name="autocompress", storage="sqlite:///RUN/study.db")``,
``optuna-dashboard sqlite:///RUN/study.db``.

trials.jsonl stays the record a search resumes from; the study mirrors it. When a search starts,
the trials the study lacks are added (a kill between the two writes, a study deleted by hand),
so the two agree after every start and after every trial.
"""
from __future__ import annotations

import json
from pathlib import Path

from autocompress._errors import UserError
from autocompress.search._sampler import OptunaSampler
from autocompress.space import Param

STUDY_NAME = "autocompress"
_TRIAL_ATTR = "autocompress_trial"  # our trial index: Optuna numbers its trials itself


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


class StudyRecorder:
    """Adds finished trials to a persistent Optuna study (SQLite in the run directory by default,
    any Optuna storage URL on a cluster)."""

    def __init__(self, storage: str, params: list[Param], objectives: dict[str, str], constraints: list[str]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.objectives, self.constraints = objectives, constraints
        self.distributions = {p.name: OptunaSampler._distribution(p) for p in params}
        directions = ["maximize" if d == "max" else "minimize" for d in objectives.values()]
        try:
            self.study = optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=directions,
                                             load_if_exists=True)
        except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a locked file: one line
            raise UserError(f"cannot open the Optuna storage {storage}: {' '.join(str(e).split())[:200]}") from None
        if [d.name.lower() for d in self.study.directions] != directions:
            raise UserError(f"the Optuna study '{STUDY_NAME}' in {storage} was made for other objectives "
                            f"({[d.name.lower() for d in self.study.directions]}, this search: {directions}); "
                            "give --storage another database")
        self.study.set_user_attr("objectives", list(objectives))
        self.study.set_user_attr("constraints", list(constraints))
        self.recorded = {t.user_attrs.get(_TRIAL_ATTR) for t in self.study.get_trials(deepcopy=False)}

    def sync(self, records: list[dict], values_of, constraints_of) -> int:
        """Add the records the study lacks; returns how many were added."""
        added = 0
        for r in records:
            if int(r["trial"]) not in self.recorded:
                self.add(r, values_of(r), constraints_of(r))
                added += 1
        return added

    def add(self, record: dict, values: list[float] | None, constraints: list[float] | None) -> None:
        import optuna

        trial_index = int(record["trial"])
        if trial_index in self.recorded:
            return
        params = {k: v for k, v in (record.get("params") or {}).items()
                  if k in self.distributions and self._fits(k, v)}
        attrs = {_TRIAL_ATTR: trial_index, "status": record.get("status")}
        for key in ("metrics", "violations", "duplicate_of", "seconds", "error", "config"):
            if record.get(key) is not None:
                attrs[key] = _jsonable(record[key])
        for k, v in (record.get("metrics") or {}).items():  # flat too: the dashboard lists them
            if isinstance(v, (int, float, str, bool)) or v is None:
                attrs[f"metric_{k}"] = v
        failed = values is None
        frozen = optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
            params=params, distributions={k: self.distributions[k] for k in params},
            values=None if failed else [float(v) for v in values],
            user_attrs=attrs,  # constraint values: feasible where every one is <= 0
            constraints=None if failed else {k: float(c) for k, c in zip(self.constraints, constraints or [])})
        self.study.add_trial(frozen)
        self.recorded.add(trial_index)

    def _fits(self, name: str, value) -> bool:
        """A value the study's distribution holds (a resumed run's space may have changed)."""
        dist = self.distributions[name]
        try:
            return dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            return False
