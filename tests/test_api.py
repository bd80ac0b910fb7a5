"""The Python API as a pipeline uses it: two searches in one process, best(), apply(), export()."""
import json

import pytest
import torch
import yaml

import autocompress
from autocompress.search.rundir import RunDirectory
from tests.test_search import GENTLE_SPACE, _ds

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # two real searches in this process


@pytest.fixture(scope="module")
def two_searches(tmp_path_factory, trained_tiny, digits):
    space = tmp_path_factory.mktemp("space") / "gentle.yaml"
    space.write_text(GENTLE_SPACE)
    common = dict(train_data=_ds(digits.train_x, digits.train_y), val_data=_ds(digits.val_x, digits.val_y),
                  data=None, target="tpu-v1", space=str(space), workers=2, val_samples=120,
                  constraints={"max_acc_drop": 100.0}, log=lambda s: None)
    first = autocompress.search(trained_tiny, trials=3, seed=1, out=tmp_path_factory.mktemp("a") / "run", **common)
    second = autocompress.search(trained_tiny, trials=2, seed=2, target="edge-tpu", grid_gco2_kwh=50,
                                 out=tmp_path_factory.mktemp("b") / "run", **{k: v for k, v in common.items() if k != "target"})
    return first, second


def test_two_searches_in_one_process_are_independent(two_searches):
    first, second = two_searches
    assert first.run_dir != second.run_dir
    # records come in completion order (two workers); numbering starts afresh: no state carried over
    assert sorted(r["trial"] for r in first.records) == [0, 1, 2]
    assert sorted(r["trial"] for r in second.records) == [0, 1]
    assert {r["metrics"]["cost_origin"] for r in first.records} == {"modeled:tpu-v1"}
    assert {r["metrics"]["cost_origin"] for r in second.records} == {"modeled:edge-tpu"}
    for res in (first, second):  # each result is what its own run directory holds
        on_disk = RunDirectory(res.run_dir).trials()
        assert [r["trial"] for r in on_disk] == [r["trial"] for r in res.records]
        pareto = json.loads((res.run_dir / "pareto.json").read_text())
        assert sorted(c["trial"] for c in pareto["candidates"]) == sorted(res.pareto["trial"].astype(int))
        assert res.report_path == res.run_dir / "report.html" and res.report_path.exists()
        assert len(json.loads((res.run_dir / "search_energy.json").read_text())["parts"]) == 1
    assert json.loads((second.run_dir / "settings.json").read_text())["carbon"]["grid_gco2_kwh"] == 50
    assert json.loads((first.run_dir / "settings.json").read_text())["carbon"]["grid_gco2_kwh"] == 475


def test_best_apply_and_export(two_searches, trained_tiny, digits, tmp_path):
    result = two_searches[0]
    best = result.best()
    assert best["energy_reduction"] == result.pareto["energy_reduction"].max()
    record = next(r for r in result.records if r["trial"] == int(best["trial"]))

    # apply(model, candidate): the compressed model scores what the search recorded
    model = result.apply(trained_tiny, best)
    assert model is not trained_tiny
    x, y = result.prepared.data.val_x, result.prepared.data.val_y  # the search's fixed subset
    assert len(y) == 120
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)
    same = result.apply(int(best["trial"]))  # apply(trial) as before
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in model.parameters())

    path = result.export("best", "yaml", tmp_path / "best.yaml")
    assert yaml.safe_load(path.read_text()) == record["config"]
    assert json.loads(result.export(best, "json", tmp_path / "b.json").read_text()) == record["config"]
    csv = result.export(int(best["trial"]), "csv", tmp_path / "b.csv")
    import pandas as pd
    assert int(pd.read_csv(csv)["macs"].sum()) == record["metrics"]["macs"]
    with pytest.raises(autocompress.UserError, match="unknown format"):
        result.export("best", "onnx2", tmp_path / "x")
    with pytest.raises(autocompress.UserError, match="no trial 99"):
        result.config(99)


def test_settings_objects_are_checked_where_they_enter_and_stand_for_the_keywords():
    from autocompress.search import RunSettings, SearchSettings

    s = SearchSettings(trials=3, objectives=["energy_reduction", "accuracy"], constraints={"max_acc_drop": 2})
    assert s.objectives == {"energy_reduction": "max", "accuracy": "max"} and s.constraints.max_acc_drop == 2
    with pytest.raises(autocompress.UserError, match="unknown constraint 'nonsense'; valid: max_acc_drop"):
        SearchSettings(constraints={"nonsense": 1})
    with pytest.raises(autocompress.UserError, match="unknown objective 'speed'"):
        SearchSettings(objectives=["speed"])
    with pytest.raises(autocompress.UserError, match="--workers must be at least 1"):
        RunSettings(workers=0).resolved()


@pytest.mark.slow
@pytest.mark.ray
def test_search_takes_search_and_run_settings(tmp_path, trained_tiny, digits):
    from autocompress.search import RunSettings, SearchSettings

    result = autocompress.search(trained_tiny, data=None, train_data=_ds(digits.train_x, digits.train_y),
                                 val_data=_ds(digits.val_x, digits.val_y), out=tmp_path / "r", log=lambda s: None,
                                 settings=SearchSettings(trials=2, algorithm="random", seed=3,
                                                         constraints={"max_acc_drop": 50}),
                                 run=RunSettings(workers=1), report=False, measure_energy=False)
    saved = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert len(result.records) == 2 and saved["search"]["algorithm"] == "random" and saved["search"]["seed"] == 3
    assert saved["search"]["constraints"]["max_acc_drop"] == 50 and saved["run"]["workers"] == 1
