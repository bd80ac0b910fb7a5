"""MLflow as a first-class record of a search (``search(mlflow=URI)``, ``--mlflow URI``).

One parent run per run directory, with every setting as a param; one child run per trial as it
ends (infeasible and failed ones too: their params, metrics and status); at the end the Pareto
set, the tables and the report as artifacts, and the best candidate within the constraints
logged as an MLflow ONNX model with a signature (``mlflow.pyfunc.load_model`` serves it).

The parent run's id and the trials already logged are kept in ``RUN/mlflow.json``, so a resumed
search goes on logging into the same parent run and logs no trial twice. MLflow is optional: the
search never stops because MLflow failed (it says so once and goes on).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

from autocompress._errors import UserError
from autocompress.utils import atomic_write_json

EXPERIMENT = "autocompress"
STATE_FILE = "mlflow.json"
_MAX_VALUE = 500  # characters of a param value (MLflow's own limit is larger; ours keeps the UI legible)


def tracking_uri(value: str | bool) -> str:
    """``auto`` / True: $MLFLOW_TRACKING_URI, else an SQLite database in the working directory
    (MLflow 3's file store is in maintenance mode)."""
    if value is True or value == "auto":
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    return str(value)


def _key(name: str) -> str:
    return re.sub(r"[^\w\-. /:]", "_", str(name))[:250]


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[_key(prefix + str(k))] = json.dumps(v, default=str)[:_MAX_VALUE] if not isinstance(v, str) else v[:_MAX_VALUE]
    return out


class MlflowTracker:
    def __init__(self, uri: str | bool, run_dir: Path, log: Callable[[str], None] = print):
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("--mlflow needs MLflow: pip install 'autocompress[mlflow]'") from None
        self.uri, self.run_dir, self.log = tracking_uri(uri), Path(run_dir), log
        self.client = MlflowClient(tracking_uri=self.uri)
        self.state_path = self.run_dir / STATE_FILE
        self.broken = False
        self.parent: str | None = None
        self.experiment_id: str | None = None
        self.logged: set[int] = set()

    # -- the parent run ------------------------------------------------------------------------
    def start(self, settings: dict, baseline: dict) -> None:
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        try:
            if state.get("parent_run_id") and state.get("tracking_uri") == self.uri:
                self.parent = state["parent_run_id"]
                self.logged = set(state.get("logged", []))
                self.experiment_id = self.client.get_run(self.parent).info.experiment_id
                self.client.update_run(self.parent, status="RUNNING")
                return
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                location = None
                if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
                experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            self.experiment_id = experiment_id
            run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                         tags={"autocompress.run_dir": str(self.run_dir.resolve())})
            self.parent = run.info.run_id
            self._log_batch(self.parent, params=_flatten(settings),
                            metrics={f"baseline_{k}": v for k, v in baseline.items() if _number(v)})
            self._save()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a tracking server down must not cost the search
            self._give_up(e)

    def _save(self) -> None:
        atomic_write_json(self.state_path, {"tracking_uri": self.uri, "parent_run_id": self.parent,
                                            "logged": sorted(self.logged)})

    def _give_up(self, e: Exception) -> None:
        if not self.broken:
            self.log(f"warning: MLflow logging stopped ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                     "the run directory has everything")
        self.broken = True

    def _log_batch(self, run_id: str, params: dict | None = None, metrics: dict | None = None,
                   tags: dict | None = None) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = ([Param(k, str(v)) for k, v in (params or {}).items()],
                 [Metric(_key(k), float(v), now, 0) for k, v in (metrics or {}).items()],
                 [RunTag(_key(k), str(v)[:_MAX_VALUE]) for k, v in (tags or {}).items()])
        for i in range(0, max(len(x) for x in items) or 1, 100):  # MLflow takes 100 params a batch
            self.client.log_batch(run_id, params=items[0][i:i + 100], metrics=items[1][i:i + 100],
                                  tags=items[2][i:i + 100])

    # -- one child run per trial ---------------------------------------------------------------
    def sync(self, records: list[dict]) -> None:
        for r in records:
            self.trial(r)

    def trial(self, record: dict) -> None:
        index = int(record["trial"])
        if self.broken or self.parent is None or index in self.logged:
            return
        try:
            run = self.client.create_run(self.experiment_id, run_name=f"trial {index}",
                                         tags={"mlflow.parentRunId": self.parent})
            metrics = {k: v for k, v in (record.get("metrics") or {}).items() if _number(v)}
            metrics.update({f"violation_{k}": v for k, v in (record.get("violations") or {}).items() if _number(v)})
            tags = {"trial": index, "status": record["status"]}
            for k in ("duplicate_of", "error"):
                if record.get(k) is not None:
                    tags[k] = record[k]
            for k in ("fidelity", "cost_origin", "energy_origin"):
                if (record.get("metrics") or {}).get(k) is not None:
                    tags[k] = record["metrics"][k]
            params = {_key(k): v for k, v in (record.get("params") or {}).items()}
            self._log_batch(run.info.run_id, params=params, metrics=metrics, tags=tags)
            self.client.set_terminated(run.info.run_id, status="FAILED" if record["status"] == "failed" else "FINISHED")
            self.logged.add(index)
            self._save()
        except Exception as e:  # noqa: BLE001
            self._give_up(e)

    # -- the end: artifacts and the chosen model -------------------------------------------------
    def finish(self, result, status: str = "FINISHED") -> str | None:
        """Artifacts and the best feasible candidate's model; returns the model's URI (or None)."""
        if self.broken or self.parent is None:
            return None
        model_uri = None
        try:
            for name in ("pareto.csv", "pareto.json", "trials.csv", "report.html", "sensitivity.png",
                         "search_energy.json", "settings.json"):
                if (self.run_dir / name).exists():
                    self.client.log_artifact(self.parent, str(self.run_dir / name))
            if result is not None and not result.pareto.empty:
                self._log_batch(self.parent, metrics={"hypervolume": result.hypervolume,
                                                      "pareto_size": len(result.pareto)})
                model_uri = self._log_model(result)
            self.client.set_terminated(self.parent, status=status)
        except Exception as e:  # noqa: BLE001
            self._give_up(e)
        return model_uri

    def _log_model(self, result) -> str | None:
        """The best candidate within the constraints, as the QDQ ONNX the export writes."""
        import mlflow
        import numpy as np
        import onnx
        import onnxruntime as ort
        from mlflow.models import infer_signature

        best = result.best()
        trial = int(best["trial"])
        path = self.run_dir / f"trial{trial}.onnx"
        try:
            result.export(trial, "onnx", path)
        except Exception as e:  # noqa: BLE001 - e.g. a model the ONNX export cannot take
            self.log(f"warning: MLflow: trial {trial} could not be exported to ONNX ({e}); no model logged")
            return None
        x = result.prepared.data.val_x[:4].numpy().astype(np.float32) if result.prepared is not None else None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        if x is None:
            shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
            x = np.zeros(shape, np.float32)
        y = session.run(None, {name: x})[0]
        self._log_batch(self.parent, metrics={"best_trial": trial, "best_energy_reduction": float(best["energy_reduction"]),
                                              "best_accuracy": float(best["accuracy"])})
        mlflow.set_tracking_uri(self.uri)  # the fluent API logs models; it needs the run active
        with mlflow.start_run(run_id=self.parent):
            info = mlflow.onnx.log_model(onnx.load(str(path)), name="model",
                                         signature=infer_signature(x, y), input_example=x[:1])
        self.client.set_tag(self.parent, "best_trial", trial)
        return info.model_uri


def _number(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
