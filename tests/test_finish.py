"""The finishing step: `autocompress finetune RUN_DIR` trains the chosen candidate, measures it on
the test split the search never saw, and writes the model users take away."""
import json

import pytest
import torch

from tests.test_cli import TINY, cli


@pytest.mark.slow
def test_finetune_on_a_run_directory_writes_the_model_and_its_test_split_accuracy(tmp_path, digits):
    space = tmp_path / "s.yaml"  # one pruned, 4-bit candidate: something for fine-tuning to recover
    space.write_text("name: s\nexclude: [first, last]\nknobs:\n"
                     "  - {knob: prune, per: group, layers: ['layer4.*'], choices: [0.5]}\n"
                     "  - {knob: wbits, per: layer, choices: [4]}\n")
    run_dir = tmp_path / "run"
    r = cli("search", "--model", TINY, "--trials", "1", "--workers", "1", "--space", str(space),
            "--max-acc-drop", "100", "--out", str(run_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("finetune", str(run_dir), "--pick", "best", "--steps", "30")
    assert r.returncode == 0, r.stderr[-2000:]
    out = run_dir / "finished" / "trial0"
    result = json.loads((out / "result.json").read_text())
    assert result["training_images"] == 30 * 128
    # the test split is the data set's held-out split, not the validation split the search used
    assert result["test_images"] == len(digits.test_y) and result["val_images"] == len(digits.val_y)
    assert "test: " in r.stdout and f"on {len(digits.test_y):,} images" in r.stdout
    # the figure is what the written model itself scores on the test split
    scripted = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        acc = float((scripted(digits.test_x).argmax(1) == digits.test_y).float().mean())
    assert acc == pytest.approx(result["accuracy_test"], abs=1e-6)
    assert (out / "model.onnx").stat().st_size > 0 and "INT4" in result["onnx"]
    assert result["accuracy_drop_se_test"] is not None and result["accuracy_drop_se_test"] >= 0
    assert result["energy_reduction"] > 1 and result["cost_origin"] == "modeled:tpu-v1"


def test_finetune_bad_input_is_one_line(tmp_path):
    r = cli("finetune", str(tmp_path))
    assert r.returncode == 2 and "is not a run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
