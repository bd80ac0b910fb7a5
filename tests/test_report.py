"""The report: terminal table, report.html with its plots, carbon figures, the per-layer view,
`autocompress report` on finished and killed runs, and the page rendered in headless Chromium."""
import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import TINY, _trials, cli, cli_process

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """One CLI search shared by every test here (a few trials on a subset of the digits)."""
    out = tmp_path_factory.mktemp("rep") / "run"
    r = cli_process("search", "--model", TINY, "--trials", "4", "--workers", "2", "--max-acc-drop", "100",
            "--val-samples", "150", "--grid-gco2-kwh", "300", "--pue", "1.2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _pareto(run_dir):
    return json.loads((run_dir / "pareto.json").read_text())


@pytest.mark.slow
def test_search_prints_progress_and_carbon_table_without_ray_tables(search_run):
    run_dir, r = search_run
    out = r.stdout
    assert "best feasible energy reduction" in out and "4/4" in out
    # Ray Tune's own status tables and banners must not leak into the terminal
    for ray_text in ("Trial status", "Trial name", "Current time:", "Logical resource usage", "View detailed results"):
        assert ray_text not in out and ray_text not in r.stderr
    assert "break-even" in out  # the carbon columns are behind --wide (and in the files)
    lines = out.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    header = " ".join(lines[top:top + 4])  # the two lines of column names
    assert "trial" in header and "GOPS/W" not in header and "SQNR" not in header
    assert "grid 300 gCO2e/kWh (set by the user); PUE 1.2 (set by the user)" in " ".join(out.split())
    for c in _pareto(run_dir)["candidates"]:
        assert re.search(rf"│\s+{c['trial']} │\s+{100 * c['accuracy']:.2f} │", out), f"trial {c['trial']} not printed"
    assert f"report: {run_dir / 'report.html'}" in " ".join(out.split())


@pytest.mark.slow
def test_report_html_is_self_contained_and_embeds_the_png_plots(search_run):
    run_dir, _ = search_run
    page = (run_dir / "report.html").read_text()
    for name in ("pareto", "hypervolume", "layers"):
        data = (run_dir / f"{name}.png").read_bytes()
        w, h = _png_size(data)
        assert w > 300 and h > 300
        m = re.search(rf'<img id="{name}"[^>]*src="data:image/png;base64,([^"]+)"', page)
        assert m, f"{name}.png not embedded"
        assert base64.b64decode(m.group(1)) == data  # the same plot as the file beside it
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<link" not in page and "@import" not in page


@pytest.mark.slow
def test_carbon_figures_follow_from_the_recorded_energy_and_the_search_energy(search_run):
    from autocompress.report import build_report

    run_dir, _ = search_run
    rep = build_report(run_dir)  # the grid and PUE the search was given are the report's defaults
    assert (rep.carbon.grid_gco2_kwh, rep.carbon.pue) == (300.0, 1.2)
    energy = json.loads((run_dir / "search_energy.json").read_text())
    assert len(energy["parts"]) == 1
    search_kwh = energy["parts"][0]["energy_kwh"]
    assert search_kwh > 0 and energy["parts"][0]["method"].startswith(("estimated", "measured"))
    base = json.loads((run_dir / "baseline.json").read_text())
    candidates = {c["trial"]: c for c in _pareto(run_dir)["candidates"]}
    assert sorted(rep.pareto["trial"]) == sorted(candidates)
    for _, row in rep.pareto.iterrows():
        c = candidates[row["trial"]]
        kwh_m = c["energy_mj"] / 1e3 * 1e6 / 3.6e6 * 1.2
        assert row["kwh_per_million"] == pytest.approx(kwh_m, rel=1e-9)
        assert row["gco2e_per_million"] == pytest.approx(kwh_m * 300, rel=1e-9)
        assert row["gops_per_w"] == pytest.approx(2 * c["macs"] / (c["energy_mj"] / 1e3) / 1e9, rel=1e-9)
        saved_j = (base["energy_mj"] - c["energy_mj"]) / 1e3
        # a difference of two close energies: its rounding grows by baseline / saved
        rel = 1e-9 * (1 + base["energy_mj"] / 1e3 / saved_j)
        assert row["break_even_inferences"] == pytest.approx(search_kwh * 3.6e6 / saved_j, rel=rel)
        fp = (search_kwh + 1e9 * c["energy_mj"] / 1e3 / 3.6e6) * 1.2 * 300
        assert row["footprint_g"] == pytest.approx(fp, rel=1e-9)


@pytest.mark.slow
def test_per_layer_view_adds_up_to_the_trials_recorded_energy(search_run):
    from autocompress.report import build_report

    run_dir, _ = search_run
    best = max(_pareto(run_dir)["candidates"], key=lambda c: c["energy_reduction"])
    rep = build_report(run_dir)
    assert rep.pick == best["trial"]
    record = next(t for t in _trials(run_dir) if t["trial"] == rep.pick)
    lay = rep.layers
    assert lay["energy_mj"].sum() == pytest.approx(record["metrics"]["energy_mj"], rel=1e-9)
    assert lay["energy_share"].sum() == pytest.approx(1.0) and lay["baseline_energy_share"].sum() == pytest.approx(1.0)
    assert int(lay["macs"].sum()) == record["metrics"]["macs"]
    for name, lc in record["config"]["layers"].items():
        row = lay[lay["layer"] == name].iloc[0]
        assert row["weight_bits"] == lc["wbits"]
    assert "rank" not in lay  # no low-rank knob in this config: no rank column
    # another trial through --pick: the page shows that one
    other = next(t["trial"] for t in _trials(run_dir) if t["trial"] != rep.pick)
    r = cli("report", str(run_dir), "--pick", str(other))
    assert r.returncode == 0, r.stderr[-1500:]
    page = (run_dir / "report.html").read_text()
    assert f"Per-layer view: trial {other}</h2>" in page and "picked by the user" in page
    assert cli("report", str(run_dir)).returncode == 0  # leave the default report for the other tests


@pytest.mark.slow
def test_report_command_recomputes_carbon_for_another_grid(search_run, tmp_path):
    from autocompress.carbon import country_intensity

    run_dir, _ = search_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    r = cli("report", str(copy), "--country", "FRA", "--pue", "1.1", "--queries", "1000", "--wide")
    assert r.returncode == 0, r.stderr[-1500:]
    grid, source = country_intensity("FRA")
    assert "France" in source and 0 < grid < 300
    text = " ".join(r.stdout.split())
    assert f"grid {grid:g} gCO2e/kWh ({source}); PUE 1.1 (set by the user)" in text
    assert "Footprint at 1,000 queries" in text
    base = json.loads((copy / "baseline.json").read_text())
    expected = base["energy_mj"] / 1e3 * 1e6 / 3.6e6 * 1.1 * grid / 1e3
    assert re.search(rf"│\s+base │.*│\s+{expected:.4g} │", r.stdout)


@pytest.mark.slow
def test_report_on_a_killed_run_shows_what_it_had(search_run, tmp_path):
    run_dir, _ = search_run
    killed = tmp_path / "killed"
    killed.mkdir()
    for f in ("settings.json", "baseline.json", "layers.json"):
        shutil.copy(run_dir / f, killed / f)
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    (killed / "trials.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # a kill mid-write
    r = cli("report", str(killed))
    assert r.returncode == 0, r.stderr[-1500:]
    assert "2 of 4 trials done" in r.stdout
    assert "Search's own energy: unknown" in " ".join(r.stdout.split())
    page = (killed / "report.html").read_text()
    shown = {int(t) for t in re.findall(r'<tr data-trial="(\d+)"', page)}
    assert shown and shown <= {json.loads(x)["trial"] for x in lines[:2]}


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--pue", "0.5"], "--pue must be at least 1"),
    (["--grid-gco2-kwh", "-3"], "--grid-gco2-kwh must be 0 or more"),
    (["--country", "Frnace"], "unknown country 'Frnace'"),
    (["--country", "FRA", "--grid-gco2-kwh", "50"], "give --grid-gco2-kwh or --country, not both"),
    (["--pick", "99"], "has no trial 99"),
    (["--pick", "most"], "--pick must be a trial number or 'best'"),
])
def test_report_bad_input_is_one_line_and_exit_code_2(search_run, args, expected):
    run_dir, _ = search_run
    r = cli("report", str(run_dir), *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    r = cli("report", str(tmp_path))
    assert r.returncode == 2 and "is not a run directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); "
                                             "the rendered report cannot be checked in a browser")
