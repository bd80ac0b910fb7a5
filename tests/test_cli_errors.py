"""Every kind of bad input gives one line and exit code 2; failures during a search are harmless."""
import json
import signal
import subprocess
import sys

import pytest
import torch

from tests.waiting import wait_until
from tests.test_cli import ROOT, TINY, _trials, cli, cli_process


def _one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_unknown_space_lists_the_shipped_ones():
    line = _one_line_error(cli("search", "--space", "resnett"))
    assert "unknown search space 'resnett'. Did you mean 'resnet'?" in line and "mobilenet_v2" in line


def test_a_data_folder_without_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    line = _one_line_error(cli("search", "--data", f"imagefolder:{tmp_path}"))
    assert "holds no images" in line and str(tmp_path / "train") in line


def test_an_input_shape_that_does_not_match_the_data():
    line = _one_line_error(cli("search", "--input-shape", "3x32x32"))
    assert "--input-shape 3x32x32 does not match the data's 3x8x8" in line


def test_weights_that_do_not_match_name_the_first_key(tmp_path):
    from autocompress.models import build_model

    model, _ = build_model("resnet18", num_classes=100, input_shape=(3, 8, 8))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    line = _one_line_error(cli("search", "--weights", str(tmp_path / "w.pt")))
    assert "'fc.weight' has shape (100, 512) in the file, (10, 512) in the model" in line


def test_a_model_whose_forward_pass_fails():
    line = _one_line_error(cli("search", "--model", "tests.tiny_models:BrokenNet"))
    assert "forward pass fails on an input of shape (1, 3, 8, 8)" in line


def test_a_model_with_no_layer_the_space_can_touch(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("name: s\nknobs:\n  - {knob: wbits, layers: ['encoder.*'], choices: [4, 8]}\n")
    line = _one_line_error(cli("search", "--model", TINY, "--space", str(space)))
    assert "touches no layer of this model" in line


@pytest.mark.slow
def test_resuming_a_run_directory_of_another_search(tmp_path):
    run = tmp_path / "run"
    r = cli_process("search", "--model", TINY, "--trials", "1", "--workers", "1", "--max-acc-drop", "100", "--out", str(run))
    assert r.returncode == 0, r.stderr[-1500:]
    settings = json.loads((run / "settings.json").read_text())
    settings["fingerprint"] = "0" * 16  # as if another model / target / space made it
    (run / "settings.json").write_text(json.dumps(settings))
    line = _one_line_error(cli("search", "--resume", str(run)))
    assert f"{run} belongs to another search" in line
    line = _one_line_error(cli("search", "--resume", str(tmp_path / "nothing")))
    assert "is not a run directory" in line


@pytest.mark.slow
def test_a_trial_that_raises_is_recorded_as_failed_and_the_search_goes_on(tmp_path):
    space = tmp_path / "s.yaml"  # pruning conv2 breaks HardcodedWidthNet's reshape
    space.write_text("name: s\nexclude: [last]\nknobs:\n  - {knob: prune, per: group, choices: [0.0, 0.5]}\n")
    r = cli_process("search", "--model", "tests.tiny_models:HardcodedWidthNet", "--space", str(space), "--trials", "6",
            "--workers", "2", "--algorithm", "random", "--seed", "3", "--max-acc-drop", "100",
            "--out", str(tmp_path / "run"))
    records = _trials(tmp_path / "run")
    assert len(records) == 6
    failed = [t for t in records if t["status"] == "failed"]
    assert failed and all("RuntimeError" in t["error"] or "shape" in t["error"] for t in failed)
    assert any(t["status"] == "ok" for t in records)
    assert r.returncode == 0 and f"{len(failed)} failed" in r.stdout and "failed x" in r.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_keeps_the_trials_and_prints_the_resume_command(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", "--model", TINY, "--trials", "30",
                             "--workers", "1", "--max-acc-drop", "100", "--out", str(run)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(_trials(run)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the search did not stop on SIGINT")
    assert proc.returncode == 130, err[-1500:]
    assert f"autocompress search --resume {run}" in err and "Traceback" not in err
    kept = _trials(run)
    assert 1 <= len(kept) < 30
    assert len((run / "trials.csv").read_text().splitlines()) == len(kept) + 1


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["memory"][0].update(bandwidth_bytes_per_s=-34e9), "field 'memory.0.bandwidth_bytes_per_s': Input should be greater than 0"),
    (lambda d: d.pop("clock_hz"), "field 'clock_hz': Field required"),
    (lambda d: d["precisions"][0].update(weights="int8"), "field 'precisions.0.weights'"),
    (lambda d: d.update(reference_precision={"weights": 4, "activations": 4}), "reference_precision (4, 4) is not one of the listed precisions"),
])
def test_a_malformed_profile_names_file_and_field_through_the_cli(tmp_path, edit, expected):
    import yaml

    data = yaml.safe_load((ROOT / "hw_profiles" / "tpu-v1.yaml").read_text())
    edit(data)
    path = tmp_path / "my-chip.yaml"
    path.write_text(yaml.safe_dump(data))
    line = _one_line_error(cli("profile", "--target", str(path)))
    assert line.startswith("error: my-chip.yaml: ") and expected in line


@pytest.mark.parametrize("text, expected", [
    ("name: s\nknobs:\n  - {knob: wbits, choices: [7]}\n", "unsupported bit-width 7"),
    ("name: s\nknobs:\n  - {knob: prune, per: group, choices: [1.5]}\n", "pruning ratios must be in [0, 1)"),
    ("name: s\nknobs:\n  - {knob: quantum, choices: [0.5]}\n", "field 'knobs.0.knob'"),
    ("knobs: []\n", "field 'name': Field required"),
])
def test_a_malformed_space_names_file_and_field_through_the_cli(tmp_path, text, expected):
    path = tmp_path / "my-space.yaml"
    path.write_text(text)
    line = _one_line_error(cli("search", "--model", TINY, "--space", str(path)))
    assert "my-space.yaml" in line and expected in line


def test_version_and_unknown_options_need_no_traceback():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("autocompress ")
    r = cli("search", "--bogus")
    assert r.returncode == 2 and "No such option: --bogus" in r.stderr and "Traceback" not in r.stderr


def test_a_run_directory_has_one_writer_and_a_torn_last_line_is_set_aside(tmp_path):
    import fcntl

    from autocompress.search.rundir import RunDirectory

    rd = RunDirectory(tmp_path / "run")
    with rd.lock():
        r = cli_process("search", "--model", TINY, "--trials", "1", "--out", str(rd.path))
        line = _one_line_error(r)
        assert f"is in use by another search (PID {__import__('os').getpid()})" in line
    with open(rd.path / ".lock") as f:  # released with its holder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (rd.path / "trials.jsonl").write_text('{"trial": 0, "status": "ok"}\n{"trial": 1, "sta')
    note = rd.set_aside_torn_line()
    assert "trials.jsonl.torn" in note
    assert [r["trial"] for r in rd.trials()] == [0]
    assert (rd.path / "trials.jsonl").read_text().endswith("\n")
    assert (rd.path / "trials.jsonl.torn").read_text() == '{"trial": 1, "sta\n'
    assert rd.set_aside_torn_line() is None  # nothing left to set aside


def test_workers_zero_is_refused():
    assert "--workers must be at least 1, not 0" in _one_line_error(cli("search", "--workers", "0"))
