"""The command line: its output and its exit code. Commands that run real work (a search, a
resume) run as a user runs them, in a subprocess (``cli_process``); the rest run the same entry
point in this process (``cli``), which saves the ~2 s of a fresh interpreter importing torch on
every call. ``test_cli_conventions`` and ``test_bad_input`` keep checking the installed script
and ``python -m`` as real processes."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.tiny_models:tiny_resnet"


def cli_process(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@contextlib.contextmanager
def _in(directory: Path):  # contextlib.chdir, which Python 3.10 lacks
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def cli(*args, timeout=300, env=None):
    """``autocompress ARGS`` run by ``autocompress.cli.main`` here, as ``python -m`` would run it:
    the same exit code (an uncaught exception is 1 with its traceback on stderr), stdout and
    stderr captured. ``timeout`` is kept for the callers' sake: nothing here runs long."""
    from autocompress import cli as entry

    argv = [*map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.dict(os.environ, env or {}), mock.patch.object(sys, "argv", ["autocompress", *argv]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _in(ROOT):
        try:
            entry.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:  # what the interpreter would print and exit with
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["autocompress", *argv], code, out.getvalue(), err.getvalue())


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

    r = cli_process("search", "--resume", str(run_dir), timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resuming" in r.stdout
    after = _trials(run_dir)
    assert len(after) == 7 and sorted(t["trial"] for t in after) == list(range(7))
    assert after[:len(before)] == before  # finished trials kept exactly as they were
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 8


@pytest.mark.slow
def test_nothing_feasible_exits_3_with_one_line_and_keeps_the_trials(tmp_path):
    r = cli_process("search", "--model", TINY, "--trials", "2", "--workers", "2", "--max-size-mb", "0.00001",
            "--out", str(tmp_path / "r"))
    assert r.returncode == 3, r.stderr[-2000:]
    assert r.stderr.strip().startswith("nothing feasible:") and len(r.stderr.strip().splitlines()) == 1
    assert len(_trials(tmp_path / "r")) == 2
    assert "2 trials" in r.stdout and "2 rejected before evaluating accuracy" in r.stdout