def test_report_renders_in_headless_chromium(search_run, tmp_path):
    run_dir, _ = search_run
    page = (run_dir / "report.html").read_text()
    # after load, write what the browser decoded of each image into the DOM that --dump-dom prints
    probe = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-images',"
             "[...document.images].map(i=>i.id+':'+(i.complete?i.naturalWidth+'x'+i.naturalHeight:'0x0')).join(';'));});"
             "</script>")
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    profile = tmp_path / "profile"
    profile.mkdir()
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                        probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    dom = r.stdout
    m = re.search(r'data-images="([^"]*)"', dom)
    assert m, "the page's load handler did not run"
    decoded = dict(item.split(":") for item in m.group(1).split(";"))
    assert set(decoded) == {"pareto", "hypervolume", "layers"}
    for name, size in decoded.items():
        w, h = _png_size((run_dir / f"{name}.png").read_bytes())
        assert size == f"{w}x{h}", f"{name}: the browser decoded {size}, the file is {w}x{h}"
    shown = [int(t) for t in re.findall(r'<tr data-trial="(\d+)"', dom)]
    candidates = _pareto(run_dir)["candidates"]
    assert shown == [c["trial"] for c in candidates]  # same rows, same order as pareto.json
    for c in candidates:
        row = re.search(rf'<tr data-trial="{c["trial"]}"[^>]*>(.*?)</tr>', dom).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[1] == f"{100 * c['accuracy']:.2f}" and cells[6] == f"{c['energy_reduction']:.2f}x"


@pytest.mark.slow
def test_a_run_without_layers_json_is_traced_again_to_the_same_table(search_run, tmp_path):
    from autocompress.report import _layers_of
    from autocompress.search.rundir import RunDirectory

    run_dir, _ = search_run
    old = tmp_path / "old"
    old.mkdir()
    for f in ("settings.json", "baseline.json", "trials.jsonl"):
        shutil.copy(run_dir / f, old / f)
    settings = json.loads((run_dir / "settings.json").read_text())
    (saved, profile), how = _layers_of(RunDirectory(run_dir), settings)
    (traced, profile2), how2 = _layers_of(RunDirectory(old), settings)
    assert how == "from layers.json" and how2.startswith("traced again")
    assert traced.names == saved.names and profile2.name == profile.name
    assert [x.macs for x in traced.layers] == [x.macs for x in saved.layers]
