"""A new user's first hour (issue #19): a fast --help that documents every option, tables that
fit 100 columns, a report that says what to do next, results that `apply --run` reproduces,
progress that says where the time goes, one file mode in a run directory."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.test_cli import ROOT, TINY, cli, cli_process

HEAVY = ("torch", "ray", "optuna", "pymoo", "pandas", "matplotlib", "onnx", "onnxruntime", "sklearn", "scipy")


# -- a CIFAR-style run on a tiny image folder ------------------------------------------------------------
def _image_folder(root, classes=3, train=30, test=8, size=16):
    """RGB PNG/JPEG images whose mean colour depends on the class (learnable) plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((size, size, 3))
                base[..., c] = 150
                img = np.clip(base + rng.normal(60, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(img).save(folder / f"{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def cifar_style_run(tmp_path_factory):
    """One CLI search as the README's CIFAR run is made: cifar10 normalisation, a held-out
    validation split, a fixed subset of it, fine-tuning: on a tiny image folder, with a private
    cache so the baseline is trained (and its progress shown) here."""
    base = tmp_path_factory.mktemp("ux")
    data = _image_folder(base / "images")
    env = {"AUTOCOMPRESS_CACHE": str(base / "cache")}
    run_dir = base / "run"
    r = cli_process("search", "--model", TINY, "--data", f"imagefolder:{data}", "--normalize", "cifar10",
            "--val-split", "24", "--val-samples", "12", "--finetune-steps", "2", "--trials", "3", "--workers", "1",
            "--max-acc-drop", "100", "--out", str(run_dir), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return run_dir, r, env


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_apply_run_reproduces_a_cifar_style_trial_with_the_runs_own_data_settings(cifar_style_run, tmp_path):
    run_dir, _, env = cifar_style_run
    settings = json.loads((run_dir / "settings.json").read_text())["inputs"]
    assert (settings["normalize"], settings["val_samples"], settings["val_split"]) == ("cifar10", 12, 24)
    for record in [r for r in _records(run_dir) if r["status"] != "failed" and "accuracy" in (r.get("metrics") or {})][:2]:
        out = tmp_path / f"t{record['trial']}.pt"
        r = cli("apply", "--run", str(run_dir), "--pick", str(record["trial"]), "--out", str(out), env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        text = " ".join(r.stdout.split())
        m = record["metrics"]
        assert f"accuracy {100 * m['accuracy']:.2f}% (drop {m['accuracy_drop']:.2f} pp)" in text
        assert f"for trial {record['trial']}: reproduced" in text, text
        assert "No --weights given: training" not in text  # the run's cached baseline, not a new one
        assert f"{m['size_bytes'] / 1e6:.2f} MB modeled packed size" in text and "the file is" in text
        assert out.stat().st_size > 0
    # --run takes everything from the run directory: a clashing option is a one-line error
    r = cli("apply", "--run", str(run_dir), "--normalize", "imagenet", "--out", str(tmp_path / "x.pt"), env=env)
    assert r.returncode == 2 and "drop --normalize" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("apply", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "--run RUN_DIR --pick TRIAL" in r.stderr


@pytest.mark.slow
def test_search_shows_baseline_progress_and_separates_preparation_from_trials(cifar_style_run):
    _, r, _ = cifar_style_run
    out = " ".join(r.stdout.split())
    assert re.search(r"baseline trained: 5 epochs in \d+:\d\d:\d\d, final loss \d+\.\d+", out), out[-2000:]
    assert re.search(r"3 trials in \d+ s \(after \d+ s of preparation: data, baseline, tracing\)", out)
    assert "elapsed" in out and "left" in out


def test_time_left_comes_from_the_trials_own_durations():
    from autocompress.cli import _left_estimate

    records = [{"seconds": 10.0}, {"seconds": 20.0}]
    assert _left_estimate(records, 6, 2) == "~0:00:30"  # 15 s a trial, 4 to go, 2 at a time
    assert _left_estimate(records, 6, 1) == "~0:01:00"
    assert _left_estimate([], 6, 1) == "-" and _left_estimate(records, 2, 1) == "0:00:00"


@pytest.mark.slow
def test_the_pareto_table_fits_100_columns(cifar_style_run):
    import pandas as pd
    from rich.console import Console

    from autocompress.report import build_report, pareto_rich_table, plural

    run_dir, _, _ = cifar_style_run

    def render(table, width=100):
        console = Console(width=width, record=True, force_terminal=False, color_system=None)
        console.print(table)
        return console.export_text()

    text = render(build_report(run_dir).rich_table())
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 100
    assert "break-even" in text and "reduction" in text
    # the worst case: long figures, a long origin
    row = {"trial": 123, "accuracy": 0.987654, "accuracy_drop": 12.3456, "size_bytes": 123_456_789,
           "energy_mj": 12345.678, "latency_ms": 98765.4321, "energy_reduction": 123.456, "sqnr_db": 34.5,
           "break_even_inferences": 123_456_789_012.0, "kwh_per_million": 1.234e-5, "gco2e_per_million": 12.3,
           "gops_per_w": 1234.5}
    base = {**row, "size_bytes": 987_654_321}
    figures = {k: row[k] for k in ("kwh_per_million", "gco2e_per_million", "gops_per_w")}
    table = pareto_rich_table(pd.DataFrame([row]), base, "measured:cpu-local(threads=2,batch=1,onnxruntime)",
                              f"Pareto set ({plural(1, 'candidate')}, hypervolume 0.1234)", baseline_figures=figures)
    text = render(table)
    assert "…" not in text and "1 candidate," in text and "measured:cpu-local" in text
    wide = render(pareto_rich_table(pd.DataFrame([row]), base, "modeled:tpu-v1", "t", wide=True,
                                    baseline_figures=figures, carbon_label="grid 475"), width=200)
    assert "…" not in wide and "SQNR" in wide and "GOPS/W" in wide and "kgCO2e" in wide
    assert plural(1, "trial") == "1 trial" and plural(2, "candidate") == "2 candidates"


@pytest.mark.slow
def test_report_html_has_an_interactive_pareto_front_and_the_next_step_commands(cifar_style_run):
    run_dir, r, _ = cifar_style_run
    page = (run_dir / "report.html").read_text()
    pick = json.loads((run_dir / "pareto.json").read_text())["candidates"]
    best = max(pick, key=lambda c: c["energy_reduction"])["trial"]
    # the next steps for the chosen candidate, as commands to paste
    assert f"autocompress export {run_dir} --pick {best} --format yaml" in page
    assert f"autocompress apply --run {run_dir} --pick {best} --out" in page
    assert f"autocompress finetune {run_dir} --pick {best}" in page
    assert f"autocompress finetune {run_dir} --pick {best}" in " ".join(r.stdout.split())
    # every evaluated trial is a point of an inline SVG whose tooltip names the trial and its config
    svg = re.search(r'<svg id="pareto-svg".*?</svg>', page, re.S).group(0)
    points = re.findall(r'<circle class="trial" data-trial="(\d+)"[^>]*><title>([^<]*)</title>', svg)
    evaluated = {t["trial"] for t in _records(run_dir) if (t.get("metrics") or {}).get("accuracy") is not None
                 and t.get("duplicate_of") is None}
    assert {int(t) for t, _ in points} == evaluated
    for trial, title in points:
        assert title.startswith(f"trial {trial} (") and "config: " in title and "energy reduction" in title
    assert '<img id="pareto"' in page  # the PNG stays, for papers
    # the per-layer table has readable headers, no snake_case
    head = re.search(r'<table id="layer-table"><thead>(.*?)</thead>', page, re.S).group(1)
    assert "pruning ratio (channel group)" in head and "_" not in head


@pytest.mark.slow
def test_run_directory_files_have_one_mode(cifar_style_run):
    run_dir, _, _ = cifar_style_run
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes
    assert "report.html" in modes and "trials.jsonl" in modes and "settings.json" in modes


def test_a_layer_pruned_by_its_channel_group_says_so():
    import torch

    from autocompress.config import CompressionConfig
    from autocompress.graph import trace
    from autocompress.report import prune_notes
    from tests.tiny_models import tiny_resnet

    table = trace(tiny_resnet(), torch.zeros(1, 3, 16, 16))
    group = next(g for g in table.groups.values() if len(g.producers) > 1)  # a residual group
    setter, other = group.producers[0], group.producers[1]
    config = CompressionConfig.from_dict({"layers": {setter: {"prune": 0.5}}})
    notes = prune_notes(table, config)
    assert setter not in notes
    assert notes[other] == f"own prune 0; pruned 0.5 with its channel group (set by {setter})"


# -- help -------------------------------------------------------------------------------------------------
def _commands():
    import typer

    from autocompress.cli import app

    return typer.main.get_command(app).commands


def test_every_option_of_every_command_has_help_text():
    for name, command in _commands().items():
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option":
                assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help text"
    assert {p.opts[0] for p in _commands()["search"].params} >= {
        "--seed", "--max-size-mb", "--max-params", "--max-macs", "--max-latency-ms", "--min-energy-reduction",
        "--min-sqnr-db", "--algorithm"}


def test_search_help_lists_every_algorithm_and_no_bool_metavar():
    from autocompress.search import ALGORITHMS

    r = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    for name in ALGORITHMS:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"--algorithm help omits {name}"
    assert "<bool>" not in r.stdout and "--wide" in r.stdout


def test_help_imports_no_heavy_library():
    code = ("import sys\nsys.argv = ['autocompress', '--help']\nimport autocompress.cli as c\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout[-500:]
    assert "Usage: autocompress" in r.stdout


def test_the_package_api_is_still_there_lazily():
    code = ("import autocompress, sys\nassert 'torch' not in sys.modules\n"
            "import autocompress.search.pareto, autocompress.compress\n"
            "from autocompress import search, compress, CompressionConfig, Constraints\n"
            "assert callable(autocompress.search) and callable(autocompress.compress)\n"
            "assert autocompress.search is search and autocompress.compress is compress\n"
            "print('OK')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-1500:]


def test_decoding_an_image_folder_shows_progress_the_first_time_only(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from autocompress.data import _imagefolder, resolve_data

    for split, n in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_imagefolder, "PROGRESS_SECONDS", -1.0)  # a line per image
    lines = []
    resolve_data(f"imagefolder:{tmp_path}", val_split=0, log=lines.append)
    assert lines[0].startswith("decoding 16 images of") and "cached" in lines[0]
    assert any("11 of 12 images" in line for line in lines)  # train: 12 images, counted as they go
    again = []
    resolve_data(f"imagefolder:{tmp_path}", val_split=0, log=again.append)
    assert again == []  # read from the cache: nothing decoded


def test_submodules_are_attributes_of_the_package_without_an_explicit_import():
    import subprocess
    import sys

    code = "import autocompress; print(autocompress.api.__name__, autocompress.finish.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["autocompress.api", "autocompress.finish"], out.stderr
