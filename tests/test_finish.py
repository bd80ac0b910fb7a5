"""The finishing step: `autocompress finetune RUN_DIR` trains the chosen candidate, measures it on
the test split the search never saw, and writes the model users take away."""
import json

import pytest
import torch

from tests.test_cli import TINY, cli, cli_process


@pytest.mark.slow
def test_finetune_on_a_run_directory_writes_the_model_and_its_test_split_accuracy(tmp_path, digits):
    space = tmp_path / "s.yaml"  # one pruned, 4-bit candidate: something for fine-tuning to recover
    space.write_text("name: s\nexclude: [first, last]\nknobs:\n"
                     "  - {knob: prune, per: group, layers: ['layer4.*'], choices: [0.5]}\n"
                     "  - {knob: wbits, per: layer, choices: [4]}\n")
    run_dir = tmp_path / "run"
    r = cli_process("search", "--model", TINY, "--trials", "1", "--workers", "1", "--space", str(space),
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


def _rec(trial, energy, drop, fidelity="full", **kw):
    return {"trial": trial, "config": {}, "status": "ok", **kw,
            "metrics": {"energy_reduction": energy, "accuracy_drop": drop, "fidelity": fidelity}}


def test_race_entrants_are_the_pick_and_what_could_still_beat_it():
    from autocompress.finish import race_entrants

    pick = _rec(0, 2.0, 0.8)
    records = [pick, _rec(1, 3.0, 1.5), _rec(2, 4.0, 2.5),  # 2: beyond the limit + slack
               _rec(3, 3.5, 0.5, fidelity="screen"),  # never fine-tuned: its drop says little
               _rec(4, 1.5, 0.1),  # less energy saved than the pick
               _rec(5, 3.2, 1.9), _rec(6, 3.2, 1.9, duplicate_of=5), _rec(7, 2.5, 1.0)]
    got = [r["trial"] for r in race_entrants(records, pick, 1.0, entrants=4, slack=1.0)]
    assert got == [0, 5, 1, 7]  # the pick, then the highest energy reductions
    assert [r["trial"] for r in race_entrants(records, pick, 1.0, entrants=2)] == [0, 5]


def test_race_survivors_are_within_the_limit_first_then_the_closest():
    from autocompress.finish import race_survivors

    scores = [(2.0, 0.5), (4.0, 1.4), (3.0, 0.9), (5.0, 3.0), (3.5, 1.1)]
    assert race_survivors(scores, 1.0, 2) == [2, 0]  # within 1 point, most energy saved first
    assert race_survivors(scores, 1.0, 4) == [2, 0, 4, 1]  # then the smallest drops beyond it
    assert race_survivors(scores, 0.1, 1) == [0]
    assert race_survivors([(2.7, 1.1), (3.3, 1.1)], 1.0, 1) == [1]  # equally far: the one saving more


@pytest.mark.slow
@pytest.mark.ray
def test_a_race_shares_the_budget_and_finishes_the_highest_energy_survivor(tmp_path, digits):
    import autocompress.api as api
    from autocompress.compress import Recovery
    from autocompress.finish import finish
    from tests.tiny_models import tiny_resnet

    space = tmp_path / "s.yaml"
    space.write_text("name: s\nexclude: [first, last]\nknobs:\n"
                     "  - {knob: prune, per: group, layers: ['layer3.*', 'layer4.*'], choices: [0.0, 0.25, 0.5, 0.75]}\n")
    torch.manual_seed(0)
    result = api.search(tiny_resnet(), data="digits", target="tpu-v1", space=str(space), trials=6, seed=0,
                        recovery=Recovery(finetune_steps=3), constraints={"max_acc_drop": 100}, workers=1,
                        out=tmp_path / "run", report=False, measure_energy=False, algorithm="random")
    tuned = [r for r in result.records if (r.get("metrics") or {}).get("fidelity") == "full"
             and r.get("duplicate_of") is None]
    assert len({r["metrics"]["energy_reduction"] for r in tuned}) >= 3
    low = min(tuned, key=lambda r: r["metrics"]["energy_reduction"])
    out = finish(result.prepared, tmp_path / "run", low, Recovery(batch_size=32), steps=40, race=4,
                 max_acc_drop=100, log=lambda s: None)
    race = out["race"]
    assert race["entrants"][0] == low["trial"] and len(race["entrants"]) >= 3
    # every entrant is within a 100-point limit: the one that saves the most is finished
    best = max((r for r in tuned if r["trial"] in race["entrants"]), key=lambda r: r["metrics"]["energy_reduction"])
    assert out["trial"] == best["trial"]
    # the race and the finish share the budget: 40 steps of 32 in all, the winner trained most
    assert out["training_images"] == pytest.approx(40 * 32, abs=32 * len(race["entrants"]))
    steps = {}
    for h in race["history"]:
        steps[h["trial"]] = h["steps"]
    assert steps[out["trial"]] == max(steps.values())
    assert json.loads((tmp_path / "run" / "finished" / f"trial{out['trial']}" / "result.json").read_text())["race"]


def test_projected_drop_follows_a_falling_learning_curve_and_never_promises_more():
    from autocompress.finish import projected_drop

    def curve(s):  # a candidate whose drop falls as 1/sqrt(steps) towards 0.4 points
        return 0.4 + 9.0 / s ** 0.5

    points = [(20, curve(20)), (140, curve(140))]
    assert projected_drop(points, 800) == pytest.approx(curve(800), abs=1e-9)
    assert projected_drop(points + [(400, curve(400))], 800) == pytest.approx(curve(800), abs=1e-9)
    # below the limit after 800 steps although measured beyond it after 140: 1.16 -> 0.72
    assert curve(140) > 1.0 > projected_drop(points, 800)
    assert projected_drop([(20, 1.9), (136, 1.8)], 800) > 1.7  # a flat curve stays where it is
    assert projected_drop([(20, 1.5), (136, 1.8)], 800) == 1.8  # one getting worse: the last measured
    assert projected_drop([(136, 1.2)], 800) == 1.2  # one point: no curve
    assert projected_drop([], 800) == float("inf")


def test_a_winner_chosen_on_its_projection_keeps_the_best_measured_entrant_as_fallback():
    from autocompress.finish import _fallback

    class E:
        def __init__(self, energy, drop):
            self.energy, self.drop = energy, drop

    bold, safe, safer, off = E(3.5, 1.2), E(2.8, 0.6), E(2.1, 0.3), E(3.0, 1.1)
    assert _fallback(bold, [bold, safe, safer, off], 1.0) is safe  # the most energy saved within the limit
    assert _fallback(safe, [bold, safe, safer, off], 1.0) is None  # measured within: no hedge needed
    assert _fallback(bold, [bold, off], 1.0) is None  # nothing measured within: nothing to fall back on
