"""CLI conventions (issue #18 item 5): one-line usage errors with exit code 2 under the installed
typer, --version, ``python -m autocompress``, shell completion, ``search --config`` with the run's
own RUN/search.yaml, ``schema profile|space``, plain progress lines in a log."""
import io
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.test_cli import ROOT, TINY

SCRIPT = Path(sys.executable).with_name("autocompress")  # the console script pip installed beside python
ENTRY_POINTS = {"script": [str(SCRIPT)], "python -m": [sys.executable, "-m", "autocompress"]}


def run(how, *args, env=None, timeout=300):
    assert SCRIPT.is_file(), f"the autocompress script is not installed beside {sys.executable}"
    return subprocess.run([*ENTRY_POINTS[how], *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "100", **(env or {})})


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-800:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return lines[0]


# -- usage errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", list(ENTRY_POINTS))
@pytest.mark.parametrize("args, expected", [
    (["search", "--bogus"], "No such option: --bogus"),                          # an unknown option
    (["report"], "Missing argument"),                                              # a missing argument
    (["schema", "table"], "'table' is not one of 'profile', 'space'"),            # a bad choice
    (["search", "--trials", "many"], "Invalid value for '--trials'"),             # a bad type
    (["search", "--seed"], "Option '--seed' requires an argument"),
    (["serach"], "No such command 'serach'"),
])
def test_usage_errors_are_one_line_and_exit_2(how, args, expected):
    line = one_error_line(run(how, *args))
    assert line.startswith("error: ") and expected in line, line
    if args[0] in ("search", "report", "schema"):
        assert line.endswith(f"try: autocompress {args[0]} --help"), line


def test_the_installed_typer_raises_what_main_catches_and_is_within_the_bound():
    """typer >= 0.29 raises its vendored click's exceptions: main() must recognise those."""
    import typer
    from packaging.requirements import Requirement

    from autocompress.cli import _click_classes, app

    with pytest.raises(Exception) as caught:
        typer.main.get_command(app).main(["search", "--bogus"], prog_name="autocompress", standalone_mode=False)
    assert isinstance(caught.value, _click_classes("ClickException")), type(caught.value).__mro__
    assert isinstance(caught.value, _click_classes("UsageError"))
    text = (ROOT / "pyproject.toml").read_text()
    spec = next(Requirement(line.strip().strip('",').split("#")[0].strip().strip('",'))
                for line in text.splitlines() if line.strip().startswith('"typer'))
    assert spec.specifier.contains(typer.__version__), (
        f"typer {typer.__version__} is outside pyproject's {spec}: check the CLI conventions on it, then move the bound")
    assert "<" in str(spec.specifier), "typer needs an upper bound (a new minor has changed its exceptions before)"


def test_bare_autocompress_still_prints_the_help():
    r = run("script")
    assert r.returncode == 2 and "Usage: autocompress" in r.stdout + r.stderr and "search" in r.stdout + r.stderr


# -- --version, python -m ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", list(ENTRY_POINTS))
def test_version_is_the_installed_distributions(how):
    r = run(how, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"autocompress {version('autocompress')}" and r.stderr == ""
    import autocompress

    assert autocompress.__version__ == version("autocompress")


def test_python_m_autocompress_behaves_like_the_script():
    for args in (["--help"], ["search", "--help"], ["search", "--bogus"], ["schema", "space"]):
        script, module = run("script", *args), run("python -m", *args)
        assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr), args
    assert "Usage: autocompress search" in run("python -m", "search", "--help").stdout  # not "python -m autocompress"


