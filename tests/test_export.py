"""Exporting a finished search's candidate and re-applying its config."""
import json

import pytest
import torch
import yaml

from tests.test_cli import TINY, _trials, cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    r = cli("search", "--model", TINY, "--trials", "4", "--workers", "2", "--max-acc-drop", "100", "--out", str(out))
    assert r.returncode == 0, r.stderr[-1500:]
    return out


def _best(run_dir):
    pareto = json.loads((run_dir / "pareto.json").read_text())
    return max(pareto["candidates"], key=lambda c: c["energy_reduction"])


@pytest.mark.slow
def test_export_config_csv_and_torchscript_and_apply_reproduce_the_trial(run_dir, tmp_path, digits):
    best = _best(run_dir)
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])

    assert cli("export", str(run_dir), "--format", "yaml", "--out", str(tmp_path / "c.yaml")).returncode == 0
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == record["config"]
    assert cli("export", str(run_dir), "--pick", str(best["trial"]), "--format", "json",
               "--out", str(tmp_path / "c.json")).returncode == 0
    assert json.loads((tmp_path / "c.json").read_text()) == record["config"]

    assert cli("export", str(run_dir), "--format", "csv", "--out", str(tmp_path / "c.csv")).returncode == 0
    import pandas as pd
    table = pd.read_csv(tmp_path / "c.csv")
    assert int(table["macs"].sum()) == record["metrics"]["macs"]
    for name, lc in record["config"]["layers"].items():
        row = table[table["layer"] == name].iloc[0]
        assert row["weight_bits"] == lc["wbits"]

    r = cli("export", str(run_dir), "--format", "torch", "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 0 and "TorchScript" in r.stdout, r.stderr[-1500:]
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        acc = (scripted(digits.val_x).argmax(1) == digits.val_y).float().mean().item()
    assert acc == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)

    r = cli("apply", "--model", TINY, "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a.pt"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"accuracy {100 * record['metrics']['accuracy']:.2f}%" in r.stdout
    assert f"{record['metrics']['size_bytes'] / 1e6:.2f} MB" in r.stdout
    assert f"energy reduction {record['metrics']['energy_reduction']:.2f}x (modeled:tpu-v1)" in r.stdout


@pytest.mark.slow
def test_export_errors_are_one_line(run_dir, tmp_path):
    r = cli("export", str(run_dir), "--format", "onnx2", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown format 'onnx2'" in r.stderr
    r = cli("export", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "is not a run directory" in r.stderr
    r = cli("export", str(run_dir), "--pick", "99", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no trial 99" in r.stderr


@pytest.mark.slow
def test_export_onnx_reproduces_the_trial(run_dir, tmp_path, digits):
    import onnx
    import onnxruntime as ort

    best = _best(run_dir)
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])
    r = cli("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0 and "ONNX opset 21, QDQ" in r.stdout, r.stderr[-1500:]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dq_weights = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    quantised = [name for name, lc in record["config"]["layers"].items() if lc.get("wbits")]
    assert quantised and all(f"{name}.weight" in dq_weights for name in quantised)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": digits.val_x.numpy()})[0]
    acc = float((logits.argmax(1) == digits.val_y.numpy()).mean())
    assert abs(acc - record["metrics"]["accuracy"]) * 100 <= 0.5
