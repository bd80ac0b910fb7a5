"""What a search leaves for the tools MLOps users already run: an Optuna study of every trial in
the run directory, Ray Tune's own results beside it (and nothing in the temp directory)."""
import json
import tempfile
from pathlib import Path

import pytest

import autocompress
from autocompress.search import RunSettings

from .test_search import GENTLE_SPACE, _ds


def _tune_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("autocompress-tune-*")}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, trained_tiny, digits):
    """A search of 2 trials, resumed to 3, then its study deleted and resumed again (nothing owed)."""
    space = tmp_path_factory.mktemp("space") / "gentle.yaml"
    space.write_text(GENTLE_SPACE)
    out = tmp_path_factory.mktemp("run") / "r"
    mlflow_uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    common = dict(data=None, train_data=_ds(digits.train_x, digits.train_y), val_data=_ds(digits.val_x, digits.val_y),
                  target="tpu-v1", workers=2, space=str(space), constraints={"max_acc_drop": 1.0}, seed=3,
                  log=lambda s: None, report=False, measure_energy=False, mlflow=mlflow_uri)
    before = _tune_leftovers()
    autocompress.search(trained_tiny, trials=2, out=out, **common)
    result = autocompress.search(trained_tiny, trials=3, resume=out, **common)
    after = _tune_leftovers()
    return out, result, before, after, common


def _child_runs(uri: str):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("autocompress")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _records(out: Path) -> list[dict]:
    from autocompress.search import RunDirectory
    return RunDirectory(out).trials()


