"""Every example in examples/ runs, with a tiny budget, as a user runs it (its script as
``__main__`` with command-line arguments), and what it prints agrees with the run directory it wrote."""
import contextlib
import io
import json
import runpy
import sys
import traceback
from pathlib import Path

import pytest
import yaml

from tests.test_cli import ROOT, TINY

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # each example runs a real search in this process

SMALL = ["--trials", "2", "--workers", "1", "--val-samples", "150", "--max-acc-drop", "100"]
EXAMPLES = {
    "api_quickstart": ["--model", TINY, *SMALL],
    "mlops_pipeline": ["--model", TINY, "--min-energy-reduction", "1.0", *SMALL],
    "custom_hardware": ["--model", TINY, *SMALL],
    "custom_model": ["--epochs", "3", *SMALL],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, monkeypatch_module):
    """Each example run as its script, in this process: ``python examples/X.py ARGS`` minus the
    interpreter's, Ray's and codecarbon's start-up, which were most of each run's time."""
    base = tmp_path_factory.mktemp("examples")
    monkeypatch_module.syspath_prepend(str(ROOT))  # the examples import tests.tiny_models by name
    monkeypatch_module.chdir(base)
    done = {}
    for name, args in EXAMPLES.items():
        out = base / name
        script = ROOT / "examples" / f"{name}.py"
        monkeypatch_module.setattr(sys, "argv", [str(script), *args, "--out", str(out)])
        stdout, stderr = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # noqa: BLE001 - reported by the test that reads this run
                code = 1
                traceback.print_exc(file=stderr)
        done[name] = (code, stdout.getvalue(), stderr.getvalue(), out)
    return done


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _result(run) -> dict:
    code, stdout, stderr, _ = run
    assert code == 0, stderr[-2000:]
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout[-2000:]
    return json.loads(lines[0][len("RESULT "):])


def _candidate(run_dir, trial) -> dict:
    pareto = json.loads((Path(run_dir) / "pareto.json").read_text())
    return next(c for c in pareto["candidates"] if c["trial"] == trial)


def _check_printed_best(result: dict) -> dict:
    """The printed best is the run directory's Pareto candidate of highest energy reduction."""
    pareto = json.loads((Path(result["run_dir"]) / "pareto.json").read_text())
    best = max(pareto["candidates"], key=lambda c: c["energy_reduction"])
    assert result["trial"] == best["trial"]
    assert result["energy_reduction"] == pytest.approx(best["energy_reduction"], rel=1e-9)
    assert (Path(result["run_dir"]) / "report.html").exists()
    return best


def test_api_quickstart(runs):
    res = _result(runs["api_quickstart"])
    best = _check_printed_best(res)
    config = yaml.safe_load(Path(res["config"]).read_text())
    record = next(json.loads(x) for x in (Path(res["run_dir"]) / "trials.jsonl").read_text().splitlines()
                  if json.loads(x)["trial"] == best["trial"])
    assert config == record["config"]
    assert f"accuracy {100 * best['accuracy']:.2f}%" in runs["api_quickstart"][1]


def test_mlops_pipeline_logs_to_mlflow_when_installed(runs):
    res = _result(runs["mlops_pipeline"])
    _check_printed_best(res)
    assert res["gate_passed"] is True
    for path in res["artifacts"]:
        assert Path(path).is_file(), path
    stdout = runs["mlops_pipeline"][1]
    try:
        import mlflow  # noqa: F401
    except ImportError:
        assert "MLflow is not installed: skipping MLflow logging" in stdout and res["mlflow_run_id"] is None
        return
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(res['run_dir']).parent / 'mlflow.db'}")
    mlflow_run = client.get_run(res["mlflow_run_id"])
    assert mlflow_run.data.metrics["best_energy_reduction"] == pytest.approx(res["energy_reduction"])
    assert mlflow_run.data.params["trials"] == "2"
    logged = {a.path for a in client.list_artifacts(res["mlflow_run_id"])}
    assert {"report.html", "best.yaml", "pareto.csv"} <= logged


def test_custom_hardware_costs_on_its_own_profile(runs):
    res = _result(runs["custom_hardware"])
    best = _check_printed_best(res)
    assert res["cost_origin"] == "modeled:my-npu" and best["cost_origin"] == "modeled:my-npu"
    baseline = json.loads((Path(res["run_dir"]) / "baseline.json").read_text())
    assert baseline["energy_mj"] == pytest.approx(res["baseline_energy_mj"], rel=1e-9)  # profile() agrees with the search


def test_custom_model_with_branches(runs):
    res = _result(runs["custom_model"])
    _check_printed_best(res)
    assert res["params"] <= res["params_uncompressed"]
    baseline = json.loads((Path(res["run_dir"]) / "baseline.json").read_text())
    assert _candidate(res["run_dir"], res["trial"])["size_bytes"] < baseline["size_bytes"]
    assert "depthwise.0" in runs["custom_model"][1]  # the per-layer CSV it printed
