"""The command line, run as a user runs it: a subprocess, its output and its exit code."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.tiny_models:tiny_resnet"


def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, expected", [
    (["profile", "--model", "resnet19"], "unknown model 'resnet19'. Did you mean 'resnet18'? Valid: mobilenet_v2, resnet18"),
    (["profile", "--target", "tpu-v2"], "unknown target 'tpu-v2'. Did you mean 'tpu-v1'? Valid: "),
    (["search", "--trials", "0"], "--trials must be at least 1"),
    (["search", "--max-acc-drop", "-1"], "--max-acc-drop -1.0 is negative"),
    (["search", "--algorithm", "nsga3x"], "unknown algorithm 'nsga3x'"),
    (["search", "--data", "imagefolder:/no/such/dir"], "data folder '/no/such/dir' does not exist"),
    (["profile", "--input-shape", "3xAx2"], "input shape '3xAx2' must look like 3x32x32"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, expected):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert expected in lines[0]


def test_profile_json_resnet18_at_224_has_torchvision_totals():
    r = cli("profile", "--model", "resnet18", "--target", "tpu-v1", "--input-shape", "3x224x224", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["totals"]["macs"] == pytest.approx(1.81e9, rel=0.01)
    assert out["totals"]["params"] == pytest.approx(11.69e6, rel=0.01)
    assert out["totals"]["origin"] == "modeled:tpu-v1"
    assert len(out["layers"]) == 21 and sum(layer["macs"] for layer in out["layers"]) == out["totals"]["macs"]
    # the per-layer latencies add up to the total
    assert sum(layer["latency_ms"] for layer in out["layers"]) == pytest.approx(out["totals"]["latency_ms"])


def test_profile_table_and_targets():
    r = cli("profile", "--input-shape", "3x224x224")
    assert r.returncode == 0 and "1.814 GMACs, 11.69 M parameters" in r.stdout and "layer4.1.conv2" in r.stdout
    r = cli("targets")
    assert r.returncode == 0 and "tpu-v1" in r.stdout and "91.8" in r.stdout


def _trials(run_dir: Path) -> list[dict]:
    path = run_dir / "trials.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_a_trial(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "autocompress.cli", "search", "--model", TINY, "--trials", "7",
            "--workers", "1", "--max-acc-drop", "100", "--out", str(run_dir)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_until(lambda: len(_trials(run_dir)) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _trials(run_dir)
    assert 2 <= len(before) < 7, "the search should have been killed mid-way"

    r = cli("search", "--resume", str(run_dir), timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resuming" in r.stdout
    after = _trials(run_dir)
    assert len(after) == 7 and sorted(t["trial"] for t in after) == list(range(7))
    assert after[:len(before)] == before  # finished trials kept exactly as they were
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 8


@pytest.mark.slow
def test_nothing_feasible_exits_3_with_one_line_and_keeps_the_trials(tmp_path):
    r = cli("search", "--model", TINY, "--trials", "2", "--workers", "2", "--max-size-mb", "0.00001",
            "--out", str(tmp_path / "r"))
    assert r.returncode == 3, r.stderr[-2000:]
    assert r.stderr.strip().startswith("nothing feasible:") and len(r.stderr.strip().splitlines()) == 1
    assert len(_trials(tmp_path / "r")) == 2
    assert "2 trials" in r.stdout and "2 rejected before evaluating accuracy" in r.stdout