@pytest.mark.slow
@pytest.mark.ray
def test_optuna_load_study_returns_every_trial_with_its_values_and_constraints(resumed):
    import optuna

    out, result, *_ = resumed
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{out / 'study.db'}")
    records = {int(r["trial"]): r for r in _records(out)}
    trials = {t.user_attrs["autocompress_trial"]: t for t in study.get_trials()}
    assert sorted(trials) == sorted(records) == list(range(3))  # each once, across the resume
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    for i, t in trials.items():
        m = records[i]["metrics"]
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == pytest.approx([m["energy_reduction"], m["accuracy"]])
        assert t.params == records[i]["params"]
        # feasible in Optuna's sense (every constraint <= 0) exactly where our search said "ok"
        assert list(t.constraints) == ["max_acc_drop"]
        feasible = all(c <= 0 for c in t.constraints.values())
        assert feasible == (records[i]["status"] == "ok"), (i, t.constraints, records[i]["status"])
        assert t.user_attrs["metric_accuracy"] == pytest.approx(m["accuracy"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_deleted_study_is_rebuilt_from_trials_jsonl_on_resume(resumed, trained_tiny):
    import optuna

    out, _, _, _, common = resumed
    (out / "study.db").unlink()
    autocompress.search(trained_tiny, trials=3, resume=out, **common)  # nothing owed: no trial runs
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{out / 'study.db'}")
    assert sorted(t.user_attrs["autocompress_trial"] for t in study.get_trials()) == list(range(3))


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tune_results_live_in_the_run_directory_and_nothing_in_the_temp_dir(resumed):
    from ray.tune import ExperimentAnalysis

    out, _, before, after, _ = resumed
    assert after <= before  # no autocompress-tune-* folder left behind
    first = ExperimentAnalysis(str(out / "tune" / "trials")).dataframe()
    second = ExperimentAnalysis(str(out / "tune" / "trials-from-2")).dataframe()
    assert sorted(first["trial"]) == [0, 1] and sorted(second["trial"]) == [2]
    records = {int(r["trial"]): r for r in _records(out)}
    for _, row in first.iterrows():
        assert row["accuracy"] == pytest.approx(records[int(row["trial"])]["metrics"]["accuracy"])
        assert json.loads(row["payload"])["trial"] == row["trial"]


@pytest.mark.slow
@pytest.mark.ray
def test_mlflow_holds_one_parent_run_a_child_per_trial_across_a_resume_and_a_servable_model(resumed):
    import mlflow
    import numpy as np
    import onnxruntime as ort

    out, result, _, _, common = resumed
    client, parents, children = _child_runs(common["mlflow"])
    assert len(parents) == 1  # the resume logged into the same parent run
    parent = parents[0]
    assert parent.data.params["search.trials"] == "2" and parent.data.params["search.seed"] == "3"
    records = {int(r["trial"]): r for r in _records(out)}
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert sorted(by_trial) == list(range(3))  # each trial once
    for i, c in by_trial.items():
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["status"] == records[i]["status"]
        assert c.data.metrics["accuracy"] == pytest.approx(records[i]["metrics"]["accuracy"])
    best = int(result.best()["trial"])
    assert parent.data.tags["best_trial"] == str(best)
    assert {"pareto.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    mlflow.set_tracking_uri(common["mlflow"])
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    x = result.prepared.data.val_x[:16].numpy().astype(np.float32)
    served = np.asarray(list(model.predict(x).values())[0] if isinstance(model.predict(x), dict) else model.predict(x))
    session = ort.InferenceSession(str(out / f"trial{best}.onnx"), providers=["CPUExecutionProvider"])
    direct = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-5)


def test_mlflow_logs_infeasible_and_failed_trials_too_and_never_twice(tmp_path):
    from autocompress.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = MlflowTracker(uri, run_dir, log=lambda s: None)
    tracker.start({"search": {"trials": 3, "objectives": {"energy_reduction": "max"}}}, {"accuracy": 0.9})
    records = [{"trial": 0, "status": "ok", "params": {"wbits:conv1": 4.0}, "metrics": {"accuracy": 0.9}},
               {"trial": 1, "status": "infeasible", "params": {"wbits:conv1": 2.0},
                "metrics": {"accuracy": 0.5}, "violations": {"max_acc_drop": 39.0}},
               {"trial": 2, "status": "failed", "params": {"wbits:conv1": 3.0}, "error": "boom"}]
    tracker.sync(records[:2])
    again = MlflowTracker(uri, run_dir, log=lambda s: None)  # a resume
    again.start({}, {})
    again.sync(records)
    client, parents, children = _child_runs(uri)
    assert len(parents) == 1 and parents[0].data.params["search.objectives.energy_reduction"] == "max"
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2]
    assert by_trial[1].data.tags["status"] == "infeasible" and by_trial[1].data.metrics["violation_max_acc_drop"] == 39
    assert by_trial[2].info.status == "FAILED" and by_trial[2].data.tags["error"] == "boom"
    assert by_trial[0].data.params["wbits:conv1"] == "4.0"


def test_ray_address_comes_from_the_environment_as_under_ray_job_submit(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert RunSettings(workers=1).resolved().ray_address == "ray://head:10001"
    assert RunSettings(workers=1, ray_address="auto").resolved().ray_address == "auto"  # the flag wins
    monkeypatch.delenv("RAY_ADDRESS")
    assert RunSettings(workers=1).resolved().ray_address is None


def test_a_study_of_other_objectives_is_refused_in_one_line(tmp_path):
    from autocompress._errors import UserError
    from autocompress.search._study import StudyRecorder
    from autocompress.space import Param

    params = [Param(name="w", knob="wbits", layers=("a",), choices=(4, 8))]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    rec = StudyRecorder(url, params, {"energy_reduction": "max", "accuracy": "max"}, ["max_acc_drop"])
    rec.add({"trial": 0, "status": "ok", "params": {"w": 4}, "metrics": {"accuracy": 0.9}}, [2.0, 0.9], [-0.5])
    rec.add({"trial": 1, "status": "failed", "params": {"w": 8}, "error": "boom"}, None, None)
    again = StudyRecorder(url, params, {"energy_reduction": "max", "accuracy": "max"}, ["max_acc_drop"])
    assert again.recorded == {0, 1}  # reopened: nothing added twice
    assert again.sync([{"trial": 0}, {"trial": 1}], None, None) == 0
    with pytest.raises(UserError, match="other objectives"):
        StudyRecorder(url, params, {"size_bytes": "min"}, [])