# -- shell completion ------------------------------------------------------------------------------------
def test_shell_completion_is_offered_and_completes_commands_options_and_choices():
    help_text = run("script", "--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    # the shell named, not detected: detection reads the parent process, which a CI runner or a
    # detached job may not have as a shell
    r = run("script", "--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert r.returncode == 0 and "_AUTOCOMPRESS_COMPLETE=complete_bash" in r.stdout, r.stdout + r.stderr

    def complete(words, cword):
        r = run("script", env={"_AUTOCOMPRESS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("autocompress sea", 1) == ["search"]
    assert "--max-acc-drop" in complete("autocompress search --max-a", 2)
    assert "--config" in complete("autocompress search --con", 2)
    assert complete("autocompress schema ", 2) == ["profile", "space"]


# -- schema ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected, shipped", [
    ("profile", {"name", "clock_hz", "fabric", "precisions", "memory", "reference_precision", "power"}, "hw_profiles"),
    ("space", {"name", "exclude", "knobs"}, "search_spaces"),
])
def test_schema_is_json_schema_that_every_shipped_file_meets(name, expected, shipped):
    r = run("script", "schema", name)
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and expected <= set(schema["properties"]) and "name" in schema["required"]
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    files = sorted((ROOT / shipped).glob("*.yaml"))
    assert files
    for path in files:  # profiles write "700 MHz", "24 MiB": the schema must accept what the loader accepts
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, (path.name, errors[:3])
    if name == "profile":
        bad = yaml.safe_load((ROOT / "hw_profiles" / "tpu-v1.yaml").read_text())
        bad["clock_hz"], bad["surprise"] = "fast", 1
        assert len(list(validator.iter_errors(bad))) == 2


# -- search --config -------------------------------------------------------------------------------------
def _search_context(*args):
    """The search command's parsed options, as the CLI would pass them (no search is run)."""
    import typer

    from autocompress.cli import app

    command = typer.main.get_command(app).commands["search"]
    return command.make_context("search", list(args))


def test_config_values_become_the_defaults_and_flags_override_them(tmp_path):
    from autocompress.cli import search_config_text

    cfg = tmp_path / "search.yaml"
    cfg.write_text("trials: 5\nmax-acc-drop: 0.5\nmax_size_mb: 2\nseed: 7\nobjectives: [energy_reduction, size_bytes]\n"
                   "resources-per-trial: {cpu: 2}\nwide: true\nout: somewhere\n")
    ctx = _search_context("--config", str(cfg), "--trials", "3", "--model", "mobilenet_v2")
    p = ctx.params
    assert (p["trials"], p["model"]) == (3, "mobilenet_v2")  # the command line wins
    assert (p["max_acc_drop"], p["max_size_mb"], p["seed"], p["wide"]) == (0.5, 2.0, 7, True)  # from the file, converted
    assert p["objectives"] == "energy_reduction,size_bytes" and p["resources_per_trial"] == "cpu=2"
    assert (p["algorithm"], p["target"]) == ("nsga2", "tpu-v1")  # neither: the defaults
    saved = yaml.safe_load(search_config_text(ctx))
    assert saved["trials"] == 3 and saved["seed"] == 7 and saved["max-acc-drop"] == 0.5 and saved["model"] == "mobilenet_v2"
    assert not {"out", "config", "resume", "max-params"} & set(saved)  # no run directory, nothing unset
    # JSON works too, and the saved file reads back to the same settings
    again = tmp_path / "again.json"
    again.write_text(json.dumps(saved))
    assert {k: v for k, v in _search_context("--config", str(again)).params.items() if k not in ("config_file", "out")} \
        == {k: v for k, v in p.items() if k not in ("config_file", "out")}


@pytest.mark.parametrize("text, expected", [
    ("trails: 3\n", "search.yaml: unknown search setting 'trails'. Did you mean 'trials'? Valid: algorithm, "),
    ("resume: runs/x\n", "search.yaml: unknown search setting 'resume'."),
    ("- trials\n", "search.yaml: expected a mapping of search flags"),
    ("trials: [1\n", "search.yaml: not valid YAML or JSON"),
    ("trials: 0\n", "--trials must be at least 1, not 0"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, text, expected):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(text)
    line = one_error_line(run("script", "search", "--config", str(cfg)))
    assert expected in line, line
    if "unknown search setting" in line:
        assert "max-acc-drop" in line and "workers" in line  # the valid keys, as flag names


def test_config_input_is_capped_and_does_not_go_with_resume(tmp_path):
    from autocompress.utils import MAX_INPUT_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("trials: 3\n" + "#" * MAX_INPUT_BYTES)
    assert "larger than the 10 MiB limit" in one_error_line(run("script", "search", "--config", str(big)))
    small = tmp_path / "small.yaml"
    small.write_text("trials: 3\n")
    assert "drop --config" in one_error_line(run("script", "search", "--config", str(small), "--resume", str(tmp_path)))
    assert "no such file" in one_error_line(run("script", "search", "--config", str(tmp_path / "none.yaml")))


# -- plain progress in a log -----------------------------------------------------------------------------
def _progress(terminal: bool, every: float):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from autocompress._progress import LoggedProgress

    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    return LoggedProgress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
                          TimeElapsedColumn(), console=console, every=every), out


def test_progress_in_a_log_is_plain_lines_as_it_goes():
    progress, out = _progress(terminal=False, every=0)
    task = progress.add_task("search", total=3, best="-")
    with progress:
        for i, best in enumerate(["1.10x", "1.20x", "1.30x"], 1):
            progress.update(task, completed=i, best=best)
            assert out.getvalue().splitlines()[-1].startswith(f"trials {i}/3 best {best} 0:00:0")  # now, not at the end
        progress.update(task, best="1.30x")  # no new count: no new line
    assert len(out.getvalue().splitlines()) == 3 and "━" not in out.getvalue()
    # throttled: the first line, then at most one each `every` seconds, and always the last
    progress, out = _progress(terminal=False, every=3600)
    task = progress.add_task("search", total=50, best="-")
    for i in range(1, 51):
        progress.update(task, completed=i)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["1/50", "50/50"]


def test_progress_on_a_terminal_is_the_rich_bar():
    progress, out = _progress(terminal=True, every=0)
    assert not progress.plain
    task = progress.add_task("search", total=2, best="-")
    with progress:
        progress.update(task, completed=2, refresh=True)
    assert "━" in out.getvalue() and not re.search(r"^trials 1/2", out.getvalue(), re.M)


# -- one real search through python -m, with --config, then repeated from its RUN/search.yaml ------------
def _trials(run_dir):
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_config_search_saves_its_settings_and_repeats_from_them(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"model: {TINY}\ntrials: 3\nworkers: 1\nmax_acc_drop: 100\nalgorithm: random\nseed: 5\n")
    first = tmp_path / "first"
    r = run("python -m", "search", "--config", str(cfg), "--trials", "2", "--out", str(first), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    settings = json.loads((first / "settings.json").read_text())
    assert settings["search"]["trials"] == 2  # the flag beat the file's 3
    assert (settings["search"]["seed"], settings["search"]["algorithm"]) == (5, "random")  # from the file
    assert settings["run"]["workers"] == 1 and settings["search"]["constraints"]["max_acc_drop"] == 100
    saved = yaml.safe_load((first / "search.yaml").read_text())
    assert (saved["trials"], saved["seed"], saved["model"], saved["max-acc-drop"]) == (2, 5, TINY, 100)
    assert "out" not in saved and "config" not in saved
    # not a terminal: a plain line per trial while it runs (no bar drawn once at the end)
    for i in (1, 2):
        assert re.search(rf"^trials {i}/2 feasible \d+ best feasible energy reduction \S+ elapsed \d+:\d\d:\d\d left \S+$",
                         r.stdout, re.M), r.stdout[-2000:]
    assert not re.search(r"trials\s*━", r.stdout)  # the bar itself (the Pareto table has rules too)
    # the same search again, from the run's own file, into a new run directory
    second = tmp_path / "second"
    r = run("python -m", "search", "--config", str(first / "search.yaml"), "--out", str(second), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((second / "settings.json").read_text())["fingerprint"] == settings["fingerprint"]
    assert [t["config"] for t in _trials(second)] == [t["config"] for t in _trials(first)]  # workers 1: it repeats
    assert yaml.safe_load((second / "search.yaml").read_text()) == saved
